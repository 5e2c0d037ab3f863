"""Emitters for the integer building blocks in Relax, shared by the passes.

Each emitter has its NumPy twin in :mod:`compiler.intmath` and produces the same bits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tvm import relax

from compiler.intmath.fixed_point import quantize_multipliers
from compiler.tvm_compat import const, tensor_info

if TYPE_CHECKING:  # the constants' records (imported where used, as the emitters do)
    from compiler.intmath import integer_ops as io

R = relax.op


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (the last axis): (w_q int8, scales float32 of shape (N,))."""
    w = np.asarray(w, dtype=np.float32)
    absmax = np.max(np.abs(w.reshape(-1, w.shape[-1])), axis=0)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale


def emit_qmatmul(bb, a_q, za: int, b_q, zb: int, b_value: np.ndarray | None):
    """int32 sum_k (a - za)(b - zb): one int8 x int8 -> int32 matmul plus zero-point corrections,
    constant when the operand is constant."""
    acc = bb.emit(R.matmul(a_q, b_q, out_dtype="int32"))
    _, a_shape = tensor_info(a_q)
    k = a_shape[-1]
    if za != 0:
        if b_value is not None:
            colsum = b_value.astype(np.int64).sum(axis=-2, keepdims=True) * za
            acc = bb.emit(R.subtract(acc, const(colsum, "int32")))
        else:
            cs = bb.emit(R.sum(R.astype(b_q, "int32"), axis=[-2], keepdims=True))
            acc = bb.emit(R.subtract(acc, bb.emit(R.multiply(cs, const(za, "int32")))))
    if zb != 0:
        rs = bb.emit(R.sum(R.astype(a_q, "int32"), axis=[-1], keepdims=True))
        acc = bb.emit(R.subtract(acc, bb.emit(R.multiply(rs, const(zb, "int32")))))
        if za != 0:
            acc = bb.emit(R.add(acc, const(k * za * zb, "int32")))
    return acc


def emit_requantize(bb, acc, multiplier: np.ndarray, zero_point: int, out_dtype: str = "int8", in_zp: int = 0):
    """Integer -> int8/int16 by a fixed-point multiply and a rounding right shift (half up), no float arithmetic:
    ((acc - in_zp) * m0 + 2**(shift-1)) >> shift + zero_point, computed as acc * m0 + (2**(shift-1) - in_zp * m0)
    (the same int64 values: the input zero point joins the rounding constant, and the product keeps a
    sign-extended narrow operand, one vpmuldq instead of a 64-bit vpmullq).

    ``multiplier`` is the real scale ratio, scalar or per channel along the last axis.
    """
    m0, shift = quantize_multipliers(np.asarray(multiplier, dtype=np.float64))
    if m0.ndim and np.all(shift == shift.flat[0]):
        shift = shift.flat[0]
    x = _i64(bb, acc)
    x = bb.emit(R.multiply(x, const(m0, "int64")))
    bias = np.left_shift(np.int64(1), np.asarray(shift, np.int64) - 1)
    if in_zp:
        bias = bias - np.int64(in_zp) * np.asarray(m0, np.int64)
    x = bb.emit(R.add(x, const(bias, "int64")))
    x = bb.emit(R.right_shift(x, const(shift, "int64")))
    if zero_point:
        x = bb.emit(R.add(x, const(zero_point, "int64")))
    info = np.iinfo(out_dtype)
    x = bb.emit(R.clip(x, int(info.min), int(info.max)))
    return bb.emit(R.astype(x, out_dtype))


