"""The compile report as typed records: what the verify stage finds in the integer graph (GraphReport, also the
manifest's "report"), and what `compile --report` writes (CompileReport: the same plus the build's context).

The JSON is the format users and tests read (keys `matmuls`, `requantize_ops`, `float_ops`, `float_op_counts`,
`ops`, ...); `to_json` writes it key for key as the dicts did, `from_json` reads it back. This module imports no
TVM, so the runtime's manifest (compiler/artifact.py) can use it on a board.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from compiler.calibrate.table import CalibrationInfo

_FLOAT = ("float16", "float32", "float64", "bfloat16")
BLOCK4_WEIGHT = "q4_block32"  # a matmul operand of 4-bit codes per block of 32 (compiler/intmath/block4.py)
# operand types of an int8 matmul: 4-bit block weights included (the kernels widen the codes to bytes and run the
# same int8 dot products: schedules/block4_gemm.py)
INT8_OPERANDS = ("int8", "uint8", BLOCK4_WEIGHT)
# ops that compute nothing in float even on float data
DATA_MOVEMENT = {"relax.reshape", "relax.permute_dims", "relax.shape_of", "relax.shape_to_tensor",
                  "relax.expand_dims", "relax.squeeze", "relax.take", "relax.concat", "relax.split",
                  "relax.strided_slice", "relax.broadcast_to", "relax.flatten"}


@dataclass(frozen=True)
class OpRecord:
    """One call of the graph with its operand and result dtypes."""

    op: str
    inputs: tuple[str, ...]
    output: str
    edge: str = ""  # "output": a dequantize that produces a model output; "input": a quantize of a model input
    entry: str = ""  # a library with several entry points: the function (graph) the op belongs to

    def to_json(self) -> dict:
        d = {"op": self.op, "dtypes": {"inputs": list(self.inputs), "output": self.output}}
        if self.edge:
            d["edge"] = self.edge
        if self.entry:
            d["entry"] = self.entry
        return d

    @staticmethod
    def from_json(d: dict) -> OpRecord:
        return OpRecord(d["op"], tuple(d["dtypes"]["inputs"]), d["dtypes"]["output"], d.get("edge", ""),
                        d.get("entry", ""))

    @property
    def computes_in_float(self) -> bool:
        """Float arithmetic between the model's inputs and outputs (edge conversions excluded)."""
        if self.op in DATA_MOVEMENT or self.edge:
            return False
        if self.op == "relax.quantize":
            return True  # float -> int8: divides and rounds in float
        return self.output in _FLOAT or any(d in _FLOAT for d in self.inputs)


@dataclass(frozen=True)
class MatmulCounts:
    total: int  # the ONNX graph's MatMuls, or the Relax graph's if it has more
    int8: int  # those computing int8 x int8 (or uint8)

    def to_json(self) -> dict:
        return {"total": self.total, "int8": self.int8}

    @staticmethod
    def from_json(d: dict) -> MatmulCounts:
        return MatmulCounts(int(d.get("total", 0)), int(d.get("int8", 0)))


