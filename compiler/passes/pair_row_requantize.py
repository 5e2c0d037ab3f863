"""The requantizations between the GEMMs (in the row kernels) in int32 lanes with a high multiply, on x86.

The GEMM epilogues' requantizations run in int32 since the eighteenth session (schedules/gemm_epilogue.py
``pair_requantize``); the ones left in the graph did not: a LayerNorm's output requantized to the next matmul's
int8, GELU's int32 result to int16 before a token's quantization, the attention's context before its own. Each
``int64(x) * m + r >> s`` ran in 8 int64 lanes per vector with a 64-bit multiply (three uops on Zen 4).

Expects: a Relax module before legalize (the build's ``pair_requantize`` stage), whose requantizations are
``astype(x, "int64")`` (x int8 / int16 / int32 of a static shape), ``multiply`` by m, ``add`` r,
``right_shift`` by s (m, r, s constant scalars or vectors along the last axis), then int64 ``add`` /
``subtract`` / ``minimum`` / ``maximum`` / ``clip`` steps with such constants up to a narrowing ``astype``,
each intermediate a dataflow value read by the next step only, every step of x's shape. |x| is bounded by its
type, or tighter by the ops that made it (``value_bound``: int8 / int16 casts, the exact int8 sums of the
project's GEMM and batch GEMM kernels without an epilogue, element moves, sums, adds and products): the
attention scores less their zero point's term, and the context before its requantization, leave room for the
pre-shift their shift needs.
Guarantees: on targets whose GEMM kernel pairs its requantizations (``GemmKernel.pair_mulhi``: x86), each such
chain whose constants qualify (schedules/gemm_epilogue.pair_requant_steps: with an optional zero point z and
pre-shift t, (r - z m) << t a multiple of 2**32, s + t >= 32, (x + z) << t within int32) is replaced by
``[astype int32] [+ z] [<< t]``, a ``call_tir`` of the elementwise kernel ``mulhi(., m)``
(schedules/intrinsics/mulhi.mulhi_primfunc, op_pattern broadcast: the build groups it with its neighbours),
``+ r' >> s'``, the tail in int32 and the same narrowing cast: the same values bit for bit (proof at
pair_requant_steps) in 16 int32 lanes per vector instead of 8 int64 ones. Chains that do not qualify, shapes
that are not static and other targets are left as they are; nothing else changes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from compiler.passes.fuse_gemm_epilogue import epilogue_step, users_of
from compiler.tvm_compat import (
    PyExprMutator,
    constant_value,
    dead_code_elimination,
    expr_functor_mutator,
    mutate_functions,
    tensor_info,
    tensor_type,
)
from schedules.gemm_epilogue import EPILOGUE_ATTR, EpilogueStep, pair_requant_steps
from schedules.int8_matmul import BATCH_PREFIX, KERNEL_PREFIX, select_kernel
from schedules.intrinsics.mulhi import mulhi_primfunc

_NARROW_INPUTS = ("int8", "int16", "int32")
_BINARY = {"add": relax.op.add, "subtract": relax.op.subtract, "left_shift": relax.op.left_shift,
           "right_shift": relax.op.right_shift, "minimum": relax.op.minimum, "maximum": relax.op.maximum}


def _is_op(value, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


_MOVES = {"relax.reshape", "relax.permute_dims", "relax.strided_slice"}  # ops that only move elements
_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_INT8_PRODUCT = 128 * 128  # the largest |a * b| of two int8 values


def _gemm_sum_bound(mod, call) -> int | None:
    """K * 128 * 128 for a call of the project's int8 GEMM or batch GEMM kernel without an epilogue (its int32
    result is the exact sum of K products of int8 values; K: its int8 activation's last axis), else None."""
    gv = call.args[0]
    if not isinstance(gv, tvm.ir.GlobalVar) or not gv.name_hint.startswith((KERNEL_PREFIX, BATCH_PREFIX)):
        return None
    func = mod[gv] if gv in mod.functions else None
    args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
    if func is None or func.attrs is not None and EPILOGUE_ATTR in func.attrs or not args:
        return None
    a_dtype, a_shape = tensor_info(args[0])
    if tensor_info(call)[0] != "int32" or a_dtype != "int8" or not a_shape:
        return None
    return a_shape[-1] * _INT8_PRODUCT


def _type_bound(dtype) -> int:
    """The largest |value| of a type: 1 for bool, 2**(bits-1) for a signed integer, unbounded otherwise."""
    if dtype == "bool":
        return 1
    if dtype and dtype.startswith(("int", "uint")):
        return int(np.iinfo(dtype).max) + 1
    return 1 << 62