def emit_row_quantize(bb, x):
    """int16 codes -> (int8 codes, int32 per-row shifts k, int32 per-row zero points z): intmath.row_quantize."""
    from compiler.intmath import integer_ops as io

    x = bb.emit(R.astype(x, "int32"))
    hi = bb.emit(R.max(x, axis=[-1], keepdims=True))
    lo = bb.emit(R.min(x, axis=[-1], keepdims=True))
    above = bb.emit(R.greater(bb.emit(R.subtract(hi, lo)),
                              const(np.array(io.ROW_SPAN_THRESHOLDS, np.int32), "int32")))
    k = bb.emit(R.sum(bb.emit(R.astype(above, "int32")), axis=[-1], keepdims=True))
    half = bb.emit(R.right_shift(bb.emit(R.left_shift(const(1, "int32"), k)), const(1, "int32")))
    z = bb.emit(R.add(bb.emit(R.right_shift(bb.emit(R.add(lo, half)), k)), const(io.ROW_ZERO_OFFSET, "int32")))
    q = bb.emit(R.subtract(bb.emit(R.right_shift(bb.emit(R.add(x, half)), k)), z))
    return bb.emit(R.astype(bb.emit(R.clip(q, -128, 127)), "int8")), k, z


def emit_requantize_rows(bb, acc, m0: np.ndarray, shift: np.ndarray, k, z, colsum: np.ndarray, bias: np.ndarray,
                         zero_point: int, out_dtype: str = "int16"):
    """int32 accumulators of row-quantized inputs -> int8/int16: intmath.requantize_rows, (m0, shift) from
    intmath.row_multipliers (per column, for k = 0), ``colsum`` the weights' column sums, ``bias`` at the output
    scale."""
    zc = bb.emit(R.multiply(bb.emit(R.astype(z, "int64")), const(np.asarray(colsum, np.int64), "int64")))
    x = bb.emit(R.add(_i64(bb, acc), zc))  # per row x per column: the GEMM epilogue's "outer" operand
    x = bb.emit(R.multiply(x, const(m0, "int64")))
    x = bb.emit(R.left_shift(x, bb.emit(R.astype(k, "int64"))))  # per row: the GEMM epilogue's "row" operand
    shift = np.asarray(shift, np.int64)
    x = bb.emit(R.add(x, const(np.left_shift(np.int64(1), shift - 1), "int64")))
    x = bb.emit(R.right_shift(x, const(shift, "int64")))
    x = bb.emit(R.add(x, const(np.asarray(bias, np.int64) + np.int64(zero_point), "int64")))
    info = np.iinfo(out_dtype)
    return bb.emit(R.astype(bb.emit(R.clip(x, int(info.min), int(info.max))), out_dtype))


def emit_gather_rows(bb, codes: np.ndarray, mult: np.ndarray, idx):
    """int32 rows of a row-scaled table (intmath.row_scaled_table) at its fine scale: intmath.gather_rows. The ids
    are clipped into the table (one min and max per id): an id the caller did not check reads a row, never memory
    outside the table."""
    c = bb.emit(R.astype(bb.emit(R.take(const(codes, "int8"), idx, axis=0, mode="clip")), "int32"))
    m = bb.emit(R.astype(bb.emit(R.take(const(mult.reshape(-1, *([1] * (codes.ndim - 1))), "int16"), idx,
                                        axis=0, mode="clip")), "int32"))
    return bb.emit(R.multiply(c, m))


# ---- integer nonlinearities (NumPy twins in compiler/intmath/integer_ops.py) -----------------------------
def _i64(bb, x):
    from compiler.tvm_compat import tensor_info

    return x if tensor_info(x)[0] == "int64" else bb.emit(R.astype(x, "int64"))


def _wide_difference(bb, x, scale):
    """max - x over the last axis: in int32 for 8/16-bit inputs and for int32 ones clipped to +-2**30 first
    (intmath.row_input) when every scale allows it (one, or one per head), else in int64. (A value's bound does not
    help here: masked scores lie outside it.)"""
    from compiler.intmath import integer_ops as io

    dtype = tensor_info(x)[0]
    if dtype in ("int8", "int16", "uint8"):
        x = bb.emit(R.astype(x, "int32"))
    elif dtype == "int32" and all(io.int32_input_ok(s) for s in np.atleast_1d(scale)):
        x = bb.emit(R.clip(x, -io.INT32_INPUT_CLIP, io.INT32_INPUT_CLIP - 1))
    elif dtype != "int64":
        x = bb.emit(R.astype(x, "int64"))
    return bb.emit(R.subtract(bb.emit(R.max(x, axis=[-1], keepdims=True)), x))


