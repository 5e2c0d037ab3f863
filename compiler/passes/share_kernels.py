"""Make the kernels that differ only in their constants one kernel that takes those constants as a tensor.

Each layer of a Transformer calls its own requantize, softmax, LayerNorm and GELU row kernels: the same loops over
the same shapes, but with that layer's fixed-point multipliers, shifts, zero points and clamps written into the
code as immediates, so the library carried one compiled copy per layer (and per length bucket).

Expects: a Relax module after the build's schedules (compiler/passes/default_schedule.py, tuned records), whose
Relax functions call PrimFuncs through ``call_tir``.
Guarantees: private PrimFuncs called through ``call_tir`` that are structurally equal once the integer and float
immediates of their stored values are set aside (same shapes, loops, schedule and attributes) become one PrimFunc.
Each immediate that differs among them is read from a new 1-D parameter (one per dtype, placed after the inputs)
and every call passes its kernel's values as a constant tensor; immediates that agree stay immediates. Only the
operands of a store's value are lifted, never indices, loop extents, divisors or call arguments (no dynamic loop,
no division by a value known only at run time). Each call computes what it computed before, bit for bit.
Functions that no call refers to any more are removed.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from compiler.tvm_compat import (
    PrimCall,
    PrimFunc,
    PyExprMutator,
    SBlock,
    SBlockRealize,
    TensorLoad,
    const,
    dead_code_elimination,
    expr_functor_mutator,
    mutate_functions,
    mutate_ir,
    structural_equal,
    structural_hash,
    tirx,
    visit_ir,
)

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_DIVISIONS = (tirx.Div, tirx.Mod, tirx.FloorDiv, tirx.FloorMod)
_IMMEDIATES = (tirx.IntImm, tirx.FloatImm)


def _negated(imm):
    """-imm as an immediate of its dtype, or None (not an immediate, or its negation does not fit)."""
    if isinstance(imm, tirx.FloatImm):
        return tirx.FloatImm(str(imm.ty), -imm.value)
    if not isinstance(imm, tirx.IntImm) or str(imm.ty) == "bool":
        return None
    info = np.iinfo(str(imm.ty))
    return tirx.IntImm(str(imm.ty), -imm.value) if info.min <= -imm.value <= info.max else None


def _map_values(func: PrimFunc, replace) -> PrimFunc:
    """`func` with each liftable immediate `imm` (see the module docstring) replaced by ``replace(imm)``, visited in
    an order that depends only on the function's structure."""

    def immediate(value, _):
        return value if str(value.ty) == "bool" else replace(value)

    def division(value, m):
        return type(value)(m.mutate(value.a), value.b)

    def keep(value, _):
        return value

    def subtract(value, m):  # x - c as x + (-c): simplification writes a negative offset either way
        negated = _negated(value.b)
        if negated is None:
            return m.default_mutate(value)
        return tirx.Add(m.mutate(value.a), immediate(negated, m))

    inner = [(_IMMEDIATES, immediate), (_DIVISIONS, division), ((TensorLoad, PrimCall), keep),
             (tirx.Sub, subtract)]

    def store(value, _):
        new = mutate_ir(value.value, inner)
        return value if new.same_as(value.value) else tirx.BufferStore(value.buffer, new, value.indices)

    body = mutate_ir(func.body, [(tirx.BufferStore, store)])
    return PrimFunc(func.params, body, func.ret_type, func.attrs)


def _placeholder(imm):
    return type(imm)(str(imm.ty), 0)


def _skeleton(func: PrimFunc) -> tuple[PrimFunc, list]:
    """(`func` with every liftable immediate set to 0, the immediates in visiting order as (dtype, value))."""
    found = []

    def record(imm):
        found.append((str(imm.ty), imm.value))
        return _placeholder(imm)

    return _map_values(func, record), found


def _layout(cls: list) -> tuple[dict, dict]:
    """Where a class's shared kernel reads each immediate that differs among its members: (position -> (dtype,
    index into that dtype's parameter), dtype -> the parameter's columns, each the members' values in class
    order). Positions whose values agree in every member share one element (so that LLVM still sees, e.g., the
    four `x + c` of a GELU polynomial as one value); positions where all members agree are not lifted."""
    slot, columns = {}, {}
    for k, (dtype, _) in enumerate(cls[0][1]):
        column = tuple(found[k][1] for _, found in cls)
        if len({repr(v) for v in column}) == 1:
            continue
        cols = columns.setdefault(dtype, [])
        key = [repr(v) for v in column]
        index = next((i for i, c in enumerate(cols) if [repr(v) for v in c] == key), None)
        if index is None:
            index = len(cols)
            cols.append(column)
        slot[k] = (dtype, index)
    return slot, {d: columns[d] for d in sorted(columns)}


def _generic(func: PrimFunc, slot: dict, columns: dict, n_inputs: int) -> PrimFunc:
    """`func` reading the immediates at the positions of `slot` from new 1-D parameters, one per dtype of
    `columns`, inserted after its `n_inputs` inputs."""
    buffers = {d: tirx.decl_buffer((len(cols),), d, name=f"consts_{d}", layout=None) for d, cols in columns.items()}
    position = [0]

    def replace(imm):
        k = position[0]
        position[0] += 1
        if k not in slot:
            return imm
        dtype, i = slot[k]
        return tirx.BufferLoad(buffers[dtype], [tirx.IntImm("int64", i)])

    body = _with_reads(_map_values(func, replace).body, list(buffers.values()))
    params = [*func.params[:n_inputs], *buffers.values(), *func.params[n_inputs:]]
    return PrimFunc(params, body, func.ret_type, func.attrs)


