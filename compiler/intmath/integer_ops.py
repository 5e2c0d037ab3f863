"""NumPy reference (the specification) of the integer nonlinearities and the rescaling add.

Every function here computes with integers only (int64 intermediates); float appears only in compile-time
constants (tables, multipliers), never on data. The Relax emitters in compiler/passes/intops.py produce the
same bits; tests/compiler/passes/test_integer_ops.py checks them against these twins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compiler.intmath.fixed_point import quantize_multiplier, quantize_multipliers

# ---- exp and softmax ------------------------------------------------------------------------------------
# exp(-d * scale) = 2**-t with t = d * scale / ln 2 >= 0: t in Q14 from one int32 multiply-shift of d, then
# 2**-(t >> 14) is a shift and 2**-(fraction) a cubic in Horner form. Everything per element is int32 (no
# gather, no 64-bit multiply), so it vectorizes at full width.
EXP_FRAC_BITS = 14  # the fraction of t (Q14)
EXP_ZERO_SHIFT = 16  # a Q15 value shifted right 16 times is 0: t beyond 16 (d beyond 16 ln 2 / scale) gives 0
EXP_MUL_BITS = 12  # the multiplier of d keeps at least 12 bits (relative slope error <= 2**-12)
EXP_MUL_SHIFT = 12  # t = (d * m) >> 12: d <= d_cap keeps d * m below 2**31
EXP_POLY_Q15 = (32766, -22654, 7566, -1296)  # 2**-f, f in [0, 1), Q15 (Chebyshev cubic; relative error 2.5e-4)
EXP_MAX = EXP_POLY_Q15[0]  # exp(0) in Q15: every row's largest element
SOFTMAX_OUT_SCALE = 1.0 / 255.0  # the int8 form
SOFTMAX_OUT_ZP = -128
SOFTMAX_FINE_LEVELS = 65535  # the fine form: int32 codes of p * 65535 (requantized by its consumer)
INT32_MAX = (1 << 31) - 1


@dataclass(frozen=True)
class ExpConstants:
    """d -> t = ((min(d >> pre, d_cap)) * m) >> s: d * scale / ln 2 in Q14 (exp_constants)."""

    pre: int
    m: int
    s: int
    d_cap: int


def exp_constants(scale: float) -> ExpConstants:
    """d -> t: d is shifted right by `pre` (fine scales), capped at `d_cap`, multiplied by `m` and shifted right
    by `s`, so that t = d * scale / ln 2 in Q14, with d_cap * m < 2**31 and t >= 16 in Q14 at the cap."""
    c = scale / math.log(2.0)
    f, s, pre = EXP_FRAC_BITS, EXP_MUL_SHIFT, 0
    m = int(round(c * 2.0 ** (f + s)))
    if m < 1 << EXP_MUL_BITS:  # fine scales: drop low bits of d until m has EXP_MUL_BITS bits
        pre = EXP_MUL_BITS - max(m, 1).bit_length() + 1
        m = int(round(c * 2.0 ** (f + s + pre)))
    while m >= 1 << 29 and s > 0:  # coarse scales (a step of ln 2 or more): a smaller shift
        s -= 1
        m = int(round(c * 2.0 ** (f + s + pre)))
    if not 1 <= m < 1 << 29:
        raise ValueError(f"softmax input scale {scale} is out of the integer exp's range")
    d_cap = -(-(EXP_ZERO_SHIFT << (f + s)) // m)  # ceil: t >= 16 (exp 0) from the cap on
    assert d_cap * m < 1 << 31
    return ExpConstants(pre=pre, m=m, s=s, d_cap=d_cap)


def horner(u: np.ndarray, coefs: tuple, frac_bits: int) -> np.ndarray:
    """sum(coefs[i] * (u / 2**frac_bits)**i) in the coefficients' fixed point (lowest degree first): Horner with a
    floor shift after each product (intops.emit_horner emits the same)."""
    h = np.full_like(u, coefs[-1])
    for coef in reversed(coefs[:-1]):
        h = ((h * u) >> frac_bits) + coef
    return h


def exp_poly(f: np.ndarray) -> np.ndarray:
    """2**-(f / 2**14) in Q15 for 0 <= f < 2**14 (int32 safe)."""
    return horner(f, EXP_POLY_Q15, EXP_FRAC_BITS)


def iexp_q15(d: np.ndarray, c: ExpConstants) -> np.ndarray:
    """exp(-d * scale) in Q15 for integer d >= 0, c from exp_constants(scale); int64 out (values < 2**15)."""
    d = np.minimum(d.astype(np.int64) >> c.pre, c.d_cap)
    t = (d * c.m) >> c.s
    z = np.minimum(t >> EXP_FRAC_BITS, EXP_ZERO_SHIFT)
    return exp_poly(t & ((1 << EXP_FRAC_BITS) - 1)) >> z


INT32_INPUT_CLIP = 1 << 30  # int32 softmax / log-softmax inputs are clipped to [-2**30, 2**30): max - x fits int32


def int32_input_ok(scale: float) -> bool:
    """Whether an int32 input of this scale may be clipped to +-INT32_INPUT_CLIP (and its differences taken in
    int32): differences of 2**29 and more already give exp 0 (the cap, at most 16 ln 2 / scale, is below)."""
    c = exp_constants(scale)
    return (c.d_cap + 1) << c.pre <= 1 << 29


def row_input(x: np.ndarray, scale: float) -> np.ndarray:
    """The (int64) values softmax and log-softmax work on: int32 inputs clipped as the emitters clip them (masked
    positions at -2**31 land at -2**30, where exp is 0 all the same)."""
    if x.dtype == np.int32 and int32_input_ok(scale):
        x = np.clip(x, -INT32_INPUT_CLIP, INT32_INPUT_CLIP - 1)
    return x.astype(np.int64)


def softmax_recip_bits(out_scale: float) -> int:
    """K for q = (e * r + 2**(K-1)) >> K with r = round(2**K / out_scale / sum): the largest K (<= 30) that keeps
    e * r + 2**(K-1) inside int32 (e <= EXP_MAX <= sum)."""
    for k in range(30, 0, -1):
        if round(2.0 ** k / out_scale) + (1 << (k - 1)) + EXP_MAX < INT32_MAX:
            return k
    raise ValueError(f"softmax output scale {out_scale} is too fine for int32")


def softmax_output(fine: bool, out_scale: float | None, out_zp: int | None, out_dtype: str | None) -> tuple:
    """(out_scale, out_zp, out_dtype) of a softmax: the fine form, the given one, or the default int8 form."""
    if fine:
        return 1.0 / SOFTMAX_FINE_LEVELS, 0, "int32"
    if out_scale is None:
        return SOFTMAX_OUT_SCALE, SOFTMAX_OUT_ZP, "int8"
    return out_scale, out_zp, out_dtype


def isoftmax(x: np.ndarray, scale: float, axis: int = -1, fine: bool = False, out_scale: float | None = None,
             out_zp: int | None = None, out_dtype: str | None = None) -> np.ndarray:
    """Integer softmax of x (any integer dtype, real = scale * (x - zp); zp cancels): by default int8 with scale
    1/255, zero point -128; `fine`: int32 codes round(p * 65535); or any (out_scale, out_zp, out_dtype).

    Each row's exps (Q15, iexp_q15, relative error <= 2.5e-4 for scales well below ln 2) are summed, the
    constant 2**K / out_scale is divided by the sum once per row (rounded), and each output is an int32 multiply
    and a rounding shift: q = round(e * r / 2**K) + out_zp, clipped to out_dtype.
    """
    out_scale, out_zp, out_dtype = softmax_output(fine, out_scale, out_zp, out_dtype)
    c = exp_constants(scale)
    x = row_input(x, scale)
    e = iexp_q15(np.max(x, axis=axis, keepdims=True) - x, c)
    s = np.sum(e, axis=axis, keepdims=True)
    k = softmax_recip_bits(out_scale)
    recip = (int(round(2.0 ** k / out_scale)) + (s >> 1)) // s
    q = (e * recip + (1 << (k - 1))) >> k
    info = np.iinfo(out_dtype)
    return np.clip(q + out_zp, info.min, info.max).astype(out_dtype)


# ---- GELU ------------------------------------------------------------------------------------------------
# GELU(v) = relu(v) - |v| * Phi(-|v|). On the codes a = x - zp of an 8/16-bit tensor (v = scale * a), with
# tau = |v|: Phi(-tau) = g(tau / 4)**4 for tau < 4 (g a quartic, fitted minimax of tau * error: <= 2.0e-4, <= 4e-4
# in Q14), 0 beyond. The result is int32 codes of GELU in units of scale / 2**14: a handful of int32 multiplies
# per element, no table to gather from.
GELU_FRAC_BITS = 14  # u = tau / 4, g and Phi(-tau) in Q14
GELU_TAU_MAX = 4.0
GELU_MUL_SHIFT = 15  # u = (min(t, t_cap) * m) >> 15, below 2**31 before the shift
GELU_MUL_BITS = 12
GELU_POLY_Q14 = (13747, -10251, -18765, 22203, -5377)  # g(u), u in [0, 1], lowest degree first
GELU_MAX_ABS_ERROR = 4.5e-4  # of the real GELU, per unit of |v| up to 4 (fixed-point evaluation included)


@dataclass(frozen=True)
class GeluConstants:
    """t = |x - zp| -> u = (min(t >> pre, t_cap) * m) >> GELU_MUL_SHIFT: tau / 4 in Q14 (gelu_constants)."""

    pre: int
    m: int
    t_cap: int


def gelu_constants(scale: float) -> GeluConstants:
    """t = |x - zp| -> u = tau / 4 in Q14: t shifted right by `pre` (fine scales), capped at `t_cap` (tau = 4),
    multiplied by `m` and shifted right by GELU_MUL_SHIFT."""
    pre, s = 0, GELU_MUL_SHIFT
    c = scale / GELU_TAU_MAX * 2.0 ** (GELU_FRAC_BITS + s)
    m = int(round(c))
    if m < 1 << GELU_MUL_BITS:
        pre = GELU_MUL_BITS - max(m, 1).bit_length() + 1
        m = int(round(c * 2.0 ** pre))
    t_cap = int(math.ceil(GELU_TAU_MAX / (scale * 2.0 ** pre)))
    if t_cap * m >= 1 << 31:
        raise ValueError(f"GELU input scale {scale} is out of the integer GELU's range")
    return GeluConstants(pre=pre, m=m, t_cap=t_cap)


def igelu(x: np.ndarray, zp: int, c: GeluConstants) -> np.ndarray:
    """int32 codes of GELU(scale * (x - zp)) in units of scale / 2**14 (x 8/16-bit, c from gelu_constants)."""
    a = x.astype(np.int64) - zp
    t = np.abs(a)
    u = (np.minimum(t >> c.pre, c.t_cap) * c.m) >> GELU_MUL_SHIFT
    g = np.maximum(horner(u, GELU_POLY_Q14, GELU_FRAC_BITS), 0)
    g2 = (g * g) >> GELU_FRAC_BITS
    phi = (g2 * g2) >> GELU_FRAC_BITS  # Phi(-tau) in Q14
    return ((np.maximum(a, 0) << GELU_FRAC_BITS) - t * phi).astype(np.int32)


# ---- LayerNorm -------------------------------------------------------------------------------------------
LN_FRAC_BITS = 12  # the normalized value (x - mean) / std in Q12
LN_SQRT_ITERS = 6  # Newton steps from 2**ceil(bits(n) / 2) (within 2x of sqrt(n)): relative error 1, .25, .031,
# 5e-4, 1.2e-7, then under one unit for n < 2**54; the sixth settles the floor
LN_SQRT_MAX_BITS = 54
LN_SQUARE_BITS = 25  # |H * (x - mean)| is shifted below 2**25 before squaring
LN_RECIP_BITS = 30  # per-row reciprocal of std: the normalization is a multiply and a shift per element
LN_MAX_SHIFT = 40  # per-channel output shift cap: |beta / out_scale| * 2**40 stays far inside int64


def layernorm_shift(hidden: int, bound: int) -> int:
    """Shift that brings |H * (x - mean)| to below 2**25 for |x| <= bound: right (> 0) so that sums of squares fit
    int64, or left (< 0) so that small inputs keep the square root's resolution."""
    need = math.ceil(math.log2(max(2 * hidden * bound, 2)))
    return need - LN_SQUARE_BITS