def emit_softmax(bb, x, scale, fine: bool = False, out_scale: float | None = None, out_zp: int | None = None,
                 out_dtype: str | None = None):
    """Integer softmax over the last axis -> int8 (scale 1/255, zero point -128), with `fine` int32 codes of
    p * 65535, or (out_scale, out_zp, out_dtype); see intmath.isoftmax. ``scale``: the input's, or one per head
    for x (heads, rows, keys) (each head equals isoftmax at its own scale; the output scale is shared)."""
    from compiler.intmath import integer_ops as io

    out_scale, out_zp, out_dtype = io.softmax_output(fine, out_scale, out_zp, out_dtype)
    i32 = lambda v: const(v, "int32")  # noqa: E731
    c = io.exp_constants(scale) if np.ndim(scale) == 0 else [io.exp_constants(s) for s in scale]
    e = emit_exp_q15(bb, _wide_difference(bb, x, scale), c)
    s = _exp_row_sum(bb, e)
    k = io.softmax_recip_bits(out_scale)
    one = const(1, "int64")
    recip = bb.emit(R.floor_divide(bb.emit(R.add(bb.emit(R.right_shift(s, one)),
                                                 const(int(round(2.0 ** k / out_scale)), "int64"))), s))
    q = bb.emit(R.multiply(e, bb.emit(R.astype(recip, "int32"))))
    q = bb.emit(R.right_shift(bb.emit(R.add(q, i32(1 << (k - 1)))), i32(k)))
    if out_zp:
        q = bb.emit(R.add(q, i32(out_zp)))
    info = np.iinfo(out_dtype)
    if info.min > np.iinfo("int32").min or info.max < np.iinfo("int32").max:
        q = bb.emit(R.clip(q, int(info.min), int(info.max)))
    return q if out_dtype == "int32" else bb.emit(R.astype(q, out_dtype))


def _exp_row_sum(bb, e):
    """int64 row sums of Q15 exps: summed in int32 while a row cannot overflow it (fewer than 2**16 entries)."""
    from compiler.intmath import integer_ops as io

    if tensor_info(e)[1][-1] * io.EXP_MAX > io.INT32_MAX:
        e = bb.emit(R.astype(e, "int64"))
    return _i64(bb, bb.emit(R.sum(e, axis=[-1], keepdims=True)))


def emit_horner(bb, u, coefs: tuple, frac_bits: int):
    """int32 polynomial of u in fixed point, lowest degree first (intmath.horner)."""
    i32 = lambda v: const(v, "int32")  # noqa: E731
    h = i32(coefs[-1])
    for coef in reversed(coefs[:-1]):
        h = bb.emit(R.add(bb.emit(R.right_shift(bb.emit(R.multiply(h, u)), i32(frac_bits))), i32(coef)))
    return h


def emit_exp_q15(bb, d, c):
    """exp(-d * scale) in Q15 as int32, for d >= 0 (int32 or int64) (intmath.iexp_q15; c from exp_constants, or a
    list of them, one per head of d (heads, rows, keys): each broadcast as (heads, 1, 1))."""
    from compiler.intmath import integer_ops as io

    cs = [c] if isinstance(c, io.ExpConstants) else list(c)

    def field(name, dt):
        values = [getattr(x, name) for x in cs]
        return const(values[0] if len(cs) == 1 else np.array(values).reshape(-1, 1, 1), dt)

    dtype = tensor_info(d)[0]
    if any(x.pre for x in cs):
        d = bb.emit(R.right_shift(d, field("pre", dtype)))
    d = bb.emit(R.minimum(d, field("d_cap", dtype)))
    if dtype != "int32":
        d = bb.emit(R.astype(d, "int32"))
    i32 = lambda v: const(v, "int32")  # noqa: E731
    t = bb.emit(R.right_shift(bb.emit(R.multiply(d, field("m", "int32"))), field("s", "int32")))
    z = bb.emit(R.minimum(bb.emit(R.right_shift(t, i32(io.EXP_FRAC_BITS))), i32(io.EXP_ZERO_SHIFT)))
    f = bb.emit(R.bitwise_and(t, i32((1 << io.EXP_FRAC_BITS) - 1)))
    return bb.emit(R.right_shift(emit_horner(bb, f, io.EXP_POLY_Q15, io.EXP_FRAC_BITS), z))


