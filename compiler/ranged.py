"""Ranged input dims (`--input-shape input_ids=1x1..128`): one library that takes every shape in the ranges.

Design (length buckets): the model is compiled at a few sizes of each ranged dim (the buckets), each as a
Relax function of ONE module, so the VM's constant pool keeps one copy of every weight (it deduplicates
structurally equal constants across functions; the int8 weights of every bucket are equal because one
calibration table serves them all). The library's `main` takes the inputs at any shape inside the ranges,
picks the smallest bucket that holds them, pads every ranged axis with zeros up to the bucket (a zero attention
mask hides the padded keys, so real positions are unchanged), calls the bucket and slices each output back.

Expects: the inputs' TensorSpecs with `ranges` (compiler/frontend/shapes.py). Guarantees: bucket sizes that
cover each range (the largest is HI), bucket function names, the outputs' ranged axes, and the dispatching
`main` added to a scheduled module.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace

import numpy as np

from compiler.config import DimRange, TensorSpec
from compiler.errors import IntformerError

# default sizes of a ranged dim: steps of 8 up to 48 (where most sentences end), of 16 up to 96, then 128, 192, 256,
# 384, ... (each at most 1.5x the one before), then HI. A bucket costs its VM code (its kernels are shared with the
# other buckets'), about 0.22 MB for all-MiniLM-L6-v2 (see README "One library for every length": the measurement
# and the size budget)
DEFAULT_STEPS = (8, 16, 24, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


@dataclass(frozen=True)
class Bucket:
    """One compiled size of every ranged dim (one bucket function of the library), in the ranges' order."""

    sizes: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, sizes: dict[str, int]) -> Bucket:
        return cls(tuple(sizes.items()))

    def as_dict(self) -> dict[str, int]:
        return dict(self.sizes)


def has_ranges(input_shapes) -> bool:
    return any(isinstance(d, DimRange) for _, dims in input_shapes for d in dims)


def range_vars(specs) -> dict[str, tuple[int, int]]:
    """variable -> (lo, hi), in first-seen order."""
    out: dict[str, tuple[int, int]] = {}
    for s in specs:
        for _, lo, hi, var in s.ranges:
            out.setdefault(var, (lo, hi))
    return out


