"""Store a bucket's length-dependent constants once: each bucket reads a slice of the largest bucket's.

A ranged library's bucket functions (compiler/ranged.py) share their weights (the VM's constant pool keeps one
copy of structurally equal constants), but a constant whose shape follows the length, such as the position
embeddings of positions 0..L-1 folded into the graph, differs between buckets: every bucket stored its own
(for MiniLM 384 int64 values a position: 3.3 MB for the sixteen buckets 8, 16, ..., 128).

Expects: an integer Relax module with the bucket functions named in `names`, of sizes `buckets` (one dict of
ranged-dim sizes each), the last the largest in every dim.
Guarantees: every constant of a smaller bucket with one axis whose size is that bucket's size of a ranged dim,
and equal to the first entries along that axis of a constant of the largest bucket (the same shape otherwise),
is replaced by a ``strided_slice`` of the largest bucket's constant: the same values, stored once; the largest
bucket reads such a constant through a slice of its whole extent, so the bucket functions keep one sequence of
operations. Constants whose largest-bucket form is below `MIN_BYTES` stay (a slice may cost a kernel; a small
constant costs less), in every bucket alike.
"""

from __future__ import annotations

import numpy as np

from compiler.tvm_compat import PyExprMutator, constant_value, expr_functor_mutator, relax

MIN_BYTES = 4096


def _constants(func) -> list:
    """(constant, its NumPy value) of every constant of a Relax function (each value read once)."""
    found = []

    def visit(e):
        value = constant_value(e)
        if value is not None:
            found.append((e, value))

    relax.analysis.post_order_visit(func, visit)
    return found


@expr_functor_mutator
class _Slice(PyExprMutator):
    def __init__(self, mod, plan: dict):
        super().__init__(mod)
        self.plan = plan  # a constant -> (largest bucket's constant, axis, size, ranged dim)

    def visit_generic_const_(self, const):
        found = self.plan.get(const)
        if found is None:
            return const
        source, axis, size, _ = found
        return self.builder_.emit(relax.op.strided_slice(source, axes=[axis], begin=[0], end=[size]),
                                  name_hint="bucket_const")


def share_bucket_constants(mod, buckets: list[dict[str, int]], names: list[str]):
    """The module with the smaller buckets' length-dependent constants sliced from the largest bucket's;
    returns (module, bytes no longer stored)."""
    if len(buckets) < 2:
        return mod, 0
    top = buckets[-1]
    by_shape: dict = {}
    for c, value in _constants(mod[names[-1]]):
        if value.nbytes >= MIN_BYTES:
            by_shape.setdefault((value.shape, str(value.dtype)), []).append((c, value))
    saved = 0
    plans: dict = {}
    for bucket, name in zip(buckets[:-1], names[:-1]):
        plan = {}
        for c, value in _constants(mod[name]):
            match = _match(value, bucket, top, by_shape)  # whatever its size here: every bucket slices alike
            if match is not None:
                plan[c] = match
                saved += value.nbytes
        plans[name] = plan
    # the largest bucket slices its own constants whole, so every bucket function keeps the same sequence of
    # operations (share_buckets pairs their kernels call site by call site)
    plans[names[-1]] = {c: (c, axis, top[var], var) for c, axis, var in _sliced_axes(plans, names[:-1])}
    out = mod
    for name, plan in plans.items():
        if plan:
            mutator = _Slice(out, plan)
            gv = out.get_global_var(name)
            mutator.builder_.update_func(gv, mutator.visit_expr(out[gv]))
            out = mutator.builder_.get()
    return out, saved


def _sliced_axes(plans: dict, smaller: list[str]):
    """(largest bucket's constant, axis, ranged dim) of every slice the smaller buckets take."""
    seen = []
    for name in smaller:
        for source, axis, _, var in plans[name].values():
            if not any(source.same_as(c) and axis == a for c, a, _ in seen):
                seen.append((source, axis, var))
    return seen


def _match(value: np.ndarray, bucket: dict, top: dict, by_shape: dict):
    for var, size in bucket.items():
        if size == top[var]:
            continue
        for axis, dim in enumerate(value.shape):
            if dim != size:
                continue
            shape = list(value.shape)
            shape[axis] = top[var]
            for c, big in by_shape.get((tuple(shape), str(value.dtype)), []):
                if np.array_equal(np.take(big, np.arange(size), axis=axis), value):
                    return c, axis, size, var
    return None