def emit_gelu(bb, x, zp: int, c: io.GeluConstants):
    """int32 codes of GELU in units of scale / 2**14 for an 8/16-bit x (intmath.igelu; c from gelu_constants)."""
    from compiler.intmath import integer_ops as io

    i32 = lambda v: const(v, "int32")  # noqa: E731
    a = bb.emit(R.astype(x, "int32"))
    if zp:
        a = bb.emit(R.subtract(a, i32(zp)))
    t = bb.emit(R.maximum(a, bb.emit(R.negative(a))))  # |a| (topi's abs compares in int64)
    w = bb.emit(R.right_shift(t, i32(c.pre))) if c.pre else t
    w = bb.emit(R.minimum(w, i32(c.t_cap)))
    u = bb.emit(R.right_shift(bb.emit(R.multiply(w, i32(c.m))), i32(io.GELU_MUL_SHIFT)))
    g = bb.emit(R.maximum(emit_horner(bb, u, io.GELU_POLY_Q14, io.GELU_FRAC_BITS), i32(0)))
    g2 = bb.emit(R.right_shift(bb.emit(R.multiply(g, g)), i32(io.GELU_FRAC_BITS)))
    phi = bb.emit(R.right_shift(bb.emit(R.multiply(g2, g2)), i32(io.GELU_FRAC_BITS)))
    pos = bb.emit(R.left_shift(bb.emit(R.maximum(a, i32(0))), i32(io.GELU_FRAC_BITS)))
    return bb.emit(R.subtract(pos, bb.emit(R.multiply(t, phi))))


def emit_bit_length(bb, n, max_bits: int):
    """Bits of int64 0 <= n < 2**max_bits by the binary search of intmath.bit_length."""
    i64 = lambda v: const(v, "int64")  # noqa: E731
    bits, v = None, n
    for sh in (32, 16, 8, 4, 2, 1):
        step = bb.emit(R.multiply(bb.emit(R.astype(bb.emit(R.greater(bb.emit(R.right_shift(v, i64(sh))), i64(0))),
                                                   "int64")), i64(sh)))
        bits = step if bits is None else bb.emit(R.add(bits, step))
        v = bb.emit(R.right_shift(v, step))
    return bb.emit(R.add(bits, bb.emit(R.astype(bb.emit(R.greater(v, i64(0))), "int64"))))


def emit_log_softmax(bb, x, scale: float):
    """Integer log-softmax over the last axis in the input's units (intmath.ilog_softmax): int32 when the
    differences and the log-sum-exp fit there (8/16-bit logits), else int64."""
    from compiler.intmath import integer_ops as io

    c = io.log_softmax_constants(scale)
    i64 = lambda v: const(v, "int64")  # noqa: E731
    n = tensor_info(x)[1][-1]
    d = _wide_difference(bb, x, scale)
    s = bb.emit(R.left_shift(_exp_row_sum(bb, emit_exp_q15(bb, d, c.exp)), i64(io.LOG2_FRAC_BITS)))
    bits = emit_bit_length(bb, s, io.LOG_SUM_BITS)
    idx = bb.emit(R.right_shift(s, bb.emit(R.subtract(bits, i64(1 + io.LOG2_TABLE_BITS)))))
    idx = bb.emit(R.subtract(idx, i64(1 << io.LOG2_TABLE_BITS)))
    log2q = bb.emit(R.left_shift(bb.emit(R.subtract(bits, i64(32))), i64(io.LOG2_FRAC_BITS)))
    log2q = bb.emit(R.add(log2q, bb.emit(R.take(const(c.log2, "int64"), idx, axis=0))))
    lse = bb.emit(R.right_shift(bb.emit(R.add(bb.emit(R.multiply(log2q, i64(c.m0))), i64(1 << (c.sh - 1)))),
                                i64(c.sh)))
    dtype = tensor_info(d)[0]
    if dtype == "int32" and io.log_softmax_bound(n, scale, difference_bound(x, scale)) > io.INT32_MAX:
        d, dtype = bb.emit(R.astype(d, "int64")), "int64"
    if dtype != "int64":
        lse = bb.emit(R.astype(lse, dtype))
    return bb.emit(R.subtract(bb.emit(R.negative(d)), lse))