def bit_length(n: np.ndarray, max_bits: int = LN_SQRT_MAX_BITS) -> np.ndarray:
    """Bits of 0 <= n < 2**max_bits (max_bits <= 63), by a branch-free binary search: six shift-and-compare
    steps instead of one comparison per bit (per-row scalars: this runs once per row, serially)."""
    assert max_bits <= 63
    v, bits = n.astype(np.int64), np.zeros(np.shape(n), np.int64)
    for sh in (32, 16, 8, 4, 2, 1):
        step = ((v >> sh) > 0).astype(np.int64) * sh
        bits, v = bits + step, v >> step
    return bits + (v > 0).astype(np.int64)


def isqrt(n: np.ndarray) -> np.ndarray:
    """floor(sqrt(n)) for 0 <= n < 2**54: the bit length by comparisons, then Newton steps from above."""
    n = n.astype(np.int64)
    r = np.left_shift(np.int64(1), (bit_length(n) + 1) >> 1)
    for _ in range(LN_SQRT_ITERS):
        nr = (r + n // r) >> 1
        r = np.maximum(np.minimum(r, nr), 1)
    return r


@dataclass(frozen=True, eq=False)
class LayerNormConstants:
    """The integer LayerNorm's compile-time constants (layernorm_constants): the pre-square shift (right if > 0),
    eps as an integer, and per channel the signed fixed-point multiplier m0, its shift sh and beta as bias (at
    the output scale times 2**sh), then the output zero point."""

    shift: int
    eps: int
    m0: np.ndarray
    sh: np.ndarray
    bias: np.ndarray
    zp: int


def layernorm_constants(scale: float, hidden: int, bound: int, eps: float, gamma: np.ndarray, beta: np.ndarray,
                        out_scale: float, out_zp: int) -> LayerNormConstants:
    k = layernorm_shift(hidden, bound)
    eps_int = int(round(hidden * hidden * eps / (scale * scale) / 4.0 ** k))
    g = np.asarray(gamma, dtype=np.float64)
    mult = np.abs(g) / (out_scale * (1 << LN_FRAC_BITS))
    pairs = [quantize_multiplier(float(m)) for m in mult]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64)
    sh = np.array([p[1] for p in pairs], dtype=np.int64)
    over = np.maximum(sh - LN_MAX_SHIFT, 0)  # tiny gammas: keep beta * 2**sh inside int64 (they round to ~0)
    m0 = ((m0 + np.where(over > 0, np.left_shift(np.int64(1), np.maximum(over - 1, 0)), 0)) >> over)
    sh = sh - over
    m0 = m0 * np.where(g < 0, -1, 1)
    bias = np.round(np.asarray(beta, dtype=np.float64) / out_scale * np.exp2(sh)).astype(np.int64)
    return LayerNormConstants(shift=k, eps=eps_int, m0=m0, sh=sh, bias=bias, zp=int(out_zp))


