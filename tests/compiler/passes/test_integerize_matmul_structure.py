"""IntegerizeMatmul, Before/Expected: dequantize(quantize(matmul(dequantize(a), dequantize(b) | W) [+ bias])) becomes
an int8 x int8 -> int32 matmul, the zero-point terms, the bias in int32 at the accumulator's scale, and a
fixed-point requantization to int16 (int64 multiply by an int32 mantissa, rounding shift, zero point, clip), then
a dequantize for the float ops that follow. The constants below are derived from the docstring's formulas with
the NumPy oracle (compiler/intmath/fixed_point.py). Dead-code elimination runs after the pass: the replaced
float bindings are left for it."""

import numpy as np
import tvm
from tvm.script import ir as I, relax as R

from compiler.intmath.fixed_point import quantize_multiplier, quantize_multipliers
from compiler.passes.integerize_matmul import OUT_REFINE, OUTPUT_HEADROOM, IntegerizeMatmul
from compiler.tvm_compat import dead_code_elimination

F32 = np.float32
SA, ZA, SB, SO, ZO = 0.05, -7, 0.02, 0.3, 11
OUT_STEPS = OUT_REFINE // OUTPUT_HEADROOM  # the result is returned: 16x its int8 range, steps 16x finer
S_OUT, Z_OUT = float(F32(SO)) / OUT_STEPS, ZO * OUT_STEPS


def _integerize(mod):
    return dead_code_elimination()(IntegerizeMatmul()(mod))


def test_activation_matmul_with_runtime_zero_point_term():
    m0, shift = quantize_multiplier(float(F32(SA)) * float(F32(SB)) / S_OUT)

    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((2, 4, 8), "int8"), b: R.Tensor((2, 8, 3), "int8")):
            with R.dataflow():
                x = R.dequantize(a, R.const(SA, "float32"), R.const(ZA, "int8"), axis=-1, out_dtype="float32")
                y = R.dequantize(b, R.const(SB, "float32"), R.const(0, "int8"), axis=-1, out_dtype="float32")
                mm = R.matmul(x, y)
                q = R.quantize(mm, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="int8")
                out = R.dequantize(q, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="float32")
                R.output(out)
            return out

    @I.ir_module
    class Expected:
        @R.function
        def main(a: R.Tensor((2, 4, 8), "int8"), b: R.Tensor((2, 8, 3), "int8")):
            with R.dataflow():
                acc = R.matmul(a, b, out_dtype="int32")
                # sum_k (a - za) b = a.b - za * (column sums of b), at run time: b varies
                colsum = R.sum(R.astype(b, "int32"), axis=[-2], keepdims=True)
                acc = R.subtract(acc, R.multiply(colsum, R.const(ZA, "int32")))
                wide = R.multiply(R.astype(acc, "int64"), R.const(m0, "int64"))
                shifted = R.right_shift(R.add(wide, R.const(1 << (shift - 1), "int64")), R.const(shift, "int64"))
                codes = R.astype(R.clip(R.add(shifted, R.const(Z_OUT, "int64")), -32768, 32767), "int16")
                out = R.dequantize(codes, R.const(S_OUT, "float32"), R.const(Z_OUT, "int16"), axis=-1,
                                   out_dtype="float32")
                R.output(out)
            return out

    tvm.ir.assert_structural_equal(_integerize(Before), Expected)


def test_weight_matmul_with_bias():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3)).astype(F32)
    bias = np.array([0.5, -1.0, 0.25], F32)
    # symmetric int8 per output channel (the last axis)
    ws = (np.max(np.abs(w), axis=0) / F32(127)).astype(F32)
    wq = np.clip(np.round(w / ws), -127, 127).astype(np.int8)
    colsum = wq.astype(np.int64).sum(axis=0, keepdims=True) * ZA  # a constant: W is
    acc_scale = float(F32(SA)) * ws.astype(np.float64)
    q_bias = np.round(bias / acc_scale)
    m0, shift = quantize_multipliers(acc_scale / S_OUT)  # per channel

    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((4, 8), "int8")):
            with R.dataflow():
                x = R.dequantize(a, R.const(SA, "float32"), R.const(ZA, "int8"), axis=-1, out_dtype="float32")
                mm = R.matmul(x, R.const(w))
                biased = R.add(mm, R.const(bias))
                q = R.quantize(biased, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="int8")
                out = R.dequantize(q, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="float32")
                R.output(out)
            return out

    @I.ir_module
    class Expected:
        @R.function
        def main(a: R.Tensor((4, 8), "int8")):
            with R.dataflow():
                acc = R.matmul(a, R.const(wq), out_dtype="int32")
                acc = R.subtract(acc, R.const(colsum, "int32"))
                acc = R.add(acc, R.const(q_bias, "int32"))
                wide = R.multiply(R.astype(acc, "int64"), R.const(m0, "int64"))
                shifted = R.right_shift(R.add(wide, R.const(np.left_shift(np.int64(1), shift - 1), "int64")),
                                       R.const(shift, "int64"))
                codes = R.astype(R.clip(R.add(shifted, R.const(Z_OUT, "int64")), -32768, 32767), "int16")
                out = R.dequantize(codes, R.const(S_OUT, "float32"), R.const(Z_OUT, "int16"), axis=-1,
                                   out_dtype="float32")
                R.output(out)
            return out

    tvm.ir.assert_structural_equal(_integerize(Before), Expected)


