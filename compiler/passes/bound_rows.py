"""Row kernels of a length bucket compute only the input's rows, as its GEMMs do.

A ranged library runs an input of length L in the smallest bucket B >= L. Its GEMMs already compute only the
first L rows (compiler/ranged.py ``add_length_params``); the row kernels (LayerNorm, GELU, requantization, a
row's quantization: one iteration of a parallel loop per token) still ran all B rows, ~15 us per padded row
for all-MiniLM-L6-v2 at 16 tokens on Zen 4, a third of a token's whole cost.

Expects: a module after share_buckets whose bucket functions (named by `compiler.ranged.bucket_name`, one ranged
dim) take the input's length as their last parameter ``length`` (ranged.LENGTH_PARAM) and whose call sites line
up one to one across the buckets.
Guarantees: at a call site where, in two buckets of different sizes at least, the kernel is one serial or
parallel loop (under the root block) of k iterations per row of the bucket (the same k), and every access of
iteration i to a parameter whose first axis above 1 is the bucket's length is a load or store of row i // k of it
(followed through loops and block bindings; a let, an aliasing buffer, a matched region, a pointer or an extern
call rejects the kernel), the kernel is replaced by a copy with an int64 parameter ``rows`` (after its inputs;
the call passes ``length``) in those buckets where every reader of its result sees only the input's rows: other
such kernels; a GEMM given the length (schedules/int8_matmul.py: it reads its activation's rows up to its row
tile, and a per-row operand only in an epilogue without a division or a table lookup, which a zero row could
fault); a view (reshape) whose first axis above 1 is still the rows, or a tuple item, read that way; the bucket
function's result (the dispatch slices the rows off). A use the pass does not follow keeps the kernel whole.
The loop runs min(rows, B) * k iterations (rows clamped to [0, B]) and the outputs' rows from there to B are
written as zeros, the same on every call whatever the memory held. The rows below the length are computed
exactly as before: iteration i writes only row i // k, and the dropped iterations come after every kept one.
Kernels that do not pass (a softmax over heads x queries, the attention's key transposes, a mask or a gather
index over positions, a pooling's input, reshapes, which the VM runs as views) keep every row. Inputs whose rows
are not the bucket's (constants, per-column vectors) are read as before. Nothing changes for a library of fixed
shapes or of several ranged dims.
"""

from __future__ import annotations

from collections import defaultdict

import tvm
from tvm import relax

from compiler.passes.share_buckets import redirect_calls, without_unused
from compiler.tvm_compat import (
    Analyzer,
    PrimCall,
    PrimFunc,
    SBlockRealize,
    TensorLoad,
    is_buffer,
    tirx,
    visit_ir,
)
from schedules.gemm_epilogue import EPILOGUE_ATTR
from schedules.int8_matmul import KERNEL_PREFIX as GEMM_PREFIX

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
ROWS_SUFFIX = "_rows"  # a bounded kernel's name: the original's with this suffix


def _row_loop(func: PrimFunc):
    """The kernel's one top-level serial or parallel loop from 0 (the root block's whole body), or None (a
    vectorized or unrolled loop cannot take a run-time extent)."""
    body = func.body
    if not isinstance(body, SBlockRealize):
        return None
    inner = body.block.body
    if (isinstance(inner, tirx.For) and inner.kind in (tirx.ForKind.SERIAL, tirx.ForKind.PARALLEL)
            and _is_zero(inner.min) and not body.block.init):
        return inner
    return None


def _is_zero(e) -> bool:
    return isinstance(e, tirx.IntImm) and int(e.value) == 0


class _Buffers:
    """{buffer: value} by identity (a buffer is a Var in 0.27, whose == builds an expression)."""

    def __init__(self):
        self.items: list = []

    def __setitem__(self, buf, value):
        self.items.append((buf, value))

    def get(self, buf, default=None):
        return next((v for b, v in self.items if b.same_as(buf)), default)

    def __contains__(self, buf) -> bool:
        return any(b.same_as(buf) for b, _ in self.items)


_OPAQUE = (tirx.LetStmt, tirx.Let, tirx.DeclBuffer, tirx.AttrStmt)
_OPAQUE_CALLS = ("address_of", "access_ptr", "extern", "packed", "call_llvm")


def _opaque_call(call) -> bool:
    name = getattr(call.op, "name", "")
    return any(word in name for word in _OPAQUE_CALLS)