def ilayernorm(x: np.ndarray, c: LayerNormConstants, qmin: int = -128, qmax: int = 127,
               out_dtype=np.int8) -> np.ndarray:
    """Integer LayerNorm over the last axis. The zero point and the scale of x cancel except in eps (folded
    into c.eps); gamma, beta and the output scale are per-channel fixed-point constants (c from
    layernorm_constants)."""
    x = x.astype(np.int64)
    h = x.shape[-1]
    y = h * x - np.sum(x, axis=-1, keepdims=True)
    y = y >> c.shift if c.shift >= 0 else y << -c.shift
    n = np.sum(y * y, axis=-1, keepdims=True) // h + c.eps
    std = isqrt(n)
    # (y << LN_FRAC_BITS) // std through one division per row: std < 2**e with e = ceil(bits(n) / 2), so the
    # reciprocal 2**(LN_RECIP_BITS + e) // std lies in [2**LN_RECIP_BITS, 2**(LN_RECIP_BITS + 2)) and
    # |y| * reciprocal < 2**(LN_SQUARE_BITS + LN_RECIP_BITS + 2) stays inside int64
    e = (bit_length(n) + 1) >> 1
    recip = np.left_shift(np.int64(1), LN_RECIP_BITS + e) // std
    u = (y * recip) >> (LN_RECIP_BITS + e - LN_FRAC_BITS)
    sh = c.sh
    out = (u * c.m0 + c.bias + (np.int64(1) << (sh - 1))) >> sh
    return np.clip(out + c.zp, qmin, qmax).astype(out_dtype)


