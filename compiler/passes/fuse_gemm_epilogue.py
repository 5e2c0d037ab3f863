"""Fuse the elementwise chain after each constant-weight int8 matmul (requantize, lookup, rescale) into its GEMM.

Expects: the integer graph after verification (the report and the reference are taken before): ``relax.matmul(
int8, constant int8 (K, N), out_dtype="int32")`` calls, each followed by the ops integerize emitted (subtract a
column-sum vector, add a bias, astype, multiply, add, right_shift, clip, astype int8 / int16, a lookup ``take``,
a second rescale, ...). Runs before LowerIntMatmul, on targets that have a kernel of the project's (not
"generic").
Guarantees: for each such matmul, the longest chain of single-consumer ops after it that are
- an op of schedules/gemm_epilogue.OPS whose other operand is a constant scalar or a vector along N (shape (N,),
  (1, N), (1, 1, N), ...) of the chain value's type, or a value computed at run time with one element per output
  row (shape (..., M, 1) or (M, 1), the rows of the matmul's input: a per-token shift), or the product of such a
  row value and a constant vector along N (an "outer" operand: a token's zero point times the weights' column
  sums), or a unary op (astype, clip, negative),
- a ``take`` from a constant 1-D table indexed by the chain value (a lookup),
- a reshape that keeps the last dim N (adding / removing leading 1s, merging leading dims), or an alias,
- a layout op that moves elements across columns (a reshape to other last dims, a ``permute_dims``: the
  attention heads' split), after which only steps with a scalar or no operand (and lookups) may follow: they
  commute with it,
is cut where its value is narrowest (fewest bytes per element, the later of equals: the rest of the chain
stays in the graph, where the build groups it with its consumer) and, if that is past the matmul, replaced by one
call of the GEMM kernel with that epilogue (schedules/int8_matmul.emit_int8_matmul), which writes the final
int8 / int16 (M, N) tensor directly and computes the same values bit for bit; the layout ops the chain passed
are applied to that result, in order (on the narrow type: a head transpose moves int8, not int16). On the x86
kernels (``GemmKernel.pair_mulhi``) each requantization whose constants qualify runs in int32 with a high multiply
(schedules/gemm_epilogue.pair_requantize: the same values). The matmuls left over are lowered by LowerIntMatmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from compiler.ranged import length_arg
from compiler.tvm_compat import (
    PyExprMutator,
    constant_value,
    dead_code_elimination,
    expr_functor_mutator,
    mutate_functions,
    tensor_info,
)
from schedules.gemm_epilogue import OPS, TAKE_MODES, Epilogue, EpilogueStep, pair_requantize
from schedules.int8_matmul import emit_int8_matmul, select_kernel

_MATMUL = "relax.matmul"
_UNARY = {"astype", "clip", "negative"}
_TRANSPARENT = {"relax.reshape"}
_LAYOUT = {"relax.reshape", "relax.permute_dims"}  # ops that only move elements


@dataclass(frozen=True)
class Chain:
    """A matmul ``a @ w`` and the epilogue replacing the binding of ``end`` (its operands in step order: NumPy
    constants, Relax values for "row" steps, a Relax value then a NumPy vector for "outer" steps)."""

    a: relax.Expr
    w: np.ndarray
    epilogue: Epilogue
    operands: tuple
    layout: tuple = ()  # the layout calls the chain passed, in order: replayed on the fused result


def users_of(func: relax.Function) -> dict:
    """var -> the binding vars that use it (uses by the function's result count as a None user)."""
    users: dict = {}
    for block in func.body.blocks:
        for b in block.bindings:
            for v in relax.analysis.free_vars(b.value):
                users.setdefault(v, []).append(b.var)
    for v in relax.analysis.free_vars(func.body.body):
        users.setdefault(v, []).append(None)
    return users


def _vector_along_n(value: np.ndarray, n: int) -> np.ndarray | None:
    """A constant that broadcasts along the output columns only: its 1-D value (length 1 or n), else None."""
    if value.ndim == 0:
        return value.reshape(1)
    if all(d == 1 for d in value.shape[:-1]) and value.shape[-1] in (1, n):
        return value.reshape(-1)
    return None


def _row_operand(value: relax.Expr, dtype: str, m: int) -> bool:
    """A run-time value of ``dtype`` with one element per output row (shape (..., 1) over the matmul's M rows)."""
    v_dtype, shape = tensor_info(value)
    return (isinstance(value, relax.Var) and v_dtype == dtype and shape is not None and len(shape) >= 2
            and shape[-1] == 1 and math.prod(shape[:-1]) == m)


def _outer_operand(value: relax.Expr, dtype: str, m: int, n: int, values: dict) -> tuple | None:
    """(row value, column vector, their storage type) if ``value`` is ``multiply(row, constant vector along N)`` of
    ``dtype``: a row value widened from int32 (``astype``) is passed as the int32 it was, with the vector as int32
    when it fits (LLVM then multiplies 32 x 32 -> 64 bits)."""
    call = values.get(value)
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.multiply"):
        return None
    if tensor_info(call)[0] != dtype:
        return None
    for row, vec in (call.args, reversed(call.args)):
        c = constant_value(vec)
        if c is None or str(c.dtype) != dtype or not _row_operand(row, dtype, m):
            continue
        c = _vector_along_n(c, n)
        if c is None or len(c) != n:
            continue
        src = values.get(row)
        if (isinstance(src, relax.Call) and isinstance(src.op, tvm.ir.Op) and src.op.name == "relax.astype"
                and _row_operand(src.args[0], "int32", m) and _fits_int32(c)):
            return src.args[0], c.astype(np.int32), "int32"
        return row, c, dtype
    return None


def epilogue_step(call: relax.Call, x: relax.Var, m: int, n: int, values: dict
                   ) -> tuple[EpilogueStep, tuple] | None:
    """The epilogue step of ``call`` applied to the chain value ``x`` and its operands (a NumPy constant, a Relax
    value of a "row" operand, the Relax row value and the NumPy vector of an "outer" one; none for a unary op), or
    None if it is not one."""
    op = call.op.name.removeprefix("relax.")
    if op not in OPS:
        return None
    dtype, _ = tensor_info(call)
    x_dtype, _ = tensor_info(x)
    if op in _UNARY:
        if not call.args[0].same_as(x):
            return None
        attrs = (int(call.args[1].value), int(call.args[2].value)) if op == "clip" else ()
        return EpilogueStep(op, dtype, attrs=attrs), ()
    if op == "take":
        table = constant_value(call.args[0])
        if (not call.args[1].same_as(x) or table is None or table.ndim != 1 or int(call.attrs.axis) != 0
                or str(call.attrs.mode) not in TAKE_MODES):
            return None
        return EpilogueStep("take", dtype, "table", str(table.dtype), attrs=(str(call.attrs.mode),),
                            table_size=len(table)), (table,)
    lhs, rhs = call.args
    swap = rhs.same_as(x) and not lhs.same_as(x)
    if not lhs.same_as(x) and not swap:
        return None
    other = lhs if swap else rhs
    c = constant_value(other)
    if c is None and _row_operand(other, x_dtype, m) and m > 1:
        return EpilogueStep(op, dtype, "row", x_dtype, swap=swap), (other,)
    outer = _outer_operand(other, x_dtype, m, n, values) if c is None and m > 1 else None
    if outer is not None:
        row, vec, stored = outer
        return EpilogueStep(op, dtype, "outer", stored, swap=swap), (row, vec)
    if c is None or str(c.dtype) != x_dtype:
        return None
    vec = _vector_along_n(c, n)
    if vec is None:
        return None
    kind = "vector" if len(vec) == n and n > 1 else "scalar"
    vec = vec if kind == "vector" else vec[:1]
    if op == "multiply" and kind == "vector" and str(c.dtype) == "int64" and _fits_int32(vec):
        # per-column int64 multipliers that fit int32 are stored so and sign-extended on load: LLVM then
        # multiplies 32 x 32 -> 64 bits (vpmuldq, one uop) instead of a full 64-bit multiply (vpmullq, three)
        return EpilogueStep(op, dtype, kind, "int32", swap=swap), (vec.astype(np.int32),)
    return EpilogueStep(op, dtype, kind, str(c.dtype), swap=swap), (vec,)


def _fits_int32(v: np.ndarray) -> bool:
    info = np.iinfo(np.int32)
    return bool(np.all((v >= info.min) & (v <= info.max)))


def _transparent(call, m: int, n: int) -> bool:
    """A reshape that keeps the last dim N and M rows: the chain value's layout is unchanged."""
    _, shape = tensor_info(call)
    return call.op.name in _TRANSPARENT and shape is not None and shape[-1] == n and math.prod(shape[:-1]) == m


def find_chains(func: relax.Function, pair: bool = False) -> dict:
    """{the var whose binding the fused kernel replaces: Chain} for every fusable matmul of ``func``; ``pair``: each
    requantization that qualifies runs in int32 with mulhi (gemm_epilogue.pair_requantize; x86 kernels)."""
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    users = users_of(func)
    chains = {}
    for var, value in values.items():
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == _MATMUL):
            continue
        a, b = value.args
        w = constant_value(b)
        (a_dt, a_shape), (out_dt, _) = tensor_info(a), tensor_info(value)
        if w is None or w.ndim != 2 or w.dtype != np.int8 or a_dt != "int8" or a_shape is None or out_dt != "int32":
            continue
        m, n = math.prod(a_shape[:-1]), w.shape[1]
        steps, operands, layout, best, cur = [], [], [], None, var
        moved = False  # a layout op moved elements across columns: per-column operands no longer apply
        best_bytes = np.dtype("int32").itemsize
        while isinstance(cur, relax.DataflowVar) and len(users.get(cur, [])) == 1 and users[cur][0] is not None:
            nxt = users[cur][0]
            call = values.get(nxt)
            if isinstance(call, relax.Var):  # an alias
                cur = nxt
                continue
            if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
                break
            if call.op.name in _LAYOUT:
                if call.op.name != "relax.reshape" or not _transparent(call, m, n):
                    moved = True
                layout.append(call)
            else:
                step = epilogue_step(call, cur, m, n, values)
                if step is None or (moved and step[0].operand in ("vector", "row", "outer")):
                    break
                steps.append(step[0])
                operands += step[1]
                size = np.dtype(step[0].dtype).itemsize
                if size <= best_bytes:
                    best_bytes, best = size, (nxt, len(steps), len(operands), len(layout))
            cur = nxt
        if best is not None:
            end, n_steps, n_ops, n_layout = best
            epi, ops = Epilogue(tuple(steps[:n_steps])), tuple(operands[:n_ops])
            if pair:  # |a @ w| <= 128 * sum |w| per column (an int8 activation)
                epi, ops = pair_requantize(epi, ops, 128 * np.abs(w.astype(np.int64)).sum(axis=0))
            chains[end] = Chain(a, w, epi, ops, tuple(layout[:n_layout]))
    return chains


