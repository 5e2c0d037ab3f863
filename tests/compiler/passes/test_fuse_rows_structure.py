"""fuse_rows, Before/Expected: on the legalized module (LegalizeOps + AnnotateTIROpPattern, as the build runs it),
a connected chain of row ops over the same rows (elementwise, a last-axis reduction with keepdims) becomes one
private `Primitive` function called from main; the kernels are untouched, only the grouping changes."""

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I, relax as R

from compiler.passes.fuse_rows import fuse_rows
from compiler.tvm_compat import BlockBuilder, tensor_type


def _legalized(mod):
    return tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern()])(mod)


def _with_main(bb, legal, main):
    """The expected module: bb's functions (the groups) with `main` (a BlockBuilder holding it) as legal's main."""
    bb.update_func(legal.get_global_var("main"), main.get()["main"])
    return relax.transform.Normalize()(bb.get())


def _main_calls_the_group(bb, legal, rows, extra=()):
    """The expected module: bb's functions, main(x) calling fused_rows0(x, *extra) and returning its result."""
    group = bb.get().get_global_var("fused_rows0")
    x = relax.Var("x", rows)
    main = BlockBuilder()
    with main.function("main", [x]):
        with main.dataflow():
            y = main.emit_output(relax.Call(group, [x, *extra]))
        main.emit_func_output(y)
    return _with_main(bb, legal, main)


def _max_subtract_sum_add_grouped(legal):
    """The expected module for the chain m = max(x), d = m - x, s = sum(d), y = d + s over (4, 8) int32 rows: one
    private Primitive function calling legal's four kernels, main calling it."""
    kernel = {name: legal.get_global_var(name) for name in ("max", "subtract", "sum", "add")}
    rows, row = tensor_type((4, 8), "int32"), tensor_type((4, 1), "int32")
    bb = BlockBuilder(legal)
    x0 = relax.Var("x0", rows)
    with bb.function("fused_rows0", [x0], attrs={"Primitive": True}, private=True):
        with bb.dataflow():
            m = bb.emit(relax.call_tir(kernel["max"], [x0], row))
            d = bb.emit(relax.call_tir(kernel["subtract"], [m, x0], rows))
            s = bb.emit(relax.call_tir(kernel["sum"], [d], row))
            y = bb.emit(relax.call_tir(kernel["add"], [d, s], rows))
            out = bb.emit_output(y)  # the group's result, bound once more as the dataflow's output
        bb.emit_func_output(out)
    return _main_calls_the_group(bb, legal, rows)


def test_a_row_chain_becomes_one_primitive_function():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((4, 8), "int32")):
            with R.dataflow():
                m = R.max(x, axis=[-1], keepdims=True)
                d = R.subtract(m, x)
                s = R.sum(d, axis=[-1], keepdims=True)
                y = R.add(d, s)
                R.output(y)
            return y

    legal = _legalized(Before)
    got, groups = fuse_rows(legal)
    assert groups == 1
    tvm.ir.assert_structural_equal(got, _max_subtract_sum_add_grouped(legal))


def test_an_alias_inside_a_chain_does_not_cut_it():
    """`a = d` (a binding of one variable to another, left by earlier passes between a requantization and the next
    matmul's token quantization) is resolved first: the chain on both sides of it is one group, as without it."""
    x = relax.Var("x", tensor_type((4, 8), "int32"))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            m = bb.emit(relax.op.max(x, axis=[-1], keepdims=True))
            d = bb.emit(relax.op.subtract(m, x))
            a = bb.emit(d)
            s = bb.emit(relax.op.sum(a, axis=[-1], keepdims=True))
            y = bb.emit_output(relax.op.add(a, s))
        bb.emit_func_output(y)
    legal = _legalized(bb.get())
    assert any(isinstance(b.value, relax.Var) for b in legal["main"].body.blocks[0].bindings)  # the alias is there
    got, groups = fuse_rows(legal)
    assert groups == 1
    tvm.ir.assert_structural_equal(got, _max_subtract_sum_add_grouped(legal))


def _add_reshape_multiply(shape, new_shape):
    """main(x) = r * r with r = reshape(x + x, new_shape), x int32 of ``shape``."""
    x = relax.Var("x", tensor_type(shape, "int32"))
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            r = bb.emit(relax.op.reshape(bb.emit(relax.op.add(x, x)), new_shape))
            y = bb.emit_output(relax.op.multiply(r, r))
        bb.emit_func_output(y)
    return bb.get()


def test_a_reshape_ends_the_rows_and_a_lone_op_is_left_to_fuse_ops():
    legal = _legalized(_add_reshape_multiply((4, 8), (8, 4)))
    got, groups = fuse_rows(legal)
    assert groups == 0
    tvm.ir.assert_structural_equal(got, legal)