# ---- pooling heads: masked mean, L2 normalization ---------------------------------------------------------
POOL_BITS = 30  # a mean (or any quotient) is written to |q| < 2**30: POOL_BITS - bits(bound) fraction bits
L2_OUT_FRAC_BITS = 15  # x / ||x|| in Q15 (|y| <= 1): int32 codes, scale 2**-15
L2_SQRT_MAX_BITS = LN_SQRT_MAX_BITS  # sums of squares stay below the integer square root's range


def quotient_frac_bits(bound: int) -> int:
    """Fraction bits of a mean of values |v| <= bound: |mean * 2**f| < 2**POOL_BITS."""
    return max(POOL_BITS - int(bound).bit_length(), 0)


def idivide_round(num: np.ndarray, den: np.ndarray, frac: int) -> np.ndarray:
    """round(num * 2**frac / max(den, 1)), half up, int64; the divisor guarded so that no division is by 0."""
    num = num.astype(np.int64)
    den = np.maximum(den.astype(np.int64), 1)
    return ((num << (frac + 1)) + den) // (2 * den)


def imasked_mean(x: np.ndarray, zp: int, w: np.ndarray, axis: int, bound: int, keepdims: bool = False
                 ) -> np.ndarray:
    """sum((x - zp) * w) / sum(w) over `axis` (masked mean pooling; w the attention mask, any non-negative
    integers), in units of 2**-quotient_frac_bits(bound) of x's scale, clipped to the bound (a mean of values
    within it stays within it for w >= 0)."""
    x = x.astype(np.int64) - zp
    w = w.astype(np.int64)
    s = np.sum(x * w, axis=axis, keepdims=keepdims)
    n = np.sum(w, axis=axis, keepdims=keepdims)
    f = quotient_frac_bits(bound)
    return np.clip(idivide_round(s, n, f), -(bound << f), bound << f)