def _row_axis(buf, extent, per_row: int, analyzer) -> int | None:
    """The axis of `buf` that holds rows: its first axis longer than 1, when that one is extent / per_row long."""
    for axis, d in enumerate(buf.shape):
        if isinstance(d, tirx.IntImm) and int(d.value) == 1:
            continue
        size = tirx.Cast(str(extent.ty), d) * tirx.IntImm(str(extent.ty), per_row)
        return axis if analyzer.can_prove_equal(size, extent) else None
    return None


def _rows_only(func: PrimFunc, loop, per_row: int, n_outputs: int) -> list | None:
    """[(output buffer, its row axis)] when every access of iteration i to a row-shaped parameter (first axis
    above 1 as long as the loop's extent / per_row) is to row i // per_row of it, and every output is
    row-shaped; else None."""
    analyzer = Analyzer()
    params = [p for p in func.params if is_buffer(p)]
    rowed = _Buffers()
    for p in params:
        axis = _row_axis(p, loop.extent, per_row, analyzer)
        if axis is not None:
            rowed[p] = axis
    outputs = func.params[len(func.params) - n_outputs:]
    if any(not is_buffer(o) or o not in rowed for o in outputs):
        return None
    row = tirx.floordiv(loop.loop_var, tirx.IntImm(str(loop.extent.ty), per_row))
    analyzer.bind(loop.loop_var, tvm.ir.Range.from_min_extent(loop.min, loop.extent))
    ok = [True]

    def access(buf, indices):
        axis = rowed.get(buf)
        if axis is not None and not analyzer.can_prove_equal(indices[axis], row):
            ok[0] = False

    def visit(node, visitor):
        if not ok[0]:
            return
        if isinstance(node, tirx.For):
            analyzer.bind(node.loop_var, tvm.ir.Range.from_min_extent(node.min, node.extent))
        elif isinstance(node, SBlockRealize):
            block = node.block
            if block.match_buffers:  # a buffer region under another name: not followed
                ok[0] = False
                return
            for iv, value in zip(block.iter_vars, node.iter_values):
                analyzer.bind(iv.var, value)
        elif isinstance(node, tirx.BufferStore):
            access(node.buffer, node.indices)
        elif isinstance(node, TensorLoad):
            access(node.source, node.indices)
        elif isinstance(node, _OPAQUE) or (isinstance(node, PrimCall) and _opaque_call(node)):
            ok[0] = False  # a let, an aliasing buffer, a pointer or an extern call: what it reads is not followed
            return
        visitor.default_visit(node)

    try:
        visit_ir(loop.body, visit)
    except (RuntimeError, ValueError):  # a TVM error (a loop variable bound twice, say): not proven
        return None
    return [(o, rowed.get(o)) for o in outputs] if ok[0] else None


def _cast(dtype: str, e):
    return e if str(e.ty) == dtype else tirx.Cast(dtype, e)


def bound_kernel(func: PrimFunc, loop, per_row: int, outputs: list) -> PrimFunc:
    """`func` over its first ``rows`` rows, the outputs' other rows zeros (see the module docstring)."""
    dt = str(loop.extent.ty)
    rows = tirx.Var("rows", "int64")
    size = Analyzer().simplify(tirx.floordiv(loop.extent, tirx.IntImm(dt, per_row))) if per_row > 1 else loop.extent
    # clamped in int64 before the cast: a bucket function called directly with any int64
    active = _cast(dt, tirx.min(tirx.max(rows, tirx.IntImm("int64", 0)), _cast("int64", size)))
    extent = active * tirx.IntImm(dt, per_row) if per_row > 1 else active
    body = [tirx.For(loop.loop_var, loop.min, extent, loop.kind, loop.body, loop.thread_binding, loop.annotations)]
    for buf, axis in outputs:
        idx = [tirx.Var(f"zero_{k}", str(d.ty)) for k, d in enumerate(buf.shape)]
        at = list(idx)
        at[axis] = _cast(str(buf.shape[axis].ty), active) + idx[axis]
        stmt = tirx.BufferStore(buf, tirx.const(0, buf.dtype), at)
        for k in reversed(range(len(buf.shape))):
            d = buf.shape[k]
            extent_k = d - _cast(str(d.ty), active) if k == axis else d
            stmt = tirx.For(idx[k], tirx.const(0, str(d.ty)), extent_k, tirx.ForKind.SERIAL, stmt)
        body.append(stmt)
    root = func.body.block
    new_root = type(root)(root.iter_vars, root.reads, root.writes, root.name_hint, tirx.SeqStmt(body), root.init,
                          root.alloc_buffers, root.match_buffers, root.annotations)
    n_in = len(func.params) - len(outputs)
    params = [*func.params[:n_in], rows, *func.params[n_in:]]
    return PrimFunc(params, SBlockRealize([], True, new_root), func.ret_type, func.attrs)