def difference_bound(x, scale: float) -> int:
    """An upper bound of max - x along a row, by the input's type (int32 inputs as _wide_difference clips them)."""
    from compiler.intmath import integer_ops as io

    dtype = tensor_info(x)[0]
    if dtype == "int32" and io.int32_input_ok(scale):
        return 2 * io.INT32_INPUT_CLIP - 1
    info = np.iinfo(dtype)
    return int(info.max) - int(info.min)


def emit_mul(bb, a, za: int, b, zb: int, shift: int):
    """int64 (a - za)(b - zb) >> shift, rounded half up (intmath.imul)."""
    a, b = _i64(bb, a), _i64(bb, b)
    if za:
        a = bb.emit(R.subtract(a, const(za, "int64")))
    if zb:
        b = bb.emit(R.subtract(b, const(zb, "int64")))
    v = bb.emit(R.multiply(a, b))
    if shift:
        v = bb.emit(R.right_shift(bb.emit(R.add(v, const(1 << (shift - 1), "int64"))), const(shift, "int64")))
    return v


def emit_pow2(bb, e):
    """1 << e for an int64 tensor e: a broadcast of the scalar 1, so that the legalized kernel reads e (a
    `full_like` tensor of ones would be a kernel of its own, with no input to group it with its row)."""
    return bb.emit(R.left_shift(const(1, "int64"), e))


def emit_isqrt(bb, n):
    """(floor(sqrt(n)), e) for int64 0 <= n < 2**54 (intmath.isqrt), e = ceil(bits(n) / 2) its start exponent."""
    from compiler.intmath import integer_ops as io

    one = const(1, "int64")
    bits = emit_bit_length(bb, n, io.LN_SQRT_MAX_BITS)
    e = bb.emit(R.right_shift(bb.emit(R.add(bits, one)), one))
    r = emit_pow2(bb, e)
    for _ in range(io.LN_SQRT_ITERS):
        nr = bb.emit(R.right_shift(bb.emit(R.add(r, bb.emit(R.floor_divide(n, r)))), one))
        r = bb.emit(R.maximum(bb.emit(R.minimum(r, nr)), one))
    return r, e


def emit_divide_round(bb, num, den, frac: int):
    """round(num * 2**frac / max(den, 1)) half up, int64 (intmath.idivide_round)."""
    i64 = lambda v: const(v, "int64")  # noqa: E731
    den = bb.emit(R.maximum(_i64(bb, den), i64(1)))
    top = bb.emit(R.add(bb.emit(R.left_shift(_i64(bb, num), i64(frac + 1))), den))
    return bb.emit(R.floor_divide(top, bb.emit(R.multiply(den, i64(2)))))


def emit_masked_mean(bb, x, zp: int, w, axes: list, bound: int, keepdims: bool):
    """sum((x - zp) * w) / sum(w) over axes, Q(quotient_frac_bits(bound)) of x's scale (intmath.imasked_mean)."""
    from compiler.intmath import integer_ops as io

    x = _i64(bb, x)
    if zp:
        x = bb.emit(R.subtract(x, const(zp, "int64")))
    w = _i64(bb, w)
    s = bb.emit(R.sum(bb.emit(R.multiply(x, w)), axis=axes, keepdims=keepdims))
    n = bb.emit(R.sum(w, axis=axes, keepdims=keepdims))
    f = io.quotient_frac_bits(bound)
    q = emit_divide_round(bb, s, n, f)
    return bb.emit(R.clip(q, -(bound << f), bound << f))