def l2_shift(hidden: int, bound: int) -> int:
    """Shift (right if > 0) that brings |x| <= bound below 2**b with 2b + bits(hidden) <= L2_SQRT_MAX_BITS, so
    that the sum of squares stays inside the integer square root's range; a left shift keeps small inputs'
    resolution."""
    b = (L2_SQRT_MAX_BITS - int(hidden).bit_length()) // 2
    return int(bound).bit_length() - b


def il2_normalize(x: np.ndarray, zp: int, bound: int, eps_code: int, axis: int = -1) -> np.ndarray:
    """x / max(||x||, eps) along `axis` in Q15 (int32): the sum of squares in int64, intmath's isqrt, one
    rounded division per element. eps_code: eps in units of x's scale (rounded up, at least 1)."""
    x = x.astype(np.int64) - zp
    k = l2_shift(x.shape[axis], bound)
    y = x >> k if k >= 0 else x << -k
    n = np.sum(y * y, axis=axis, keepdims=True)
    eps = (eps_code >> k) if k >= 0 else (eps_code << -k)
    norm = np.maximum(isqrt(n), max(int(eps), 1))
    return idivide_round(y, norm, L2_OUT_FRAC_BITS).astype(np.int32)


# ---- rescaling add ---------------------------------------------------------------------------------------
def rescale(x: np.ndarray, zp: int, m0: int, shift: int) -> np.ndarray:
    """(x - zp) * (m0 * 2**-shift) rounded half up, int64 (no clipping)."""
    v = (x.astype(np.int64) - zp) * m0
    return (v + (np.int64(1) << (shift - 1))) >> shift


