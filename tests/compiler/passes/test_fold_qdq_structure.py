"""FoldQDQ, Before/Expected: `quantize(dequantize(x, s, z), s, z)` to x's dtype becomes x; any other pair stays.

The pass replaces the quantize by x and leaves the dequantize for dead-code elimination (it may have other users),
so the Expected modules keep it."""

import tvm
from tvm.script import ir as I, relax as R

from compiler.passes.fold_qdq import FoldQDQ


def test_identical_round_trip_becomes_the_integer_tensor():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((4,), "int8")) -> R.Tensor((4,), "int8"):
            with R.dataflow():
                d = R.dequantize(x, R.const(0.5, "float32"), R.const(3, "int8"), axis=-1, out_dtype="float32")
                q = R.quantize(d, R.const(0.5, "float32"), R.const(3, "int8"), axis=-1, out_dtype="int8")
                y = R.add(q, q)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((4,), "int8")) -> R.Tensor((4,), "int8"):
            with R.dataflow():
                # the dequantize stays (dead-code elimination removes it)
                d = R.dequantize(x, R.const(0.5, "float32"), R.const(3, "int8"), axis=-1,  # noqa: F841
                                 out_dtype="float32")
                q = x
                y = R.add(q, q)
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(FoldQDQ()(Before), Expected)


def test_other_scale_zero_point_or_dtype_stays():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((4,), "int8")):
            with R.dataflow():
                d = R.dequantize(x, R.const(0.5, "float32"), R.const(3, "int8"), axis=-1, out_dtype="float32")
                q1 = R.quantize(d, R.const(0.25, "float32"), R.const(3, "int8"), axis=-1, out_dtype="int8")
                q2 = R.quantize(d, R.const(0.5, "float32"), R.const(4, "int8"), axis=-1, out_dtype="int8")
                q3 = R.quantize(d, R.const(0.5, "float32"), R.const(3, "int8"), axis=-1, out_dtype="uint8")
                y = (q1, q2, q3)
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(FoldQDQ()(Before), Before)
