"""Group each row-wise chain of integer ops into one kernel (softmax, log-softmax, LayerNorm with its isqrt,
requantize and lookup chains).

TVM's FuseOps cuts these chains apart: a reduction ends its group (softmax became max | exp pieces | sum |
normalize), a table lookup (`take`) is opaque, and LayerNorm's per-row isqrt became a kernel of its own. Each cut
writes a whole int64 tensor to memory and reads it back.

Expects: a legalized Relax module before FuseOps (the compile pipeline's ``fuse_rows`` stage, between ``legalize``:
LegalizeOps + AnnotateTIROpPattern, and ``fuse``: FuseOps): dataflow blocks of ``call_tir`` bindings whose PrimFuncs
carry an ``op_pattern``.
Guarantees: every maximal group of bindings that
  * call elementwise/broadcast/injective kernels, reductions over the last axis with keepdims, or lookups in a
    constant 1-D table (``ROW_PATTERNS``),
  * produce static-shape tensors over the same rows (equal shapes but for the last axis and leading unit axes:
    a reshape between (1, L, H) and (L, H), where the GEMMs' 2-D results meet the graph's 3-D row ops, and a
    slice within each row, the attention scores' padded keys cut off, join the group), and
  * are connected producer -> consumer
becomes one private function marked ``Primitive`` (FuseTIR turns it into one PrimFunc; FuseOps leaves it alone).
A group never has a path that leaves it and comes back (so the graph stays acyclic). It hands out one result (read
outside it), or, when one op starts it (every other member reads a member), one whole row and per-row scalars (...,
1), the function returning a tuple: a per-row quantization is one kernel handing out the int8 codes with each row's
shift and zero point, where it was seven. Any other group is split at its first result. Then each group takes in
the row ops left outside every group whose results only it reads (a per-row exponent's chain before a
requantization), and the last op of another group when it reads only that group's per-row scalars; groups of one
binding are left to FuseOps. Alias bindings (``y = x``, which earlier passes leave between a requantization and
the next matmul's token quantization) are resolved first (CanonicalizeBindings): they would cut a chain in two.
Only the grouping changes: each op computes what it computed before, bit for bit, and
compiler/passes/default_schedule.py then computes every stage of a row under one row loop.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import tvm
from tvm import relax

from compiler.tvm_compat import PrimFunc, constant_value, expr_type, tensor_info

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
OP_PATTERN = {"elementwise": 0, "broadcast": 1, "injective": 2, "reduce": 3, "opaque": 8}


def _shape(expr):
    return tensor_info(expr)[1]


def _rows(shape: tuple) -> tuple:
    """The rows of a shape: all but its last axis, leading unit axes dropped ((1, L, H) and (L, H) are L rows)."""
    rows = tuple(shape[:-1])
    while rows and rows[0] == 1:
        rows = rows[1:]
    return rows


def _same_rows_as_an_input(out, args) -> bool:
    """The output has the rows of one of its tensor inputs: its shape but for leading unit axes (a reshape adding
    or dropping them moves no element) and the last axis (a slice within each row: a batch GEMM's padded scores
    cut to the keys)."""
    return any(_shape(a) and _rows(_shape(a)) == _rows(out) for a in args if isinstance(a, relax.Var))


def _elementwise(out, args) -> bool:
    """Elementwise / broadcast (full_like, where, the binary ops with a row or channel operand), or an injective op
    within each row: the output has the rows of one of its tensor inputs (a transpose or a reshape that splits
    the last axis does not)."""
    return _same_rows_as_an_input(out, args)


def _broadcast(out, args) -> bool:
    """Elementwise with operands that broadcast to the output (a row scalar (..., 1) against a channel vector: a
    per-channel shift less a per-row exponent), all read by index under the row loop: every tensor operand's
    shape, aligned on the right, broadcasts to the output, and one is a variable. Only for the elementwise and
    broadcast patterns (a reshape or transpose, injective, can keep the element count and change the rows)."""
    def fits(a):
        shape = _shape(a)
        return shape is not None and len(shape) <= len(out) and all(
            d in (1, o) for d, o in zip(reversed(shape), reversed(out)))

    if _elementwise(out, args):
        return True
    tensors = [a for a in args if isinstance(a, relax.Var) or constant_value(a) is not None]
    return any(isinstance(a, relax.Var) for a in tensors) and all(fits(a) for a in tensors)


def _last_axis_reduction(out, args) -> bool:
    """sum / max / min over the last axis with keepdims: (..., H) -> (..., 1)."""
    return any(isinstance(a, relax.Var) and _shape(a) and _shape(a)[:-1] + (1,) == out for a in args)


def _table_lookup(out, args) -> bool:
    """take(constant 1-D table, index): legalized as an opaque kernel."""
    return (len(args) == 2 and constant_value(args[0]) is not None and constant_value(args[0]).ndim == 1
            and isinstance(args[1], relax.Var) and _shape(args[1]) == out)


# op_pattern of the legalized kernel -> does this call compute row by row
ROW_PATTERNS = {OP_PATTERN["elementwise"]: _broadcast, OP_PATTERN["broadcast"]: _broadcast,
                OP_PATTERN["injective"]: _elementwise, OP_PATTERN["reduce"]: _last_axis_reduction,
                OP_PATTERN["opaque"]: _table_lookup}


def _row_key(mod, binding):
    """The rows a legalized call computes over (its output shape but the last axis), or None if it is not a row
    op."""
    value = binding.value
    if not isinstance(value, relax.Call) or value.op != _CALL_TIR:
        return None
    func = mod[value.args[0]]
    if not isinstance(func, PrimFunc) or func.attrs is None or "op_pattern" not in func.attrs:
        return None
    if func.attrs.get("tir.is_scheduled"):  # the int8 GEMM kernels
        return None
    accept = ROW_PATTERNS.get(int(func.attrs["op_pattern"]))
    out = _shape(binding.var)
    args = list(value.args[1].fields) if isinstance(value.args[1], relax.Tuple) else []
    if accept is None or not out or not accept(out, args):
        return None
    return _rows(out)


def _var_args(expr) -> list:
    """The variables an argument expression reads (tuples flattened)."""
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in _var_args(f)]
    return []


@dataclass
class _Group:
    key: tuple
    members: list = field(default_factory=list)  # binding indices, in order


def group_bindings(mod, bindings) -> list[list[int]]:
    """Binding indices of each group of two or more (see the module docstring), in binding order."""
    where: dict = {}  # var -> binding index
    group_of: dict[int, int] = {}  # binding index -> group id
    ancestors: list[frozenset] = []  # binding index -> ids of the groups it depends on (transitively)
    groups: list[_Group] = []
    for i, b in enumerate(bindings):
        inputs = [where[v] for v in _uses(b.value) if v in where]
        anc = set()
        for j in inputs:
            anc |= ancestors[j]
            if j in group_of:
                anc.add(group_of[j])
        key = _row_key(mod, b)
        chosen = None
        if key is not None:
            for j in inputs:
                g = group_of.get(j)
                if g is None or groups[g].key != key or chosen == g:
                    continue
                # joining g must not close a cycle: no other input may depend on g through a binding outside it
                if all(group_of.get(u) == g or g not in ancestors[u] for u in inputs):
                    chosen = g
                    break
            if chosen is None:
                chosen = len(groups)
                groups.append(_Group(key))
            groups[chosen].members.append(i)
            group_of[i] = chosen
        where[b.var] = i
        ancestors.append(frozenset(anc))
    return [g.members for g in groups if len(g.members) > 1]


def _substitute(expr, env):
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_substitute(f, env) for f in expr.fields])
    return env.get(expr, expr)


def _operands(expr) -> list:
    """Variables and tensor constants an argument reads (FuseTIR takes no constants inside a primitive
    function: they become parameters, as FuseOps makes them)."""
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in _operands(f)]
    return [expr] if isinstance(expr, relax.Var) or constant_value(expr) is not None else []


def _outline(bb, bindings, members: list[int], used_after: set, name: str):
    """A private Primitive function computing the member bindings; (global var, its inputs, its outputs)."""
    member_vars = {bindings[i].var for i in members}
    inputs = []
    for i in members:
        for a in bindings[i].value.args:
            for v in _operands(a):
                if v not in member_vars and not any(v.same_as(u) for u in inputs):
                    inputs.append(v)
    outputs = [bindings[i].var for i in members if bindings[i].var in used_after]
    params = [relax.Var(f"x{k}", expr_type(v)) for k, v in enumerate(inputs)]
    env = dict(zip(inputs, params))
    inner = relax.BlockBuilder()
    with inner.function(name, params, attrs={"Primitive": True}, private=True):
        with inner.dataflow():
            for i in members:
                call = bindings[i].value
                env[bindings[i].var] = inner.emit(
                    relax.Call(call.op, [_substitute(a, env) for a in call.args], call.attrs, call.ty_args))
            outs = [env[v] for v in outputs]
            ret = inner.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        inner.emit_func_output(ret)
    gv = bb.add_func(inner.get()[name], name)
    return gv, inputs, outputs


def _uses(expr) -> list:
    if isinstance(expr, relax.Call):
        return [v for a in expr.args for v in _var_args(a)]
    if isinstance(expr, relax.TupleGetItem):
        return _var_args(expr.tuple_value)
    return _var_args(expr)


def _results(group: set, exported) -> list[int]:
    return sorted(i for i in group if exported(i, group))


def _first_ops(group: set, producers: dict) -> list[int]:
    """The members that read no member."""
    return [i for i in group if not any(j in group for j in producers[i])]


def _schedulable(group: set, producers: dict, exported, wide) -> bool:
    """One result read outside; or one whole row (wide(i)) and per-row scalars, from a group with one first op
    (the row schedule then runs every op under that op's rows: compiler/passes/default_schedule.py)."""
    results = _results(group, exported)
    if len(results) <= 1:
        return True
    return len(_first_ops(group, producers)) == 1 and sum(1 for i in results if wide(i)) <= 1


def _split_results(members: list[int], producers: dict, exported, wide) -> list[list[int]]:
    """Split a group until it is `_schedulable`: a requantization's int8 row goes out with each row's exponent
    and zero point, which the next matmul reads; a second whole row read outside (LayerNorm's int16 output and
    the int64 residual a later group reads) would be written out in full, and a group with two first ops cannot
    run from one op's rows. The members the first result to cut depends on become a group of their own, ending
    in that result. Both parts stay convex (no path leaves a part and comes back) because the whole was."""
    member_set = set(members)
    if _schedulable(member_set, producers, exported, wide):
        return [members] if len(members) > 1 else []
    results = _results(member_set, exported)
    cuts = [i for i in results if wide(i)] if len(_first_ops(member_set, producers)) == 1 else results
    cut, stack = set(), [cuts[0]]
    while stack:  # the first result to cut and everything in the group it depends on
        i = stack.pop()
        if i not in cut:
            cut.add(i)
            stack += [j for j in producers[i] if j in member_set]
    head = [i for i in members if i in cut]
    tail = [i for i in members if i not in cut]
    return (_split_results(head, producers, exported, wide)
            + _split_results(tail, producers, exported, wide))


def _depends_on(i: int, members: set, producers: dict) -> bool:
    """Does binding i read a member's result, directly or through other bindings? (Bindings before the first
    member cannot lead to one.)"""
    first = min(members)
    stack, seen = list(producers[i]), set()
    while stack:
        j = stack.pop()
        if j in members:
            return True
        if j in seen or j < first:
            continue
        seen.add(j)
        stack += producers[j]
    return False


def _absorb_producers(mod, bindings, groups: list[list[int]], producers: dict, internal, schedulable,
                      wide) -> list[list[int]]:
    """Each group takes in the producers whose results only it reads (internal(i, group)), over the same rows,
    producer after producer: a single row op, another group whole (its results read by this group only), or
    the last op of another group that reads only that group's per-row scalars (the shift less a row's
    exponent: the other group then hands out the scalar, not a whole row computed from it). That is a per-row
    exponent's chain (the shift less the exponent, its floor at 1, the rounding constant) the greedy grouping
    left apart because the exponent's own group reads out to several consumers. A producer that reads a
    member's result through ops outside stays out (the group would depend on itself), and so does one that
    would leave either group not `schedulable`."""
    unit = {i: k for k, members in enumerate(groups) for i in members}  # binding -> the group holding it
    parts = [set(members) for members in groups]
    for k in range(len(parts)):
        group = parts[k]
        if not group:
            continue  # taken in by an earlier group
        key = _row_key(mod, bindings[max(group)])
        todo = list(group)
        while todo:
            for p in producers[todo.pop()]:
                if p in group:
                    continue
                own = parts[unit[p]] if p in unit else None
                options = [own if own is not None else {p}]
                if own is not None and len(own) > 1 and not any(wide(j) for j in producers[p] if j in own):
                    options.append({p})
                for taken in options:
                    merged = group | taken
                    if (any(_row_key(mod, bindings[i]) != key or not internal(i, merged) for i in taken)
                            or any(_depends_on(i, group, producers) for i in taken)
                            or not schedulable(merged) or own is not None and not schedulable(own - taken)):
                        continue
                    for i in taken:
                        unit[i] = k
                    group |= taken
                    todo += list(taken)
                    if own is not None:  # its group, whole, is empty now; or it lost its last op
                        own -= taken
                    break
        parts[k] = group
    return [sorted(g) for g in parts if len(g) > 1]


def _rewrite_block(bb, mod, block, later_uses: set, counter: list[int]):
    """The block with each group's bindings replaced by one call of its outlined function."""
    bindings = list(block.bindings)
    index = {b.var: i for i, b in enumerate(bindings)}
    producers = {i: [index[v] for v in _uses(b.value) if v in index] for i, b in enumerate(bindings)}
    readers: dict[int, set] = {}
    for i, js in producers.items():
        for j in js:
            readers.setdefault(j, set()).add(i)

    def exported(i: int, group: set) -> bool:
        return bindings[i].var in later_uses or bool(readers.get(i, set()) - group)

    def wide(i: int) -> bool:
        shape = _shape(bindings[i].var)
        return not shape or shape[-1] != 1

    groups = [part for members in group_bindings(mod, bindings)
              for part in _split_results(members, producers, exported, wide)]
    groups = _absorb_producers(mod, bindings, groups, producers, lambda i, g: not exported(i, g),
                               lambda g: _schedulable(g, producers, exported, wide), wide)
    if not groups:
        return block
    unit_of = {i: ("g", k) for k, members in enumerate(groups) for i in members}
    calls = {}
    for k, members in enumerate(groups):
        group = set(members)
        used_after = {bindings[i].var for i in members if exported(i, group)}
        name = f"fused_rows{counter[0]}"
        counter[0] += 1
        calls[k] = _outline(bb, bindings, members, used_after, name)
    # emit units in a topological order that keeps the original order where it can (Kahn, by first index)
    units = {}
    for i in range(len(bindings)):
        units.setdefault(unit_of.get(i, ("b", i)), []).append(i)
    produced_by = {bindings[i].var: u for u, idx in units.items() for i in idx}
    deps = {u: {produced_by[v] for i in idx for v in _uses(bindings[i].value)
                if v in produced_by and produced_by[v] != u} for u, idx in units.items()}
    waiting = {u: len(d) for u, d in deps.items()}
    users: dict = {}
    for u, d in deps.items():
        for p in d:
            users.setdefault(p, []).append(u)
    ready = [(units[u][0], u) for u, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    out, emitted = [], 0
    while ready:
        _, u = heapq.heappop(ready)
        emitted += 1
        if u[0] == "b":
            out.append(bindings[u[1]])
        else:
            gv, inputs, outputs = calls[u[1]]
            call = relax.Call(gv, inputs)
            if len(outputs) == 1:
                out.append(relax.VarBinding(outputs[0], call))
            else:
                tup = relax.DataflowVar(f"rows{u[1]}", relax.TupleType([expr_type(o) for o in outputs]))
                out.append(relax.VarBinding(tup, call))
                out += [relax.VarBinding(o, relax.TupleGetItem(tup, n)) for n, o in enumerate(outputs)]
        for v in users.get(u, []):
            waiting[v] -= 1
            if waiting[v] == 0:
                heapq.heappush(ready, (units[v][0], v))
    if emitted != len(units):  # a bug of group_bindings' cycle check, never a user's input
        raise RuntimeError("fuse_rows: the grouped bindings do not form a DAG")
    return relax.DataflowBlock(out)


def _vars_used_in(expr) -> set:
    return set(relax.analysis.free_vars(expr)) if expr is not None else set()


def fuse_rows(mod):
    """The module with row-wise groups outlined (see the module docstring); returns (module, groups made)."""
    mod = relax.transform.CanonicalizeBindings()(mod)  # an alias binding (y = x) would cut a chain in two
    bb = relax.BlockBuilder(mod)
    counter = [0]
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function) or (func.attrs is not None and func.attrs.get("Primitive")):
            continue
        body = func.body
        blocks = list(body.blocks)
        new_blocks = []
        for n, block in enumerate(blocks):
            if not isinstance(block, relax.DataflowBlock):
                new_blocks.append(block)
                continue
            later = _vars_used_in(body.body)
            for other in blocks[n + 1:]:
                for b in other.bindings:
                    later |= _vars_used_in(b.value)
            new_blocks.append(_rewrite_block(bb, mod, block, later, counter))
        new = relax.Function(func.params, relax.SeqExpr(new_blocks, body.body), func.ret_ty, func.is_pure,
                             func.attrs)
        bb.update_func(gv, new)
    out = bb.get()
    return relax.transform.Normalize()(out), counter[0]