def value_bound(expr, values: dict, mod, depth: int = 12) -> int:
    """The largest |value| ``expr`` can hold, from the ops that made it (int8 / int16 casts, the exact int8
    GEMM sums, element moves, sums, adds and products with constants); its type's range where unknown."""
    dtype = tensor_info(expr)[0]
    top = _type_bound(dtype)
    if not dtype or not dtype.startswith("int"):
        return top  # unsigned values wrap to large ones (uint16(-1) = 65535); bool is 0 or 1
    const = constant_value(expr)
    if const is not None:  # in Python ints: |-32768| of an int16 array is still -32768 in NumPy
        return max(abs(int(const.min())), abs(int(const.max()))) if const.size else 0
    value = values.get(expr) if isinstance(expr, relax.Var) else expr
    if isinstance(value, relax.Var) and depth > 0:  # an alias
        return min(value_bound(value, values, mod, depth - 1), top)
    if depth == 0 or not isinstance(value, relax.Call):
        return top
    found = None
    if value.op == _CALL_TIR:
        found = _gemm_sum_bound(mod, value)
    elif isinstance(value.op, tvm.ir.Op):
        name, args = value.op.name, value.args
        if name == "relax.astype" or name in _MOVES:
            found = value_bound(args[0], values, mod, depth - 1)
        elif name in ("relax.add", "relax.subtract"):
            found = sum(value_bound(a, values, mod, depth - 1) for a in args)
        elif name == "relax.multiply":
            found = value_bound(args[0], values, mod, depth - 1) * value_bound(args[1], values, mod, depth - 1)
        elif name == "relax.sum":
            (_, shape_in), (_, shape_out) = tensor_info(args[0]), tensor_info(value)
            if shape_in and shape_out is not None:
                found = value_bound(args[0], values, mod, depth - 1) * (
                    int(np.prod(shape_in)) // max(int(np.prod(shape_out)), 1))
    return top if found is None else min(found, top)


def find_row_chains(func: relax.Function, mod=None) -> dict:
    """{the narrowing cast's var: (x, int32 steps, their operands)} for every chain of ``func`` that qualifies;
    ``mod``: the module holding the kernels ``func`` calls (an input made by an int8 GEMM is bounded by it)."""
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    users = users_of(func)
    chains = {}
    for var, value in values.items():
        if not _is_op(value, "relax.astype") or tensor_info(value)[0] != "int64":
            continue
        x = value.args[0]
        x_dtype, shape = tensor_info(x)
        if x_dtype not in _NARROW_INPUTS or not shape:
            continue
        steps, operands, cur, end = [EpilogueStep("astype", "int64")], [], var, None
        while (isinstance(cur, relax.DataflowVar) and len(users.get(cur, [])) == 1
               and users[cur][0] is not None):
            nxt = users[cur][0]
            call = values.get(nxt)
            if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
                break
            step = epilogue_step(call, cur, 1, shape[-1], values)
            if step is None or step[0].operand not in ("", "scalar", "vector") or tensor_info(call)[1] != shape:
                break
            steps.append(step[0])
            operands += step[1]
            cur = nxt
            if step[0].dtype != "int64":
                end = nxt
                break
        if end is None:
            continue
        bound = min(int(np.iinfo(x_dtype).max), value_bound(x, values, mod) if mod is not None else 1 << 62)
        found = pair_requant_steps(steps, operands, x_dtype, bound)
        if found is not None and found[2] == len(steps):
            chains[end] = (x, found[0], found[1])
    return chains


@expr_functor_mutator
class _Pair(PyExprMutator):
    def __init__(self, mod, chains: dict):
        super().__init__(mod)
        self.chains = chains
        self.kernels: dict = {}  # (shape, vector) -> the mulhi kernel's GlobalVar
        self.paired = 0

    def _mulhi(self, y, m: np.ndarray, vector: bool):
        _, shape = tensor_info(y)
        key = (shape, vector)
        if key not in self.kernels:
            name = "intformer_mulhi" + ("_col" if vector else "")
            self.kernels[key] = self.builder_.add_func(mulhi_primfunc(shape, vector), name)
        m = relax.const(m if vector else m.reshape(()), "int32")
        return relax.call_tir(self.kernels[key], [y, m], tensor_type(shape, "int32"))

    def visit_var_binding_(self, binding):
        chain = self.chains.get(binding.var)
        if chain is None:
            return super().visit_var_binding_(binding)
        x, steps, operands = chain
        bb, y, given = self.builder_, self.visit_expr(x), iter(operands)
        for k, step in enumerate(steps):
            if step.op == "astype":
                value = relax.op.astype(y, step.dtype)
            elif step.op == "clip":
                value = relax.op.clip(y, *step.attrs)
            elif step.op == "mulhi":
                value = self._mulhi(y, next(given), step.operand == "vector")
            else:
                c = next(given)
                c = relax.const(c if step.operand == "vector" else c.reshape(()), "int32")
                value = _BINARY[step.op](c, y) if step.swap else _BINARY[step.op](y, c)
            last = k == len(steps) - 1
            y = bb.emit_output(value) if last and not isinstance(binding.var, relax.DataflowVar) else bb.emit(value)
        self.paired += 1
        self.set_var_remap(binding.var, y)


@tvm.transform.module_pass(opt_level=0, name="IntformerPairRowRequantize")
class PairRowRequantize:
    """``paired``: the chains rewritten by the last call."""

    def __init__(self, target):
        self.target = target
        self.paired = 0

    def transform_module(self, mod, ctx):
        self.paired = 0
        if not select_kernel(self.target).pair_mulhi:
            return mod
        chains = {}
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                chains.update(find_row_chains(func, mod))
        if not chains:
            return mod
        mutator = _Pair(mod, chains)
        mod = mutate_functions(mutator, mod)
        self.paired = mutator.paired
        return dead_code_elimination()(mod)  # the int64 chains' bindings