def test_matmul_without_a_quantized_result_stays():
    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((4, 8), "float32")):
            with R.dataflow():
                y = R.matmul(a, R.const(np.ones((8, 3), "float32")))
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(IntegerizeMatmul()(Before), Before)


def test_residual_projection_requantizes_to_int32():
    """A constant-weight matmul whose result an add reads (the residual stream) keeps its calibrated range in
    int32, 2**23 times finer than int8, instead of int16."""
    from compiler.passes.integerize_matmul import WIDE_REFINE
    from compiler.passes.intops import quantize_weight

    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5) / 7
    wq, ws = quantize_weight(w)
    s_out, z_out = float(F32(SO)) / WIDE_REFINE, ZO * WIDE_REFINE
    m0, shift = quantize_multipliers(float(F32(SA)) * ws.astype(np.float64) / s_out)
    if np.all(shift == shift.flat[0]):
        shift = shift.flat[0]
    colsum = wq.astype(np.int64).sum(axis=0, keepdims=True) * ZA

    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((2, 4), "int8"), r: R.Tensor((2, 3), "float32")):
            with R.dataflow():
                x = R.dequantize(a, R.const(SA, "float32"), R.const(ZA, "int8"), axis=-1, out_dtype="float32")
                mm = R.matmul(x, R.const(w))
                q = R.quantize(mm, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="int8")
                y = R.dequantize(q, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="float32")
                out = R.add(y, r)
                R.output(out)
            return out

    @I.ir_module
    class Expected:
        @R.function
        def main(a: R.Tensor((2, 4), "int8"), r: R.Tensor((2, 3), "float32")):
            with R.dataflow():
                acc = R.matmul(a, R.const(wq), out_dtype="int32")
                acc = R.subtract(acc, R.const(colsum.astype(np.int32), "int32"))
                wide = R.multiply(R.astype(acc, "int64"), R.const(m0, "int64"))
                bias = np.left_shift(np.int64(1), np.asarray(shift, np.int64) - 1)
                shifted = R.right_shift(R.add(wide, R.const(bias, "int64")), R.const(shift, "int64"))
                codes = R.astype(R.clip(R.add(shifted, R.const(z_out, "int64")), -(2 ** 31), 2 ** 31 - 1), "int32")
                y = R.dequantize(codes, R.const(s_out, "float32"), R.const(z_out, "int32"), axis=-1,
                                 out_dtype="float32")
                out = R.add(y, r)
                R.output(out)
            return out

    tvm.ir.assert_structural_equal(_integerize(Before), Expected)


def test_row_scales_leave_layernorm_outputs_static():
    """With row_scales, the activation (here a tanh island) of a constant-weight matmul is quantized per row at
    run time (one row min: a `relax.min`), a LayerNorm's output keeps its calibrated scale."""
    w = (np.arange(16, dtype=np.float32).reshape(4, 4) - 7.5) / 9
    g, b = np.ones(4, np.float32), np.zeros(4, np.float32)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 4), "float32")):
            with R.dataflow():
                ln = R.nn.layer_norm(x, R.const(g), R.const(b), axes=[-1])
                q1 = R.quantize(ln, R.const(0.03, "float32"), R.const(0, "int8"), axis=-1, out_dtype="int8")
                d1 = R.dequantize(q1, R.const(0.03, "float32"), R.const(0, "int8"), axis=-1, out_dtype="float32")
                m1 = R.matmul(d1, R.const(w))
                o1 = R.quantize(m1, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="int8")
                p1 = R.dequantize(o1, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="float32")
                t = R.tanh(p1)
                q2 = R.quantize(t, R.const(0.01, "float32"), R.const(0, "int8"), axis=-1, out_dtype="int8")
                d2 = R.dequantize(q2, R.const(0.01, "float32"), R.const(0, "int8"), axis=-1, out_dtype="float32")
                m2 = R.matmul(d2, R.const(w))
                o2 = R.quantize(m2, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="int8")
                out = R.dequantize(o2, R.const(SO, "float32"), R.const(ZO, "int8"), axis=-1, out_dtype="float32")
                R.output(out)
            return out

    p = IntegerizeMatmul(row_scales=True)
    text = dead_code_elimination()(p(Before)).script()
    assert p.rewritten == 2 and p.row_scaled == 1
    assert text.count("R.min(") == 1 and text.count("R.matmul(") == 2
    static = IntegerizeMatmul()
    assert "R.min(" not in dead_code_elimination()(static(Before)).script() and static.row_scaled == 0