# ---- per-token activation scales (dynamic rows) -------------------------------------------------------------
# A matmul input is carried as int16 codes of one static, symmetric scale s16 (the calibrated range over 32767
# levels) and quantized to int8 at run time row by row, asymmetrically: each row (a token) gets the step
# s16 * 2**k with the smallest k that fits the row's span (max - min of its codes) into 255 steps after
# rounding, and a zero point z of its own, x ~ 2**k * (q + z) (I-LLM's dynamic integer matmul with power-of-two
# row scales: the requantization after the matmul shifts by k less, no per-row multiplier). A one-sided row
# (a GELU's output: >= -0.17 everywhere) keeps all 256 levels where a symmetric code would waste half of them.
# The zero point costs one term per output, z_i * sum_k w_kj (a column sum of the weights), added to the
# accumulator before the requantization (intmath.requantize_rows).
ROW_SHIFT_MAX = 9  # int16 codes: a span <= 65535 fits 255 steps after 9 halvings
# k is the number of thresholds the row's span exceeds: after k halvings (rounding half up) the codes of a span
# s differ by at most floor(s / 2**k) + 1 (s for k = 0), at most 255 when s <= 255 * 2**k - 1 (255 for k = 0)
ROW_SPAN_THRESHOLDS = tuple(255 if k == 0 else 255 * 2 ** k - 1 for k in range(ROW_SHIFT_MAX))
ROW_ZERO_OFFSET = 128  # z = (the row's smallest code after the shift) + 128: its codes start at -128


def row_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int16 codes (…, rows, K) -> (int8 codes q, int32 shifts k, int32 zero points z; k and z (…, rows, 1)):
    q = ((x + 2**k >> 1) >> k) - z with z = ((min x + 2**k >> 1) >> k) + 128, k the smallest shift that brings
    the row's span into 255 steps (q never leaves [-128, 127]). x ~ 2**k * (q + z), error at most half a step of
    s16 * 2**k per element; the step is at most span / 127.5 (never coarser than a static int8 scale of the
    same range, half of one where the row is one-sided)."""
    x = x.astype(np.int32)
    hi = np.max(x, axis=-1, keepdims=True)
    lo = np.min(x, axis=-1, keepdims=True)
    k = np.sum((hi - lo) > np.array(ROW_SPAN_THRESHOLDS, np.int32), axis=-1, keepdims=True).astype(np.int32)
    half = np.left_shift(np.int32(1), k) >> 1
    z = ((lo + half) >> k) + np.int32(ROW_ZERO_OFFSET)
    q = np.clip(((x + half) >> k) - z, -128, 127).astype(np.int8)
    return q, k, z


# The row requantization adds z_i * colsum_j to the accumulator and shifts the product left by k before
# rounding it off (so that the GEMM kernel can apply k and z as per-row operands): (acc + z * colsum) * 2**k is
# sum_k x_k w_k within rounding, |x| <= 2**15 + 2**(k-1) < 2**16 and |w| <= 128, so at most K * 2**23; times m0
# below 2**row_mantissa_bits(K) it stays below 2**62 (the rounding term below 2**62 too: no int64 overflow).


def row_mantissa_bits(k_dim: int) -> int:
    """Bits of m0 that keep (acc + z * colsum) * m0 << k below 2**62 for a reduction over ``k_dim`` (at most
    31)."""
    return min(31, 62 - int(k_dim << 23).bit_length())


def row_multipliers(multiplier: np.ndarray, k_dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Fixed-point (m0, shift) per column for requantize_rows over a reduction of ``k_dim``: m0 below
    2**row_mantissa_bits(k_dim) (relative error of the multiplier at most 2**-(bits - 1)), or None when some
    shift is too small to exceed every k (a multiplier too large: the input stays statically quantized). A zero
    multiplier gets the smallest shift that stays valid (its products are 0 anyway)."""
    m0, sh = quantize_multipliers(np.asarray(multiplier, np.float64))
    bits = row_mantissa_bits(k_dim)
    if bits < 16:
        return None
    drop = 31 - bits
    if drop:
        m0 = (m0 + (1 << (drop - 1))) >> drop
        sh = sh - drop
        top = m0 == 1 << bits  # rounded up to the next power of two: one bit less
        m0, sh = np.where(top, m0 >> 1, m0), np.where(top, sh - 1, sh)
    sh = np.where(m0 == 0, ROW_SHIFT_MAX + 1, sh)
    return (m0, sh) if np.all(sh > ROW_SHIFT_MAX) else None