def default_sizes(lo: int, hi: int) -> tuple[int, ...]:
    sizes = [s for s in DEFAULT_STEPS if lo <= s < hi]
    if not sizes and lo < hi:
        sizes = [lo] if hi <= 8 else [max(lo, hi // 2)]  # at least two sizes: the slice needs to see the axis move
    return tuple(sizes) + (hi,)


def bucket_sizes(specs, given=()) -> dict[str, tuple[int, ...]]:
    """variable -> sorted sizes compiled (`given`: (variable, sizes) from --buckets; HI always included)."""
    given = dict(given)
    out = {}
    for var, (lo, hi) in range_vars(specs).items():
        if var in given:
            bad = [s for s in given[var] if not lo <= s <= hi]
            if bad:
                raise IntformerError(f"--buckets {var}: sizes {bad} are outside its range {lo}..{hi}")
            sizes = tuple(sorted(set(given[var]) | {hi}))
            if len(sizes) < 2 and lo < hi:
                sizes = default_sizes(lo, hi)
        else:
            sizes = default_sizes(lo, hi)
        out[var] = sizes
    unknown = [v for v in given if v not in out]
    if unknown:
        raise IntformerError(f"--buckets names {unknown}, but the ranged dims are {list(out)}")
    return out


def buckets(sizes: dict[str, tuple[int, ...]]) -> list[dict[str, int]]:
    """Every combination of sizes, smallest volume first (the dispatch takes the first that fits)."""
    names = list(sizes)
    combos = [dict(zip(names, c)) for c in itertools.product(*(sizes[n] for n in names))]
    vol = lambda b: (_prod(b.values()), tuple(b.values()))  # noqa: E731
    return sorted(combos, key=vol)


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def bucket_name(bucket: dict[str, int]) -> str:
    return "main_" + "x".join(str(v) for v in bucket.values())


def concrete_shape(spec: TensorSpec, bucket: dict[str, int]) -> tuple[int, ...]:
    shape = list(spec.shape)
    for a, _, _, var in spec.ranges:
        shape[a] = bucket[var]
    return tuple(shape)


def concrete_shapes(specs, bucket) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((s.name, concrete_shape(s, bucket)) for s in specs)


def output_specs(per_bucket: list[tuple[dict[str, int], tuple[TensorSpec, ...]]]) -> tuple[TensorSpec, ...]:
    """The outputs with their ranged axes: an axis whose size follows one variable's size across every bucket.
    The largest bucket's shape is the spec's shape."""
    top_bucket, top = max(per_bucket, key=lambda bo: _prod(bo[0].values()))
    lows = {}
    for b, _ in per_bucket:
        for v, n in b.items():
            lows[v] = min(lows.get(v, n), n)
    out = []
    for i, spec in enumerate(top):
        ranges = []
        for a in range(len(spec.shape)):
            sizes = [outs[i].shape[a] for _, outs in per_bucket]
            if len(set(sizes)) == 1:
                continue
            match = [v for v in top_bucket if all(outs[i].shape[a] == b[v] for b, outs in per_bucket)]
            if len(match) != 1:
                raise IntformerError(f"output '{spec.name}' axis {a} changes with the ranged input dims in a way "
                                     "intformer cannot slice (it is not one ranged dim); compile fixed shapes")
            ranges.append((a, 1, top_bucket[match[0]], match[0]))
        out.append(replace(spec, ranges=tuple(ranges)))
    return tuple(out)


def with_input_lows(outputs, inputs) -> tuple[TensorSpec, ...]:
    """Output ranges start where the inputs' do."""
    lo = {var: lo for var, (lo, _) in range_vars(inputs).items()}
    return tuple(replace(o, ranges=tuple((a, lo.get(v, l0), hi, v) for a, l0, hi, v in o.ranges)) for o in outputs)


def require_mask(specs) -> None:
    """Padding a sequence is exact only where the model masks the padded keys: a ranged dim must be a dim of
    an attention-mask input when it is not the batch (axis 0)."""
    masks = [s for s in specs if "mask" in s.name.lower()]
    masked = {var for s in masks for _, _, _, var in s.ranges}
    for s in specs:
        for a, lo, hi, var in s.ranges:
            if a != 0 and var not in masked:
                raise IntformerError(f"--input-shape {s.name}: dim {a} has the range {lo}..{hi}, but no attention "
                                     "mask input shares it; the library pads that dim, which is exact only when a "
                                     "mask hides the padding. Give the mask the same range (or a fixed shape)")


def pick_bucket(specs, feed: dict, bucket_list) -> dict[str, int]:
    """The smallest bucket holding the feed's shapes (what the library's `main` picks)."""
    size = {}
    for s in specs:
        for a, lo, hi, var in s.ranges:
            n = int(np.shape(feed[s.name])[a])
            if not lo <= n <= hi:
                raise IntformerError(f"input '{s.name}' dim {a} is {n}, outside the compiled range {lo}..{hi}")
            size[var] = n
    for b in bucket_list:
        if all(size[v] <= n for v, n in b.items()):
            return b
    raise IntformerError(f"no compiled bucket holds {size}")


def pad_feed(specs, feed: dict, bucket) -> dict:
    """NumPy twin of the library's padding: zeros up to the bucket on every ranged axis."""
    out = {}
    for s in specs:
        a = np.asarray(feed[s.name])
        out[s.name] = np.pad(a, [(0, t - n) for n, t in zip(a.shape, concrete_shape(s, bucket))]) if s.ranges else a
    return out


def slice_outputs(outputs, values, sizes: dict[str, int]) -> list:
    """NumPy twin of the library's slicing: each ranged output axis back to the input's size."""
    out = []
    for spec, v in zip(outputs, values):
        idx = [slice(None)] * np.ndim(v)
        for a, _, _, var in spec.ranges:
            idx[a] = slice(0, sizes[var])
        out.append(np.asarray(v)[tuple(idx)])
    return out


def input_sizes(specs, feed) -> dict[str, int]:
    return {var: int(np.shape(feed[s.name])[a]) for s in specs for a, _, _, var in s.ranges}


def link(mods: dict):
    """One module holding each bucket's integer `main` under its bucket name (the functions' types recorded on
    their global vars, so `main` can call them)."""
    from compiler.tvm_compat import BlockBuilder

    bb = BlockBuilder()
    for name, mod in mods.items():
        others = [gv.name_hint for gv in mod.functions if gv.name_hint != "main"]
        if others:
            raise IntformerError(f"{name}: cannot link a module with functions besides main: {others}")
        bb.add_func(mod["main"].with_attr("global_symbol", name), name)
    return bb.get()


LENGTH_PARAM = "length"  # a bucket function's last parameter when it computes only the input's rows


def add_length_params(mod, bucket_list) -> tuple[object, dict]:
    """One ranged dim: each bucket function gains an int64 parameter ``length`` (the input's size along that
    dim, which the dispatching `main` passes) -> (module, {function name: (bucket size, that parameter)}) for
    the GEMM lowering (passes/lower_int_matmul.py: a GEMM over exactly the bucket's rows computes only the
    input's first rows). Several ranged dims (a batch range too): the rows that hold input are not a prefix;
    nor when the buckets do not have as many GEMMs over their own size (a fixed row count equal to one
    bucket's size); no change then."""
    from compiler.tvm_compat import BlockBuilder, prim_type, relax, with_param

    names = {k for b in bucket_list for k in b}
    if len(names) != 1 or len({_rows_of_length(mod[bucket_name(b)], next(iter(b.values())))
                                for b in bucket_list}) != 1:
        return mod, {}
    active, funcs = {}, {}
    for b in bucket_list:
        name = bucket_name(b)
        var = relax.Var(LENGTH_PARAM, prim_type("int64"))
        funcs[name] = with_param(mod[name], var)
        active[name] = (next(iter(b.values())), var)
    # a new module: the global vars record the functions' types, and the dispatch's calls are checked against them
    bb = BlockBuilder()
    for gv, func in mod.functions.items():
        bb.add_func(funcs.get(gv.name_hint, func), gv.name_hint)
    out = bb.get()
    for key, value in (mod.attrs or {}).items():
        out = out.with_attr(key, value)
    return out, active


def _rows_of_length(func, length: int) -> int:
    """How many constant-weight int8 matmuls of `func` run over exactly `length` rows. Equal in every bucket when
    those rows follow the ranged dim; a matmul whose rows are fixed (a batch of 8 pooled rows, say) counts in
    the one bucket of its size only, and then no GEMM is given the length."""
    from compiler.tvm_compat import constant_value, relax, tensor_info, tvm

    matmul = tvm.ir.Op.get("relax.matmul")
    count = [0]

    def visit(e):
        if isinstance(e, relax.Call) and e.op.same_as(matmul):
            dtype, shape = tensor_info(e.args[0])
            if dtype == "int8" and shape and _flat_rows(shape) == length and constant_value(e.args[1]) is not None:
                count[0] += 1

    relax.analysis.post_order_visit(func, visit)
    return count[0]


def length_arg(current, a_shape):
    """The length argument of a GEMM whose activation is `a_shape` in a bucket function with `current` =
    (B, its length parameter), or None: only a GEMM over exactly B rows (the ranged dim flattened into M with
    no other dim above 1) computes just the input's first rows; other row counts (several sequences, pooled
    rows) keep every row. add_length_params gives no function a length when a GEMM's rows equal a bucket's
    size by chance (its count of such GEMMs differs between buckets)."""
    if current is None or a_shape is None:
        return None
    length, var = current
    return var if _flat_rows(a_shape) == length else None


def _flat_rows(shape) -> int:
    """The rows of a GEMM's activation: every dim but the last, flattened."""
    return int(np.prod([int(d) for d in shape[:-1]]))


def _add_kernel(bb, func, name):
    return bb.add_func(func.with_attr("global_symbol", name), name)


# ---- the dispatching `main` -------------------------------------------------------------------------------
def add_dispatch(mod, inputs, outputs, bucket_list):
    """Add `main` to `mod` (which holds one function per bucket, named by bucket_name): any shape in the
    ranges -> the smallest bucket that fits, inputs zero-padded to it, outputs sliced back. `main` is well formed
    (impure: it asserts the range; one binding block, so TVMScript prints it) and its types keep the ranged dims'
    variables (tests/compiler/passes/test_ranged_dispatch_structure.py)."""
    from compiler.tvm_compat import BlockBuilder, expr_type, relax, te, tensor_type, tirx

    syms = {var: tirx.Var(re.sub(r"\W", "_", var), "int64") for var in range_vars(inputs)}

    def sym_shape(spec):
        ranged = {a: var for a, _, _, var in spec.ranges}
        return [syms[ranged[a]] if a in ranged else d for a, d in enumerate(spec.shape)]

    params = [relax.Var(s.name, tensor_type(sym_shape(s), s.dtype)) for s in inputs]
    bb = BlockBuilder(mod)

    def pad_func(spec, bucket):
        src_shape = [tirx.Var(f"n{a}", "int64") if a in {r[0] for r in spec.ranges} else d
                     for a, d in enumerate(spec.shape)]
        dst_shape = concrete_shape(spec, bucket)
        A = te.placeholder(src_shape, spec.dtype, name="src")

        def body(*idx):
            inside = tirx.all(*[i < n for i, n in zip(idx, src_shape)])
            return tirx.if_then_else(inside, A(*idx), tirx.const(0, spec.dtype))

        B = te.compute(dst_shape, body, name="padded")
        return _add_kernel(bb, te.create_prim_func([A, B]), f"intformer_pad_{spec.dtype}_{bucket_name(bucket)[5:]}")

    def slice_func(spec, bucket):
        src_shape = concrete_shape(spec, bucket)
        dst_shape = [tirx.Var(f"n{a}", "int64") if a in {r[0] for r in spec.ranges} else d
                     for a, d in enumerate(spec.shape)]
        A = te.placeholder(src_shape, spec.dtype, name="src")
        B = te.compute(dst_shape, lambda *idx: A(*idx), name="sliced")
        return _add_kernel(bb, te.create_prim_func([A, B]), f"intformer_slice_{spec.dtype}_{bucket_name(bucket)[5:]}")

    def branch(bucket):
        bindings = []

        def bind(name, expr):
            expr = bb.normalize(expr)
            v = relax.Var(name, expr_type(expr))
            bindings.append(relax.VarBinding(v, expr))
            return v

        args = []
        for p, s in zip(params, inputs):
            if s.ranges:
                gv = pad_func(s, bucket)
                out = tensor_type(concrete_shape(s, bucket), s.dtype)
                args.append(bind(f"{s.name}_padded", relax.call_tir(gv, [p], out)))
            else:
                args.append(p)
        callee = mod[bucket_name(bucket)]
        if len(callee.params) == len(args) + 1 and callee.params[-1].name == LENGTH_PARAM:
            args.append(relax.prim_value(syms[next(iter(bucket))]))  # add_length_params
        res = bind("result", relax.Call(mod.get_global_var(bucket_name(bucket)), args))
        outs = []
        for i, s in enumerate(outputs):
            o = bind(f"out{i}", relax.TupleGetItem(res, i)) if len(outputs) > 1 else res
            if s.ranges:
                gv = slice_func(s, bucket)
                o = bind(f"{s.name}_sliced", relax.call_tir(gv, [o], tensor_type(sym_shape(s), s.dtype)))
            outs.append(o)
        ret = bind("ret", relax.Tuple(outs)) if len(outputs) > 1 else outs[0]
        return relax.SeqExpr([relax.BindingBlock(bindings)], ret)

    def fits(bucket):
        return tirx.all(*[syms[v] <= n for v, n in bucket.items()])

    lo_hi = range_vars(inputs)
    inside = tirx.all(*[tirx.all(syms[v] >= lo, syms[v] <= hi) for v, (lo, hi) in lo_hi.items()])
    msg = "input shape outside the compiled ranges " + ", ".join(f"{v}={lo}..{hi}" for v, (lo, hi) in lo_hi.items())
    # in main's scope, so that the types keep the ranged dims' variables; impure: it asserts
    with bb.function("main", params, pure=False):
        bb.emit(relax.op.assert_op(relax.prim_value(inside), format=msg), name_hint="in_range")
        body = branch(bucket_list[-1])
        for k, bucket in enumerate(reversed(bucket_list[:-1])):
            choice = bb.normalize(relax.If(relax.prim_value(fits(bucket)), branch(bucket), body))
            v = relax.Var(f"chosen{k}", expr_type(choice))
            body = relax.SeqExpr([relax.BindingBlock([relax.VarBinding(v, choice)])], v)
        for b in body.blocks[0].bindings:
            bb.emit_normalized(b)
        bb.emit_func_output(body.body)
    return bb.get()