@expr_functor_mutator
class _Fuse(PyExprMutator):
    def __init__(self, mod, target, chains: dict, rows_free: bool):
        super().__init__(mod)
        self.target = target
        self.chains = chains
        self.rows_free = rows_free
        self.current = None  # (B, length var) of the function being visited (ranged.length_arg)
        self.fused = 0

    def visit_var_binding_(self, binding):
        chain = self.chains.get(binding.var)
        if chain is None:
            return super().visit_var_binding_(binding)
        bb = self.builder_
        operands = tuple(v if isinstance(v, np.ndarray) else self.visit_expr(v) for v in chain.operands)
        a = self.visit_expr(chain.a)
        y = emit_int8_matmul(bb, a, chain.w, self.target, chain.epilogue, operands, self.rows_free,
                             length_arg(self.current, tensor_info(a)[1]))
        for call in chain.layout:  # the same moves, on the epilogue's (narrower) result
            if call.op.name == "relax.permute_dims":
                y = bb.emit(relax.op.permute_dims(y, call.attrs.axes))
            else:
                y = bb.emit(relax.op.reshape(y, tensor_info(call)[1]))
        _, shape = tensor_info(binding.var)
        if tensor_info(y)[1] != shape:
            y = bb.emit(relax.op.reshape(y, shape))
        if not isinstance(binding.var, relax.DataflowVar):
            y = bb.emit_output(y)
        self.fused += 1
        self.set_var_remap(binding.var, y)


@tvm.transform.module_pass(opt_level=0, name="IntformerFuseGemmEpilogue")
class FuseGemmEpilogue:
    """``rows_free``: kernels whose schedule does not depend on the row count (a library of several lengths,
    schedules/int8_matmul.py)."""

    def __init__(self, target, rows_free: bool = False, active_rows: dict | None = None):
        self.target = target
        self.rows_free = rows_free
        self.active_rows = active_rows or {}  # as LowerIntMatmul's (lower_int_matmul.py)
        self.fused = 0

    def transform_module(self, mod, ctx):
        kernel = select_kernel(self.target)
        if kernel.isa == "generic":
            return mod  # LowerIntMatmul keeps plain matmuls there: nothing to fuse into
        chains = {}
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                chains.update(find_chains(func, kernel.pair_mulhi))
        if not chains:
            return mod
        mutator = _Fuse(mod, self.target, chains, self.rows_free)

        def on_function(name):
            mutator.current = self.active_rows.get(name)

        mod = mutate_functions(mutator, mod, on_function)
        self.fused = mutator.fused
        return dead_code_elimination()(mod)  # the replaced matmuls and chain ops