def _extent_at(func: PrimFunc, loop, call) -> int | None:
    """The loop's extent at this call: its scalar parameters (a shared kernel's n) set to the call's values."""
    extent = loop.extent
    if isinstance(extent, tirx.IntImm):
        return int(extent.value)
    values = {}
    for param, arg in zip(func.params, call.args[1].fields):
        if not is_buffer(param) and isinstance(arg, tirx.IntImm):  # a PrimValue (relax.prim_value)
            values[param] = arg
    analyzer = Analyzer()
    for var, value in values.items():
        analyzer.bind(var, tirx.Cast(str(var.ty), value))
    out = analyzer.simplify(extent)
    return int(out.value) if isinstance(out, tirx.IntImm) else None


def _n_outputs(call) -> int:
    out = call.ty_args[0] if call.ty_args else call.struct_info
    return len(out.fields) if isinstance(out, relax.TupleType) else 1


def _tir_bindings(func) -> list:
    """The bindings of a Relax function whose value is a ``call_tir``, in order."""
    return [b for block in func.body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and b.value.op.same_as(_CALL_TIR)]


def _uses(func) -> tuple[dict, set]:
    """({var: [the bindings whose value uses it]}, the vars the function returns) of a Relax function."""
    uses: dict = defaultdict(list)
    for block in func.body.blocks:
        for binding in block.bindings:
            for var in relax.analysis.free_vars(binding.value):
                uses[var].append(binding)
    returned = set(relax.analysis.free_vars(func.body.body))
    return uses, returned


# epilogue steps of a GEMM that a zero per-row operand could make fault (a division) or index out of a table
_UNSAFE_STEPS = ("floor_divide", "floor_mod", "divide", "take")


def _gemm_reads_rows_only(kernel, name: str, var, call) -> bool:
    """A GEMM given the length computes the input's rows (rounded up to its tile: up to 3 padded rows) from
    `var`: as its activation, or as a per-row operand of an epilogue that cannot fault on the zero rows."""
    if not name.startswith(GEMM_PREFIX) or not isinstance(kernel, PrimFunc):
        return False
    if call.args[1].fields and call.args[1].fields[0].same_as(var):
        return True
    epilogue = str((kernel.attrs or {}).get(EPILOGUE_ATTR, ""))
    return not any(f'"{op}"' in epilogue for op in _UNSAFE_STEPS)


def _keeps_rows(struct, size: int) -> bool:
    """A view's result whose first axis above 1 is the bucket's rows (a row stays a row)."""
    shape = getattr(struct, "shape", None)
    dims = [int(d) for d in shape] if shape is not None and all(isinstance(d, tirx.IntImm) for d in shape) else None
    return dims is not None and next((d for d in dims if d != 1), None) == size


def _rows_respected(mod, func, chosen: set, length, size: int) -> set:
    """The bindings of `chosen` (call_tir bindings of `func` to bound) whose outputs' rows past the length are
    read by nothing that would see them: only by other chosen kernels, by the GEMMs given the length (which read
    their activation's rows up to their tile, or a per-row operand in an epilogue that cannot fault on zeros),
    through views keeping rows as rows and tuple items, or returned (the dispatch slices the rows off). Anything
    else (a softmax over keys, a gather, a pooling, a use not followed) keeps its producer unbounded."""
    uses, returned = _uses(func)
    chosen = set(chosen)

    def safe(var, seen) -> bool:
        users = uses.get(var, [])
        if not users and var not in returned:
            return False  # a use not recorded: after dead-code elimination every binding has one
        for user in users:
            value = user.value
            if user in chosen:
                continue
            if isinstance(value, relax.Call) and value.op.same_as(_CALL_TIR):
                gv = value.args[0]
                kernel = mod[gv]
                if any(isinstance(a, relax.Var) and a.same_as(length) for a in value.args[1].fields):
                    if _gemm_reads_rows_only(kernel, gv.name_hint, var, value):
                        continue
                    return False
                view = isinstance(kernel, PrimFunc) and relax.analysis.has_reshape_pattern(kernel)
                if view and _keeps_rows(user.var.ty, size) and (user.var in seen or safe(user.var, seen | {user.var})):
                    continue
                return False
            if isinstance(value, (relax.TupleGetItem, relax.Var, relax.Tuple)) and not isinstance(
                    user, relax.MatchCast):
                if user.var in seen or safe(user.var, seen | {user.var}):
                    continue
            return False
        return True

    changed = True
    while changed:
        changed = False
        for binding in list(chosen):
            if not safe(binding.var, {binding.var}):
                chosen.discard(binding)
                changed = True
    return chosen