def test_a_reshape_of_leading_unit_axes_stays_in_the_rows():
    """(1, 4, 8) -> (4, 8) moves no element between rows (the GEMMs' 2-D results and the graph's 3-D row ops meet
    so: GELU on (1, L, 1536), its requantization on (L, 1536)): the chain through it is one group, reshape
    included."""
    legal = _legalized(_add_reshape_multiply((1, 4, 8), (4, 8)))
    kernel = {name: legal.get_global_var(name) for name in ("add", "reshape", "multiply")}
    rows3, rows2 = tensor_type((1, 4, 8), "int32"), tensor_type((4, 8), "int32")
    want = BlockBuilder(legal)
    x0 = relax.Var("x0", rows3)
    with want.function("fused_rows0", [x0], attrs={"Primitive": True}, private=True):
        with want.dataflow():
            a = want.emit(relax.call_tir(kernel["add"], [x0, x0], rows3))
            r = want.emit(relax.call_tir(kernel["reshape"], [a], rows2))
            y = want.emit(relax.call_tir(kernel["multiply"], [r, r], rows2))
            out = want.emit_output(y)
        want.emit_func_output(out)
    x = relax.Var("x", rows3)
    main = BlockBuilder()
    with main.function("main", [x]):
        with main.dataflow():
            y = main.emit_output(relax.Call(want.get().get_global_var("fused_rows0"), [x]))
        main.emit_func_output(y)

    got, groups = fuse_rows(legal)
    assert groups == 1
    tvm.ir.assert_structural_equal(got, _with_main(want, legal, main))


