"""PropagateScales, Before/Expected: a tensor travels as (integer tensor, scale, zero point); data movement and
positive scalar multiplies change only the scale, `quantize` becomes a fixed-point requantization, and the head
rules (compiler/passes/head_rules.py) make a masked sum an exact int64 product and sum. Each rewritten op leaves
a float view (a dequantize) for consumers without an integer rule; dead-code elimination removes the unused
ones, so it runs after the pass here."""

import numpy as np
import tvm
from tvm.script import ir as I, relax as R

from compiler.intmath.fixed_point import quantize_multiplier
from compiler.passes.propagate_scales import PropagateScales
from compiler.tvm_compat import dead_code_elimination

F32 = np.float32
S, Z, K, S2, Z2 = 0.05, -7, 0.125, 0.01, 3


def _propagate(mod):
    return dead_code_elimination()(PropagateScales()(mod))


def test_moves_and_scalar_multiply_change_only_the_scale_then_one_requantize():
    # quantize(0.125 * S * (x - Z), S2, Z2): one fixed-point multiply by 0.125 * S / S2 with x's zero point
    # folded into the rounding constant (intops.emit_requantize)
    m0, sh = quantize_multiplier(float(F32(S)) * K / float(F32(S2)))
    rounding = (1 << (sh - 1)) - Z * m0

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "int8")):
            with R.dataflow():
                d = R.dequantize(x, R.const(S, "float32"), R.const(Z, "int8"), axis=-1, out_dtype="float32")
                t = R.permute_dims(R.reshape(d, (4, 4)), [1, 0])
                y = R.multiply(t, R.const(K, "float32"))
                q = R.quantize(y, R.const(S2, "float32"), R.const(Z2, "int8"), axis=-1, out_dtype="int8")
                R.output(q)
            return q

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 8), "int8")):
            with R.dataflow():
                t = R.permute_dims(R.reshape(x, (4, 4)), [1, 0])
                v = R.add(R.multiply(R.astype(t, "int64"), R.const(m0, "int64")), R.const(rounding, "int64"))
                v = R.add(R.right_shift(v, R.const(sh, "int64")), R.const(Z2, "int64"))
                codes = R.astype(R.clip(v, -128, 127), "int8")
                q = codes  # the pass returns the new expression's var for the quantize call
                R.output(q)
            return q

    tvm.ir.assert_structural_equal(_propagate(Before), Expected)


def test_head_rule_masked_sum_is_an_exact_integer_product_and_sum():
    """head_rules: an integer mask cast to float is the mask at scale 1; x * mask is the int64 product of
    (x - Z) and the mask; its sum an int64 sum at x's scale. The returned value is its float view."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4, 8), "int8"), mask: R.Tensor((1, 4, 1), "int64")):
            with R.dataflow():
                d = R.dequantize(x, R.const(S, "float32"), R.const(Z, "int8"), axis=-1, out_dtype="float32")
                w = R.astype(mask, "float32")
                s = R.sum(R.multiply(d, w), axis=[1])
                R.output(s)
            return s

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 4, 8), "int8"), mask: R.Tensor((1, 4, 1), "int64")):
            with R.dataflow():
                centered = R.subtract(R.astype(x, "int64"), R.const(Z, "int64"))
                total = R.sum(R.multiply(centered, mask), axis=[1], keepdims=False)
                # the float view casts the int64 sum to int32 (materialize: no check of the sum's bound)
                view = R.dequantize(R.astype(total, "int32"), R.const(S, "float32"), R.const(0, "int32"), axis=-1,
                                    out_dtype="float32")
                s = view
                R.output(s)
            return s

    tvm.ir.assert_structural_equal(_propagate(Before), Expected)


def test_add_rescales_both_sides_to_the_finer_scale_in_int64():
    s_fine = float(F32(S2))  # int16 operand at 0.01; the int8 one (0.05) is brought to it
    m0, sh = quantize_multiplier(float(F32(S)) / s_fine)

    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((2, 8), "int8"), b: R.Tensor((2, 8), "int16")):
            with R.dataflow():
                da = R.dequantize(a, R.const(S, "float32"), R.const(Z, "int8"), axis=-1, out_dtype="float32")
                db = R.dequantize(b, R.const(S2, "float32"), R.const(0, "int16"), axis=-1, out_dtype="float32")
                y = R.add(da, db)
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(a: R.Tensor((2, 8), "int8"), b: R.Tensor((2, 8), "int16")):
            with R.dataflow():
                xa = R.subtract(R.astype(a, "int64"), R.const(Z, "int64"))
                xa = R.add(R.multiply(xa, R.const(m0, "int64")), R.const(1 << (sh - 1), "int64"))
                xa = R.right_shift(xa, R.const(sh, "int64"))
                total = R.add(xa, R.astype(b, "int64"))  # b is at the finer scale already: multiplier 1
                view = R.dequantize(R.astype(total, "int32"), R.const(s_fine, "float32"), R.const(0, "int32"),
                                    axis=-1, out_dtype="float32")
                y = view
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(_propagate(Before), Expected)
