"""Report the operations of a Relax module with their dtypes (an analysis, it changes nothing).

Expects: a Relax module before legalization (high-level relax ops).
Guarantees: a list of every call in `main` with its operand and result dtypes, the count of matmuls and of
int8 matmuls, and the float ops (any op that computes in a floating-point dtype).
"""

from __future__ import annotations

import tvm
from tvm import relax

from compiler.report import BLOCK4_WEIGHT, DATA_MOVEMENT, GraphReport, OpRecord  # noqa: F401  (re-exported)
from compiler.tvm_compat import tensor_info
from schedules.block4_gemm import KERNEL_PREFIX as BLOCK4_KERNEL
from schedules.decode_attention import KERNEL_PREFIX as ATTN_DECODE_KERNEL


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
        if _is_block4(expr):  # int8 activations x 4-bit block weights (schedules/block4_gemm.py): a matmul
            records.append(OpRecord("relax.matmul", (_dtype(expr.args[1][0]), BLOCK4_WEIGHT), _dtype(expr)))
            continue
        if _kernel_name(expr).startswith(ATTN_DECODE_KERNEL):  # schedules/decode_attention.py: Q.K int8 x int8;
            # P.V the probabilities' two bytes (each 0..255) x the int8 values: two matmuls
            pv = _kernel_name(expr).startswith(ATTN_DECODE_KERNEL + "pv")
            records.extend([OpRecord("relax.matmul", ("uint8", "int8"), "int32")] * 2 if pv else
                           [OpRecord("relax.matmul", ("int8", "int8"), "int32")])
            continue
        ins = tuple(_dtype(a) for a in expr.args if tensor_info(a)[0] is not None)
        edge = ""
        if expr.op.name == "relax.dequantize" and b.var in outs:
            edge = "output"
        elif expr.op.name == "relax.quantize" and expr.args[0] in params:
            edge = "input"
        records.append(OpRecord(expr.op.name, ins, _dtype(expr), edge))
    return records


def _kernel_name(call) -> str:
    """The name of a call_tir's kernel ("" for any other call)."""
    if call.op.name == "relax.call_tir" and isinstance(call.args[0], tvm.ir.GlobalVar):
        return call.args[0].name_hint
    return ""


def _is_block4(call) -> bool:
    return _kernel_name(call).startswith(BLOCK4_KERNEL)


def summarize(records: list[OpRecord], onnx_matmuls: int) -> GraphReport:
    return GraphReport.of_ops(records, onnx_matmuls)
