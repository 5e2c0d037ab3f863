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


def _main_calls_the_group(bb, legal, rows, extra=()):
    """The expected module: bb's functions, main(x) calling fused_rows0(x, *extra) and returning its result."""
    group = bb.get().get_global_var("fused_rows0")
    x = relax.Var("x", rows)
    main = BlockBuilder()
    with main.function("main", [x]):
        with main.dataflow():
            y = main.emit_output(relax.Call(group, [x, *extra]))
        main.emit_func_output(y)
    bb.update_func(legal.get_global_var("main"), main.get()["main"])
    return relax.transform.Normalize()(bb.get())


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
    expected = _main_calls_the_group(bb, legal, rows)

    got, groups = fuse_rows(legal)
    assert groups == 1
    tvm.ir.assert_structural_equal(got, expected)


def test_a_reshape_ends_the_rows_and_a_lone_op_is_left_to_fuse_ops():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((4, 8), "int32")):
            with R.dataflow():
                a = R.add(x, x)
                r = R.reshape(a, (8, 4))
                y = R.multiply(r, r)
                R.output(y)
            return y

    legal = _legalized(Before)
    got, groups = fuse_rows(legal)
    assert groups == 0
    tvm.ir.assert_structural_equal(got, legal)



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