def requantize_rows(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, k: np.ndarray, z: np.ndarray,
                    colsum: np.ndarray, bias: np.ndarray, zero_point: int, out_dtype=np.int16) -> np.ndarray:
    """int32 accumulators of row-quantized inputs (row i: codes q_i with x_i ~ 2**k_i (q_i + z_i); column j at
    the weight's scale, ``colsum`` its weights' sum) -> output codes: ((acc + z_i * colsum_j) * m0_j << k_i
    + 2**(sh_j-1)) >> sh_j, then + bias_j + zero_point (the bias already at the output scale), clipped. Equal to
    rounding (acc + z_i colsum_j) * m0_j by sh_j - k_i bits (sh_j > k_i); no int64 overflow (row_mantissa_bits)."""
    x = acc.astype(np.int64) + z.astype(np.int64) * colsum.astype(np.int64)
    x = (x * m0.astype(np.int64)) << k.astype(np.int64)
    sh = shift.astype(np.int64)
    x = (x + np.left_shift(np.int64(1), sh - 1)) >> sh
    info = np.iinfo(out_dtype)
    return np.clip(x + bias.astype(np.int64) + zero_point, info.min, info.max).astype(out_dtype)


# ---- embedding tables with a scale per row ----------------------------------------------------------------
# An embedding table's rows differ in magnitude by orders (rare tokens, position rows): one int8 scale for the
# whole table leaves small rows a few levels. Each row r gets its own step M_r * s (M_r an integer multiplier of
# one fine step s = max row step / 2**TABLE_ROW_BITS), its codes are quantized at exactly that step, and a gather
# returns codes * M_r in int32 at scale s: the same int8 table plus one int16 per row.
TABLE_ROW_BITS = 14  # M_r <= 2**14 fits int16; |codes * M_r| <= 127 * 2**14 < 2**21