def bound_rows(mod, sizes: dict[str, int]):
    """The module with its row kernels bounded by the input's length (see the module docstring); `sizes`:
    {bucket function name: its size along the one ranged dim}. Returns (module, call sites bounded)."""
    from compiler.ranged import LENGTH_PARAM

    names = list(sizes)
    if len(set(sizes.values())) < 2:
        return mod, 0
    lengths = {}
    for name in names:
        params = mod[name].params
        if not params or params[-1].name != LENGTH_PARAM:
            return mod, 0
        lengths[name] = params[-1]
    sites = {name: _tir_bindings(mod[name]) for name in names}
    if len({len(c) for c in sites.values()}) != 1:
        return mod, 0
    made: dict = {}  # (kernel name, per_row) -> (func, loop, outputs), or None when its accesses do not qualify
    candidates: dict = defaultdict(dict)  # function -> {site: (kernel, per_row, n-th call of the kernel)}
    counters = {name: defaultdict(int) for name in names}
    for k in range(len(sites[names[0]])):
        fits = []  # buckets whose kernel at this site is one loop over the bucket's rows, per_row iterations each
        for name in names:
            call = sites[name][k].value
            gv = call.args[0]
            occurrence = counters[name][gv.name_hint]
            counters[name][gv.name_hint] += 1
            func = mod[gv]
            # a reshape (or a slice of a prefix) stays a kernel the VM runs as a view of its input
            view = isinstance(func, PrimFunc) and relax.analysis.has_reshape_pattern(func)
            loop = _row_loop(func) if isinstance(func, PrimFunc) and not view else None
            extent = _extent_at(func, loop, call) if loop is not None else None
            if extent is None or extent % sizes[name]:
                continue
            per_row = extent // sizes[name]
            key = (gv.name_hint, per_row)
            if key not in made:
                outputs = _rows_only(func, loop, per_row, _n_outputs(call))
                made[key] = None if outputs is None else (func, loop, outputs)
            if made[key] is not None:
                fits.append((name, gv, per_row, occurrence))
        # rows are the input's tokens only when they follow the bucket's size: in two buckets at least
        if len({sizes[name] for name, *_ in fits}) < 2 or len({per_row for _, _, per_row, _ in fits}) != 1:
            continue
        for name, gv, per_row, occurrence in fits:
            candidates[name][k] = (gv, per_row, occurrence)
    bb = relax.BlockBuilder(mod)
    bounded: dict = {}  # (kernel name, per_row) -> the bounded kernel's GlobalVar
    plan: dict = {}
    for name, picked in candidates.items():
        keep = _rows_respected(mod, mod[name], {sites[name][k] for k in picked}, lengths[name], sizes[name])
        for k, (gv, per_row, occurrence) in picked.items():
            if sites[name][k] not in keep:
                continue
            key = (gv.name_hint, per_row)
            if key not in bounded:
                func, loop, outputs = made[key]
                new = bb.add_func(bound_kernel(func, loop, per_row, outputs), gv.name_hint + ROWS_SUFFIX)
                if func.attrs is not None and "global_symbol" in func.attrs:
                    bb.update_func(new, bb.get()[new].with_attr("global_symbol", new.name_hint))
                bounded[key] = new
            plan[(name, gv.name_hint, occurrence)] = (bounded[key], [lengths[name]])
    if not plan:
        return mod, 0
    return without_unused({name for name, _ in bounded}, redirect_calls(bb.get(), plan, names)), len(plan)


__all__ = ["ROWS_SUFFIX", "bound_kernel", "bound_rows"]
