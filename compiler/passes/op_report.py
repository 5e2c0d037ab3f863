"""Report the operations of a Relax module with their dtypes (an analysis, it changes nothing).

Expects: a Relax module before legalization (high-level relax ops).
Guarantees: a list of every call in `main` with its operand and result dtypes, the count of matmuls and of
int8 matmuls, and the float ops (any op that computes in a floating-point dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from compiler.tvm_compat import tensor_info

_FLOAT = ("float16", "float32", "float64", "bfloat16")
_MATMUL = "relax.matmul"
# ops that compute nothing in float even on float data
DATA_MOVEMENT = {"relax.reshape", "relax.permute_dims", "relax.shape_of", "relax.shape_to_tensor",
                  "relax.expand_dims", "relax.squeeze", "relax.take", "relax.concat", "relax.split",
                  "relax.strided_slice", "relax.broadcast_to", "relax.flatten"}


@dataclass(frozen=True)
class OpRecord:
    op: str
    inputs: tuple[str, ...]
    output: str
    edge: str = ""  # "output": a dequantize that produces a model output; "input": a quantize of a model input

    def to_json(self) -> dict:
        d = {"op": self.op, "dtypes": {"inputs": list(self.inputs), "output": self.output}}
        if self.edge:
            d["edge"] = self.edge
        return d

    @property
    def computes_in_float(self) -> bool:
        """Float arithmetic between the model's inputs and outputs (edge conversions excluded)."""
        if self.op in DATA_MOVEMENT or self.edge:
            return False
        if self.op == "relax.quantize":
            return True  # float -> int8: divides and rounds in float
        return self.output in _FLOAT or any(d in _FLOAT for d in self.inputs)


def _dtype(expr) -> str:
    dtype, _ = tensor_info(expr)
    if dtype is not None:
        return dtype
    ty = getattr(expr, "ty", None)
    return type(ty).__name__.replace("Type", "").lower() if ty is not None else "other"


def _bindings(func):
    for block in func.body.blocks:
        yield from block.bindings


def _edge_vars(func) -> tuple[set, set]:
    """Vars that carry a model output (through aliases and tuples) and the model's parameters."""
    outs = set()
    result = func.body.body
    for e in (list(result.fields) if isinstance(result, relax.Tuple) else [result]):
        if isinstance(e, relax.Var):
            outs.add(e)
    for b in reversed(list(_bindings(func))):
        if b.var in outs and isinstance(b.value, relax.Var):
            outs.add(b.value)
        if b.var in outs and isinstance(b.value, relax.Tuple):
            outs.update(f for f in b.value.fields if isinstance(f, relax.Var))
    return outs, set(func.params)


def list_ops(mod: tvm.IRModule, func_name: str = "main") -> list[OpRecord]:
    func = mod[func_name]
    outs, params = _edge_vars(func)
    records: list[OpRecord] = []
    for b in _bindings(func):
        expr = b.value
        if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)):
            continue
        ins = tuple(_dtype(a) for a in expr.args if tensor_info(a)[0] is not None)
        edge = ""
        if expr.op.name == "relax.dequantize" and b.var in outs:
            edge = "output"
        elif expr.op.name == "relax.quantize" and expr.args[0] in params:
            edge = "input"
        records.append(OpRecord(expr.op.name, ins, _dtype(expr), edge))
    return records


def summarize(records: list[OpRecord], onnx_matmuls: int) -> dict:
    mm = [r for r in records if r.op == _MATMUL]
    int8 = [r for r in mm if r.inputs and all(d in ("int8", "uint8") for d in r.inputs)]
    float_ops: dict[str, int] = {}
    for r in records:
        if r.computes_in_float:
            float_ops[r.op] = float_ops.get(r.op, 0) + 1
    return {
        "matmuls": {"total": max(onnx_matmuls, len(mm)), "int8": len(int8)},
        # every return to 8 or 16 bits ends in a narrowing cast of an int64 intermediate
        "requantize_ops": sum(1 for r in records if r.op == "relax.astype" and r.inputs == ("int64",)
                              and r.output in ("int8", "int16")),
        "float_ops": sorted(float_ops),
        "float_op_counts": float_ops,
        "ops": [r.to_json() for r in records],
    }