@dataclass(frozen=True)
class GraphReport:
    """The operations of an integer graph: matmul counts, requantizations, float ops (the manifest's "report")."""

    matmuls: MatmulCounts
    requantize_ops: int  # returns to 8 or 16 bits (a narrowing cast of an int64 intermediate)
    float_op_counts: tuple[tuple[str, int], ...]  # op -> how many compute in float, in graph order
    ops: tuple[OpRecord, ...]

    @property
    def float_ops(self) -> list[str]:
        """The op names that compute in float, sorted (empty for an integer-only graph)."""
        return sorted(op for op, _ in self.float_op_counts)

    @staticmethod
    def of_ops(records, onnx_matmuls: int) -> GraphReport:
        records = tuple(records)
        mm = [r for r in records if r.op == "relax.matmul"]
        int8 = [r for r in mm if r.inputs and all(d in INT8_OPERANDS for d in r.inputs)]
        counts: dict[str, int] = {}
        for r in records:
            if r.computes_in_float:
                counts[r.op] = counts.get(r.op, 0) + 1
        requantize = sum(1 for r in records if r.op == "relax.astype" and r.inputs == ("int64",)
                         and r.output in ("int8", "int16"))
        return GraphReport(MatmulCounts(max(onnx_matmuls, len(mm)), len(int8)), requantize,
                           tuple(counts.items()), records)

    @staticmethod
    def merge(named: dict) -> GraphReport:
        """Several graphs' reports (name -> GraphReport) as one: counts summed, each op tagged with its graph."""
        counts: dict[str, int] = {}
        for r in named.values():
            for op, n in r.float_op_counts:
                counts[op] = counts.get(op, 0) + n
        return GraphReport(
            MatmulCounts(sum(r.matmuls.total for r in named.values()), sum(r.matmuls.int8 for r in named.values())),
            sum(r.requantize_ops for r in named.values()), tuple(counts.items()),
            tuple(_with_entry(o, name) for name, r in named.items() for o in r.ops))

    def summary(self) -> GraphReport:
        """This report without what a subclass adds (what the manifest keeps)."""
        return GraphReport(self.matmuls, self.requantize_ops, self.float_op_counts, self.ops)

    def to_json(self) -> dict:
        return {
            "matmuls": self.matmuls.to_json(),
            "requantize_ops": self.requantize_ops,
            "float_ops": self.float_ops,
            "float_op_counts": dict(self.float_op_counts),
            "ops": [o.to_json() for o in self.ops],
        }

    @staticmethod
    def from_json(d: dict) -> GraphReport:
        return GraphReport(MatmulCounts.from_json(d.get("matmuls") or {}), int(d.get("requantize_ops") or 0),
                           tuple((op, int(n)) for op, n in (d.get("float_op_counts") or {}).items()),
                           tuple(OpRecord.from_json(o) for o in d.get("ops") or ()))


def _with_entry(o: OpRecord, name: str) -> OpRecord:
    return OpRecord(o.op, o.inputs, o.output, o.edge, name)


# the merged report of several graphs has always been written in this order
_MERGED_ORDER = ("matmuls", "float_ops", "float_op_counts", "requantize_ops", "ops")


@dataclass(frozen=True)
class CompileReport(GraphReport):
    """What `compile --report` writes: the integer graph's report and what the build adds to it."""

    graphs: tuple[tuple[str, GraphReport], ...] = ()  # a library of several graphs (seq2seq): each one's own
    calibration: Optional[CalibrationInfo] = None  # the manifest's: method, source, samples, percentile
    buckets: tuple[str, ...] = ()  # ranged dims: the compiled sizes
    tuned_kernels: Optional[int] = None  # kernels scheduled from the tuning database (set by the build)
    model: str = ""  # the model's absolute path
    target: Optional[dict] = None  # the target preset (TargetSpec.to_json)

    @staticmethod
    def of(graph: GraphReport, **extra) -> CompileReport:
        return CompileReport(**{f.name: getattr(graph, f.name) for f in fields(GraphReport)}, **extra)

    def to_json(self) -> dict:
        g = super().to_json()
        if self.graphs:
            d = {"graphs": {n: r.to_json() for n, r in self.graphs}, **{k: g[k] for k in _MERGED_ORDER},
                 "calibration": None if self.calibration is None else self.calibration.to_json()}
        else:
            d = g
        if self.buckets:
            d["buckets"] = list(self.buckets)
        if self.tuned_kernels is not None:
            d["tuned_kernels"] = self.tuned_kernels
        if self.model:
            d["model"] = self.model
        if self.target is not None:
            d["target"] = self.target
        if self.calibration is not None and not self.graphs:
            d["calibration"] = self.calibration.to_json()
        return d

    @staticmethod
    def from_json(d: dict) -> CompileReport:
        return CompileReport.of(
            GraphReport.from_json(d),
            graphs=tuple((n, GraphReport.from_json(r)) for n, r in (d.get("graphs") or {}).items()),
            calibration=None if d.get("calibration") is None else CalibrationInfo.from_json(d["calibration"]),
            buckets=tuple(d.get("buckets") or ()),
            tuned_kernels=d.get("tuned_kernels"), model=d.get("model", ""), target=d.get("target"))