def test_a_slice_within_each_row_joins_the_group():
    """The batch GEMM's scores padded to 16 lanes (40 keys in 48 columns) cut to the keys: the softmax after it
    reads the padded rows directly (no copy)."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((4, 16), "int32")):
            with R.dataflow():
                s = R.strided_slice(x, axes=[1], begin=[0], end=[10])
                m = R.max(s, axis=[-1], keepdims=True)
                y = R.subtract(s, m)
                R.output(y)
            return y

    legal = _legalized(Before)
    got, groups = fuse_rows(legal)
    assert groups == 1
    main = got["main"].body.blocks[0].bindings
    assert len(main) == 1 and got[main[0].value.op].attrs["Primitive"]  # main: one call of the group
    inner = [b.value.args[0].name_hint for b in got[main[0].value.op].body.blocks[0].bindings
             if isinstance(b.value, relax.Call)]
    assert inner == ["strided_slice", "max", "subtract"]


def test_a_row_scalar_against_a_channel_vector_joins_the_row_group():
    """shift (a constant per channel) - k (a per-row scalar) has no operand of its output's shape, yet it is a row
    op (the per-token exponent of a dynamic requantization): it joins the group of the reduction that made k."""
    shift = relax.const(np.arange(8, dtype=np.int32))
    rows, row = tensor_type((4, 8), "int32"), tensor_type((4, 1), "int32")
    x = relax.Var("x", rows)
    bb = BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            k = bb.emit(relax.op.max(x, axis=[-1], keepdims=True))
            e = bb.emit(relax.op.subtract(shift, k))
            y = bb.emit_output(relax.op.add(e, x))
        bb.emit_func_output(y)
    legal = _legalized(bb.get())
    kernel = {name: legal.get_global_var(name) for name in ("max", "subtract", "add")}
    want = BlockBuilder(legal)
    x0, x1 = relax.Var("x0", rows), relax.Var("x1", tensor_type((8,), "int32"))
    with want.function("fused_rows0", [x0, x1], attrs={"Primitive": True}, private=True):
        with want.dataflow():
            k = want.emit(relax.call_tir(kernel["max"], [x0], row))
            e = want.emit(relax.call_tir(kernel["subtract"], [x1, k], rows))
            y = want.emit(relax.call_tir(kernel["add"], [e, x0], rows))
            out = want.emit_output(y)
        want.emit_func_output(out)
    expected = _main_calls_the_group(want, legal, rows, (shift,))

    got, groups = fuse_rows(legal)
    assert groups == 1
    tvm.ir.assert_structural_equal(got, expected)


def test_a_group_takes_in_the_ops_only_it_reads():
    """k (a per-row max) feeds two groups through e1 = c1 - k and e2 = c2 - k. The greedy grouping puts k with e1
    (and e2 with its own consumer); the group {k, e1} would hand out the whole row e1, so y1's group takes e1 in
    (it reads only k, a per-row scalar, from its group: the only test of that step) and k stays a kernel of its
    own, read by both groups."""
    c = [relax.const(np.arange(8, dtype=np.int32) + i) for i in range(4)]
    rows, row = tensor_type((1, 8), "int32"), tensor_type((1, 1), "int32")
    x, z = relax.Var("x", rows), relax.Var("z", rows)
    bb = BlockBuilder()
    with bb.function("main", [x, z]):
        with bb.dataflow():
            k = bb.emit(relax.op.max(x, axis=[-1], keepdims=True))
            a = bb.emit(relax.op.multiply(z, c[3]))
            e1 = bb.emit(relax.op.subtract(c[1], k))
            y1 = bb.emit(relax.op.add(a, e1))
            e2 = bb.emit(relax.op.subtract(c[2], k))
            b = bb.emit(relax.op.multiply(z, c[0]))
            y2 = bb.emit(relax.op.add(b, e2))
            out = bb.emit_output(relax.Tuple([y1, y2]))
        bb.emit_func_output(out)
    legal = _legalized(bb.get())
    kern = [b.value.args[0] for b in legal["main"].body.blocks[0].bindings[:7]]  # k, a, e1, y1, e2, b, y2

    want = BlockBuilder(legal)
    p = [relax.Var(f"x{i}", t) for i, t in enumerate((rows, tensor_type((8,), "int32"), tensor_type((8,), "int32"),
                                                       row))]
    with want.function("fused_rows0", p, attrs={"Primitive": True}, private=True):  # a, e1, y1
        with want.dataflow():
            ga = want.emit(relax.call_tir(kern[1], [p[0], p[1]], rows))
            ge = want.emit(relax.call_tir(kern[2], [p[2], p[3]], rows))
            gy = want.emit_output(want.emit(relax.call_tir(kern[3], [ga, ge], rows)))
        want.emit_func_output(gy)
    q = [relax.Var(f"x{i}", t) for i, t in enumerate((tensor_type((8,), "int32"), row, rows,
                                                       tensor_type((8,), "int32")))]
    with want.function("fused_rows1", q, attrs={"Primitive": True}, private=True):  # e2, b, y2
        with want.dataflow():
            ge = want.emit(relax.call_tir(kern[4], [q[0], q[1]], rows))
            gb = want.emit(relax.call_tir(kern[5], [q[2], q[3]], rows))
            gy = want.emit_output(want.emit(relax.call_tir(kern[6], [gb, ge], rows)))
        want.emit_func_output(gy)
    g0, g1 = (want.get().get_global_var(f"fused_rows{i}") for i in (0, 1))
    xm, zm = relax.Var("x", rows), relax.Var("z", rows)
    main = BlockBuilder()
    with main.function("main", [xm, zm]):
        with main.dataflow():
            k = main.emit(relax.call_tir(kern[0], [xm], row))
            y1 = main.emit(relax.Call(g0, [zm, c[3], c[1], k]))
            y2 = main.emit(relax.Call(g1, [c[2], k, zm, c[0]]))
            out = main.emit_output(relax.Tuple([y1, y2]))
        main.emit_func_output(out)
    expected = _with_main(want, legal, main)

    got, groups = fuse_rows(legal)
    assert groups == 2
    tvm.ir.assert_structural_equal(got, expected)


def test_per_row_results_read_outside_stay_in_the_group():
    """A row's max read outside beside the row minus it (a per-row quantization's shift and codes, both read by
    the next matmul): one group with two results, main taking them from its tuple."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((4, 8), "int32")):
            with R.dataflow():
                m = R.max(x, axis=[-1], keepdims=True)
                d = R.subtract(x, m)
                out = (d, m)
                R.output(out)
            return out

    legal = _legalized(Before)
    kernel = {name: legal.get_global_var(name) for name in ("max", "subtract")}
    rows, row = tensor_type((4, 8), "int32"), tensor_type((4, 1), "int32")
    bb = BlockBuilder(legal)
    x0 = relax.Var("x0", rows)
    with bb.function("fused_rows0", [x0], attrs={"Primitive": True}, private=True):
        with bb.dataflow():
            m = bb.emit(relax.call_tir(kernel["max"], [x0], row))
            d = bb.emit(relax.call_tir(kernel["subtract"], [x0, m], rows))
            out = bb.emit_output(relax.Tuple([m, d]))
        bb.emit_func_output(out)
    group = bb.get().get_global_var("fused_rows0")
    x = relax.Var("x", rows)
    main = BlockBuilder()
    with main.function("main", [x]):
        with main.dataflow():
            both = main.emit(relax.Call(group, [x]))
            mm = main.emit(relax.TupleGetItem(both, 0))
            dd = main.emit(relax.TupleGetItem(both, 1))
            out = main.emit_output(relax.Tuple([dd, mm]))
        main.emit_func_output(out)
    expected = _with_main(bb, legal, main)

    got, groups = fuse_rows(legal)
    assert groups == 1
    tvm.ir.assert_structural_equal(got, expected)


def test_two_whole_rows_read_outside_split_the_group():
    """a = x + x and b = a * a both read outside: a group would write two whole rows (LayerNorm's output and the
    int64 residual a later group reads), so it splits at a; each part is a lone op, left to FuseOps."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((4, 8), "int32")):
            with R.dataflow():
                a = R.add(x, x)
                b = R.multiply(a, a)
                out = (a, b)
                R.output(out)
            return out

    legal = _legalized(Before)
    got, groups = fuse_rows(legal)
    assert groups == 0
    tvm.ir.assert_structural_equal(got, relax.transform.Normalize()(legal))
