"""add_dispatch (compiler/ranged.py), Before/Expected: a module holding one function per bucket gets a `main` that
checks the shape is inside the ranges, takes the smallest bucket that holds it, zero-pads the ranged axes of the
inputs up to the bucket, calls the bucket's function and slices the ranged axes of the outputs back."""

import tvm
from tvm import relax
from tvm.script import ir as I, relax as R

from compiler.config import TensorSpec
from compiler.ranged import add_dispatch, add_length_params, length_arg
from compiler.tvm_compat import prim_type, tir_script as T

SEQ = ((1, 1, 4, "seq"),)  # axis 1 of x and y: any size in 1..4, named seq


@I.ir_module
class Before:
    @R.function
    def main_2(x: R.Tensor((1, 2), "int8")) -> R.Tensor((1, 2), "int32"):
        y = R.astype(x, "int32")
        return y

    @R.function
    def main_4(x: R.Tensor((1, 4), "int8")) -> R.Tensor((1, 4), "int32"):
        y = R.astype(x, "int32")
        return y


@I.ir_module
class Expected:
    @R.function
    def main_2(x: R.Tensor((1, 2), "int8")) -> R.Tensor((1, 2), "int32"):
        y = R.astype(x, "int32")
        return y

    @R.function
    def main_4(x: R.Tensor((1, 4), "int8")) -> R.Tensor((1, 4), "int32"):
        y = R.astype(x, "int32")
        return y

    @T.prim_func(s_tir=True)
    def intformer_pad_int8_2(src_h: T.handle, padded: T.Buffer((1, 2), "int8")):
        T.func_attr({"tirx.noalias": True})
        n1 = T.int64()
        src = T.match_buffer(src_h, (1, n1), "int8")
        for i0, i1 in T.grid(1, 2):
            with T.sblock("padded"):
                v_i0, v_i1 = T.axis.remap("SS", [i0, i1])
                T.reads(src[v_i0, v_i1])
                T.writes(padded[v_i0, v_i1])
                padded[v_i0, v_i1] = T.if_then_else(v_i0 < 1 and T.Cast("int64", v_i1) < n1, src[v_i0, v_i1],
                                                    T.int8(0))

    @T.prim_func(s_tir=True)
    def intformer_pad_int8_4(src_h: T.handle, padded: T.Buffer((1, 4), "int8")):
        T.func_attr({"tirx.noalias": True})
        n1 = T.int64()
        src = T.match_buffer(src_h, (1, n1), "int8")
        for i0, i1 in T.grid(1, 4):
            with T.sblock("padded"):
                v_i0, v_i1 = T.axis.remap("SS", [i0, i1])
                T.reads(src[v_i0, v_i1])
                T.writes(padded[v_i0, v_i1])
                padded[v_i0, v_i1] = T.if_then_else(v_i0 < 1 and T.Cast("int64", v_i1) < n1, src[v_i0, v_i1],
                                                    T.int8(0))

    @T.prim_func(s_tir=True)
    def intformer_slice_int32_2(src: T.Buffer((1, 2), "int32"), sliced_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n1 = T.int64()
        sliced = T.match_buffer(sliced_h, (1, n1), "int32")
        for i0, i1 in T.grid(1, n1):
            with T.sblock("sliced"):
                v_i0 = T.axis.spatial(1, i0)
                v_i1 = T.axis.spatial((0, n1), i1)
                T.reads(src[v_i0, v_i1])
                T.writes(sliced[v_i0, v_i1])
                sliced[v_i0, v_i1] = src[v_i0, v_i1]

    @T.prim_func(s_tir=True)
    def intformer_slice_int32_4(src: T.Buffer((1, 4), "int32"), sliced_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n1 = T.int64()
        sliced = T.match_buffer(sliced_h, (1, n1), "int32")
        for i0, i1 in T.grid(1, n1):
            with T.sblock("sliced"):
                v_i0 = T.axis.spatial(1, i0)
                v_i1 = T.axis.spatial((0, n1), i1)
                T.reads(src[v_i0, v_i1])
                T.writes(sliced[v_i0, v_i1])
                sliced[v_i0, v_i1] = src[v_i0, v_i1]

    @R.function(pure=False)  # it asserts the range
    def main(x: R.Tensor((1, "seq"), "int8")) -> R.Tensor((1, "seq"), "int32"):
        seq = T.int64()
        cls = Expected
        R.assert_op(R.prim_value(T.And(seq >= 1, seq <= 4)),
                    format=R.str("input shape outside the compiled ranges seq=1..4"))
        if R.prim_value(seq <= 2):
            x_padded = R.call_tir(cls.intformer_pad_int8_2, (x,), out_ty=R.Tensor((1, 2), "int8"))
            result: R.Tensor((1, 2), "int32") = cls.main_2(x_padded)
            y_sliced = R.call_tir(cls.intformer_slice_int32_2, (result,), out_ty=R.Tensor((1, seq), "int32"))
            chosen0 = y_sliced
        else:
            x_padded = R.call_tir(cls.intformer_pad_int8_4, (x,), out_ty=R.Tensor((1, 4), "int8"))
            result: R.Tensor((1, 4), "int32") = cls.main_4(x_padded)
            y_sliced = R.call_tir(cls.intformer_slice_int32_4, (result,), out_ty=R.Tensor((1, seq), "int32"))
            chosen0 = y_sliced
        return chosen0


def test_main_pads_to_the_smallest_bucket_that_holds_the_input_and_slices_back():
    inputs = (TensorSpec("x", (1, 4), "int8", ranges=SEQ),)
    outputs = (TensorSpec("y", (1, 4), "int32", ranges=SEQ),)
    after = add_dispatch(Before, inputs, outputs, [{"seq": 2}, {"seq": 4}])
    tvm.ir.assert_structural_equal(after, Expected)


@I.ir_module
class WithLength:
    @R.function
    def main_2(x: R.Tensor((1, 2), "int8"), length: R.Prim("int64")) -> R.Tensor((1, 2), "int32"):
        y = R.astype(x, "int32")
        return y

    @R.function
    def main_4(x: R.Tensor((1, 4), "int8"), length: R.Prim("int64")) -> R.Tensor((1, 4), "int32"):
        y = R.astype(x, "int32")
        return y


def test_one_ranged_dim_the_buckets_take_the_length_and_main_passes_it():
    """add_length_params: each bucket function gains `length` (its GEMMs then compute only the input's rows,
    passes/lower_int_matmul.py); the dispatching `main` passes the input's size along the ranged dim."""
    inputs = (TensorSpec("x", (1, 4), "int8", ranges=SEQ),)
    outputs = (TensorSpec("y", (1, 4), "int32", ranges=SEQ),)
    mod, active = add_length_params(Before, [{"seq": 2}, {"seq": 4}])
    for name, size in (("main_2", 2), ("main_4", 4)):
        tvm.ir.assert_structural_equal(mod[name], WithLength[name])
        assert active[name][0] == size and active[name][1].same_as(mod[name].params[-1])
    after = add_dispatch(mod, inputs, outputs, [{"seq": 2}, {"seq": 4}])
    seq = after["main"].params[0].ty.shape.values[1]
    calls = []
    relax.analysis.post_order_visit(after["main"], lambda e: calls.append(e) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.GlobalVar) else None)
    assert sorted(c.op.name_hint for c in calls) == ["main_2", "main_4"]
    for c in calls:
        assert c.args[-1].same_as(seq)  # a PrimValue is the TIR expression itself in 0.27


def test_two_ranged_dims_keep_the_bucket_functions():
    """Batch and length both ranged: the rows holding input are not a prefix of the GEMMs' rows; no change."""
    mod, active = add_length_params(Before, [{"batch": 1, "seq": 2}, {"batch": 1, "seq": 4}])
    assert mod is Before and active == {}


def test_only_gemms_over_the_buckets_rows_take_the_length():
    var = relax.Var("length", prim_type("int64"))
    assert length_arg((8, var), (1, 8, 32)) is var  # (batch 1, seq 8, hidden): the length along M
    assert length_arg((8, var), (8, 32)) is var
    assert length_arg((8, var), (2, 8, 32)) is None  # two sequences: the input's rows are not a prefix
    assert length_arg((8, var), (1, 32)) is None  # pooled rows
    assert length_arg(None, (1, 8, 32)) is None  # a function without the length parameter


def _buckets_with_gemms(fixed_rows: int):
    """main_8 / main_16: a GEMM over the bucket's rows, and one over `fixed_rows` rows in both."""
    import numpy as np

    from compiler.tvm_compat import BlockBuilder, const, tensor_type

    w = const(np.ones((4, 4), np.int8), "int8")
    bb = BlockBuilder()
    for size in (8, 16):
        x = relax.Var("x", tensor_type((size, 4), "int8"))
        y = relax.Var("y", tensor_type((fixed_rows, 4), "int8"))
        with bb.function(f"main_{size}", [x, y]):
            a = bb.emit(relax.op.matmul(x, w, out_dtype="int32"))
            b = bb.emit(relax.op.matmul(y, w, out_dtype="int32"))
            bb.emit_func_output(relax.Tuple([a, b]))
    return bb.get()


def test_no_length_when_a_fixed_gemm_matches_one_buckets_size():
    """A GEMM of 8 fixed rows (a batch of 8 pooled rows, say) in the 8 bucket is not along the length: the
    buckets count different numbers of GEMMs over their own size, and no function takes the length."""
    buckets = [{"seq": 8}, {"seq": 16}]
    mod, active = add_length_params(_buckets_with_gemms(8), buckets)
    assert active == {} and len(mod["main_8"].params) == 2
    mod, active = add_length_params(_buckets_with_gemms(3), buckets)
    assert sorted(active) == ["main_16", "main_8"] and len(mod["main_8"].params) == 3