def _with_reads(body, buffers: list):
    """`body` with each block that loads from one of `buffers` (new 1-D parameters) declaring it among its
    reads (the schedule's and the lowering's view of what a block touches)."""

    def loaded(stmt) -> list:
        """The buffers of `buffers` that `stmt` loads from, nested blocks left out (they declare their own)."""
        found = []

        def visit(node, visitor):
            if isinstance(node, TensorLoad) and any(node.source.same_as(b) for b in buffers):
                found.append(node.source)
            if not isinstance(node, (SBlockRealize, tirx.Var)):
                visitor.default_visit(node)

        visit_ir(stmt, visit)
        return [b for b in buffers if any(f.same_as(b) for f in found)]

    def block(value, m):
        value = m.default_mutate(value)
        new = [b for b in loaded(value.body) if not any(r.source.same_as(b) for r in value.reads)]
        if not new:
            return value
        whole = [tirx.BufferRegion(b, [tvm.ir.Range.from_min_extent(tirx.IntImm("int64", 0),
                                                                  tirx.IntImm("int64", int(b.ty.shape[0])))])
                 for b in new]
        return SBlock(value.iter_vars, [*value.reads, *whole], value.writes, value.name_hint, value.body,
                      value.init, value.alloc_buffers, value.match_buffers, value.annotations)

    return mutate_ir(body, [(SBlock, block)])


def _specializes(generic: PrimFunc, columns: dict, member: int, original: PrimFunc) -> bool:
    """The shared kernel with member `member`'s constants written back in is the member's kernel (x - c read as
    x + (-c)): the check that each lifted immediate went to the right place."""
    params = [p for p in generic.params if not any(p.name == f"consts_{d}" for d in columns)]

    def load(value, _):
        for d, cols in columns.items():
            if value.source.name == f"consts_{d}":
                value_of = cols[int(value.indices[0].value)][member]
                return (tirx.FloatImm if "float" in d else tirx.IntImm)(d, value_of)
        return value

    names = {f"consts_{d}" for d in columns}

    def block(value, m):
        value = m.default_mutate(value)
        reads = [r for r in value.reads if r.source.name not in names]
        return SBlock(value.iter_vars, reads, value.writes, value.name_hint, value.body, value.init,
                      value.alloc_buffers, value.match_buffers, value.annotations)

    body = mutate_ir(generic.body, [(SBlock, block), (TensorLoad, load)])
    back = PrimFunc(params, body, generic.ret_type, generic.attrs)
    return structural_equal(back, _map_values(original, lambda imm: imm))


def _call_sites(mod) -> dict:
    """GlobalVar of each PrimFunc that ``call_tir`` calls -> its number of inputs (None if calls disagree or the
    function is referred to otherwise)."""
    inputs: dict = {}

    def visit(value):
        if isinstance(value, relax.Call) and value.op.same_as(_CALL_TIR):
            gv, args = value.args[0], value.args[1]
            n = len(args.fields) if isinstance(args, relax.Tuple) else None
            inputs[gv] = n if inputs.get(gv, n) == n else None

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return {gv: n for gv, n in inputs.items() if n is not None and isinstance(mod[gv], PrimFunc)
            and "global_symbol" not in (mod[gv].attrs or {})}  # an exported kernel keeps its name and code


def _classes(mod, sites: dict) -> list[list]:
    """The callable PrimFuncs grouped by skeleton: [[(gv, immediates), ...], ...], classes of two or more."""
    buckets: dict[int, list] = {}
    for gv in sorted(sites, key=lambda g: g.name_hint):
        skeleton, found = _skeleton(mod[gv])
        bucket = buckets.setdefault(structural_hash(skeleton), [])
        for cls in bucket:
            first_gv, first_found, first_skeleton = cls[0]
            if (sites[first_gv] == sites[gv] and [d for d, _ in first_found] == [d for d, _ in found]
                    and structural_equal(first_skeleton, skeleton)):
                cls.append((gv, found, skeleton))
                break
        else:
            bucket.append([(gv, found, skeleton)])
    return [[(gv, found) for gv, found, _ in cls] for bucket in buckets.values() for cls in bucket if len(cls) > 1]


@expr_functor_mutator
class _CallShared(PyExprMutator):
    """Each call of a class member -> a call of the class's shared kernel with the member's constants."""

    def __init__(self, mod, plan: dict):
        super().__init__(mod)
        self.plan = plan  # member name -> (shared GlobalVar, its constant tensors)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not call.op.same_as(_CALL_TIR) or call.args[0].name_hint not in self.plan:
            return call
        shared, consts = self.plan[call.args[0].name_hint]
        args = relax.Tuple([*call.args[1].fields, *consts])
        return relax.Call(call.op, [shared, args, *call.args[2:]], call.attrs, call.ty_args)


def share_kernels(mod):
    """The module with each class of kernels equal but for their constants made one (see the module docstring);
    returns (module, number of kernels removed)."""
    sites = _call_sites(mod)
    bb = relax.BlockBuilder(mod)
    plan: dict = {}
    removed = 0
    for cls in _classes(mod, sites):
        first_gv = cls[0][0]
        slot, columns = _layout(cls)
        func = _generic(mod[first_gv], slot, columns, sites[first_gv])
        if not all(_specializes(func, columns, m, mod[gv]) for m, (gv, _) in enumerate(cls)):
            continue  # (never seen) the immediates were not visited alike: leave the class as it was
        shared = bb.add_func(func, f"{first_gv.name_hint}_shared")  # a new signature: a new GlobalVar
        for m, (gv, _) in enumerate(cls):
            plan[gv.name_hint] = (shared, [const([c[m] for c in cols], d) for d, cols in columns.items()])
        removed += len(cls) - 1
    if not plan:
        return mod, 0
    out = bb.get()
    out = mutate_functions(_CallShared(out, plan), out)
    return dead_code_elimination()(out), removed