def emit_l2_normalize(bb, x, zp: int, bound: int, eps_code: int, axis: int):
    """x / max(||x||, eps) along `axis`, Q15 int32 (intmath.il2_normalize)."""
    from compiler.intmath import integer_ops as io

    x = _i64(bb, x)
    if zp:
        x = bb.emit(R.subtract(x, const(zp, "int64")))
    hidden = tensor_info(x)[1][axis]
    k = io.l2_shift(hidden, bound)
    if k > 0:
        x = bb.emit(R.right_shift(x, const(k, "int64")))
    elif k < 0:
        x = bb.emit(R.left_shift(x, const(-k, "int64")))
    n = bb.emit(R.sum(bb.emit(R.multiply(x, x)), axis=[axis], keepdims=True))
    eps = (eps_code >> k) if k >= 0 else (eps_code << -k)
    r, _ = emit_isqrt(bb, n)
    norm = bb.emit(R.maximum(r, const(max(int(eps), 1), "int64")))
    return bb.emit(R.astype(emit_divide_round(bb, x, norm, io.L2_OUT_FRAC_BITS), "int32"))


def emit_layernorm(bb, x, c: io.LayerNormConstants, out_dtype: str):
    """Integer LayerNorm over the last axis (constants from intmath.layernorm_constants)."""
    from compiler.intmath import integer_ops as io

    x = _i64(bb, x)
    h = tensor_info(x)[1][-1]
    hx = bb.emit(R.multiply(x, const(h, "int64")))
    y = bb.emit(R.subtract(hx, bb.emit(R.sum(x, axis=[-1], keepdims=True))))
    if c.shift > 0:
        y = bb.emit(R.right_shift(y, const(c.shift, "int64")))
    elif c.shift < 0:
        y = bb.emit(R.left_shift(y, const(-c.shift, "int64")))
    n = bb.emit(R.floor_divide(bb.emit(R.sum(bb.emit(R.multiply(y, y)), axis=[-1], keepdims=True)),
                               const(h, "int64")))
    n = bb.emit(R.add(n, const(c.eps, "int64")))
    r, e = emit_isqrt(bb, n)
    recip = bb.emit(R.floor_divide(emit_pow2(bb, bb.emit(R.add(e, const(io.LN_RECIP_BITS, "int64")))), r))
    u = bb.emit(R.right_shift(bb.emit(R.multiply(y, recip)),
                              bb.emit(R.add(e, const(io.LN_RECIP_BITS - io.LN_FRAC_BITS, "int64")))))
    sh = c.sh
    v = bb.emit(R.add(bb.emit(R.multiply(u, const(c.m0, "int64"))),
                      const(c.bias + (np.int64(1) << (sh - 1)), "int64")))
    v = bb.emit(R.right_shift(v, const(sh, "int64")))
    if c.zp:
        v = bb.emit(R.add(v, const(c.zp, "int64")))
    info = np.iinfo(out_dtype)
    return bb.emit(R.astype(bb.emit(R.clip(v, int(info.min), int(info.max))), out_dtype))


def emit_rescale(bb, x, zp: int, multiplier: float):
    """int64 (x - zp) * multiplier, rounded half up (intmath.rescale)."""
    from compiler.intmath.fixed_point import quantize_multiplier

    x = _i64(bb, x)
    if zp:
        x = bb.emit(R.subtract(x, const(zp, "int64")))
    if multiplier == 1.0:
        return x
    m0, sh = quantize_multiplier(float(multiplier))
    v = bb.emit(R.add(bb.emit(R.multiply(x, const(m0, "int64"))), const(1 << (sh - 1), "int64")))
    return bb.emit(R.right_shift(v, const(sh, "int64")))


def emit_lookup(bb, x, table: np.ndarray, offset: int, out_dtype: str):
    """table[x + offset] (intmath.lookup)."""
    idx = bb.emit(R.add(_i64(bb, x), const(offset, "int64")))
    return bb.emit(R.take(const(table, out_dtype), idx, axis=0))
