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
_DATA_MOVEMENT = {"relax.reshape", "relax.permute_dims", "relax.shape_of", "relax.shape_to_tensor",
                  "relax.expand_dims", "relax.squeeze", "relax.take", "relax.concat", "relax.split",
                  "relax.strided_slice", "relax.broadcast_to", "relax.flatten"}


@dataclass(frozen=True)
class OpRecord:
    op: str
    inputs: tuple[str, ...]
    output: str

    def to_json(self) -> dict:
        return {"op": self.op, "dtypes": {"inputs": list(self.inputs), "output": self.output}}

    @property
    def computes_in_float(self) -> bool:
        if self.op in _DATA_MOVEMENT:
            return False
        if self.op == "relax.quantize":
            return True  # float -> int8: divides and rounds in float
        return self.output in _FLOAT or any(d in _FLOAT for d in self.inputs)


def _dtype(expr) -> str:
    dtype, _ = tensor_info(expr)
    if dtype is not None:
        return dtype
    return type(expr).__name__


def list_ops(mod: tvm.IRModule, func_name: str = "main") -> list[OpRecord]:
    records: list[OpRecord] = []
    func = mod[func_name]

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            ins = tuple(_dtype(a) for a in expr.args if not isinstance(a, (relax.ShapeExpr,)) and
                        tensor_info(a)[0] is not None)
            records.append(OpRecord(expr.op.name, ins, _dtype(expr)))

    relax.analysis.post_order_visit(func.body, visit)
    return records


def summarize(records: list[OpRecord], onnx_matmuls: int) -> dict:
    mm = [r for r in records if r.op == _MATMUL]
    int8 = [r for r in mm if r.inputs and all(d in ("int8", "uint8") for d in r.inputs)]
    return {
        "matmuls": {"total": max(onnx_matmuls, len(mm)), "int8": len(int8)},
        "float_ops": sorted({r.op for r in records if r.computes_in_float}),
        "ops": [r.to_json() for r in records],
    }