def row_scaled_table(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(int8 codes (V, ...), int16 multipliers (V, 1), fine scale s): table[r] ~= codes[r] * M_r * s, with
    |error| <= M_r * s / 2 <= (max |table[r]| / 127 + s) / 2 per element."""
    t = np.asarray(table, np.float64).reshape(table.shape[0], -1)
    row_max = np.max(np.abs(t), axis=1)
    top = float(np.max(row_max)) or 1.0
    fine = top / 127.0 / 2 ** TABLE_ROW_BITS
    mult = np.clip(np.ceil(row_max / 127.0 / fine), 1, 2 ** TABLE_ROW_BITS).astype(np.int64)
    codes = np.clip(np.round(t / (mult[:, None] * fine)), -127, 127).astype(np.int8)
    return codes.reshape(table.shape), mult.astype(np.int16).reshape(-1, 1), fine


def gather_rows(codes: np.ndarray, mult: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """int32 codes * M_r of the rows ``idx`` (axis 0), at the table's fine scale."""
    i = idx.astype(np.int64)
    return codes[i].astype(np.int32) * mult[i].astype(np.int32).reshape(i.shape + (1,) * (codes.ndim - 1))


# ---- lookup tables ---------------------------------------------------------------------------------------
def lookup(x: np.ndarray, table: np.ndarray, offset: int) -> np.ndarray:
    """table[x + offset]: an elementwise function of an 8- or 16-bit integer tensor."""
    return table[x.astype(np.int64) + offset]


# ---- log-softmax -----------------------------------------------------------------------------------------
LOG2_TABLE_BITS = 10  # log2 of the mantissa from a 1024-entry table
LOG2_FRAC_BITS = 16  # log2 values in Q16
LOG_SUM_BITS = 48  # row sums of Q15 exps, shifted to Q31, stay below 2**48 (rows up to 2**17 entries)


def log2_table() -> np.ndarray:
    n = 1 << LOG2_TABLE_BITS
    return np.round(np.log2(1.0 + (np.arange(n) + 0.5) / n) * (1 << LOG2_FRAC_BITS)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class LogSoftmaxConstants:
    """The softmax exp constants, the log2 table, and the fixed-point multiplier (m0, sh) from Q16 log2 to input
    units (log_softmax_constants)."""

    exp: ExpConstants
    log2: np.ndarray
    m0: int
    sh: int


def log_softmax_constants(scale: float) -> LogSoftmaxConstants:
    """Softmax exp constants, the log2 table, and ln 2 / (scale * 2**16) as a fixed-point multiplier (Q16 log2
    -> input units)."""
    from compiler.intmath.fixed_point import quantize_multiplier

    m0, sh = quantize_multiplier(math.log(2.0) / (scale * (1 << LOG2_FRAC_BITS)))
    return LogSoftmaxConstants(exp=exp_constants(scale), log2=log2_table(), m0=m0, sh=sh)


def log_softmax_bound(n: int, scale: float, d_max: int) -> int:
    """|log-softmax| in input units for rows of n with max - x <= d_max: d_max plus the log-sum-exp (at most
    ln(n) / scale, with the tables' rounding)."""
    return int(d_max) + int(math.ceil((math.log(max(n, 1)) + 0.01) / scale)) + 2


def ilog_softmax(x: np.ndarray, scale: float) -> np.ndarray:
    """Integer log-softmax over the last axis -> int64 in the input's units (real = scale * out, zero point 0).

    out = (x - max) - round(ln(sum exp) / scale): the exps are the softmax's Q15 values (sum >= 2**15 * 0.998),
    the log2 of the sum is its bit length plus a table of the next LOG2_TABLE_BITS mantissa bits (Q16), and
    ln 2 / scale is a fixed-point multiply. Error of the log-sum-exp: <= 0.0021 (table of exp) + 0.0011 (log2
    table) nats, plus half an input step."""
    c = log_softmax_constants(scale)
    x = row_input(x, scale)
    d = np.max(x, axis=-1, keepdims=True) - x
    s = np.sum(iexp_q15(d, c.exp), axis=-1, keepdims=True) << LOG2_FRAC_BITS  # Q31
    bits = bit_length(s, LOG_SUM_BITS)
    idx = (s >> (bits - 1 - LOG2_TABLE_BITS)) - (1 << LOG2_TABLE_BITS)
    log2q = ((bits - 32) << LOG2_FRAC_BITS) + c.log2[idx]  # log2(sum / 2**15) in Q16
    lse = rescale(log2q, 0, c.m0, c.sh)
    return -d - lse


# ---- elementwise product and ReLU ------------------------------------------------------------------------
PRODUCT_MAX_BITS = 30  # products are shifted right until |(a - za)(b - zb)| < 2**30


def product_shift(bound_a: int, bound_b: int) -> int:
    return max(0, int(bound_a * bound_b).bit_length() - PRODUCT_MAX_BITS)


def imul(a: np.ndarray, za: int, b: np.ndarray, zb: int, shift: int) -> np.ndarray:
    """(a - za)(b - zb) >> shift, rounded half up, int64: real = scale_a * scale_b * 2**shift * out."""
    v = (a.astype(np.int64) - za) * (b.astype(np.int64) - zb)
    return (v + (np.int64(1) << (shift - 1))) >> shift if shift else v


def irelu(x: np.ndarray, zp: int) -> np.ndarray:
    """ReLU on the integer codes: max(x, zp) (the zero point is real 0)."""
    return np.maximum(x, np.asarray(zp).astype(x.dtype))
