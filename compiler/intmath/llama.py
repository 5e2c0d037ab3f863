"""NumPy reference (the specification) of the integer ops of a LLaMA-family decoder: RMSNorm, SiLU and the
SiLU-gated product, rotary position embedding, grouped-query attention with the causal mask, and the int8
key/value cache.

Same rules as compiler/intmath/integer_ops.py: integers only on data (int64 intermediates, int32-safe where a
kernel will compute in int32); float appears only in compile-time constants (multipliers, tables, fits). Each
function states its inputs, outputs and scales, and an error bound against float that
tests/compiler/intmath/test_llama_ops.py checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compiler.intmath import integer_ops as io
from compiler.intmath.fixed_point import quantize_multiplier, quantize_multipliers, requantize

# ---- RMSNorm ---------------------------------------------------------------------------------------------
RMS_FRAC_BITS = 16  # x / rms in at least Q16 (|u| <= sqrt(H) * 2**16: u * m0 fits int64 for H < 2**16)
RMS_SQUARE_BITS = 25  # |x| is shifted below 2**25 before squaring: mean squares < 2**50, inside isqrt's range
RMS_EPS_BITS = 52  # eps in the shifted squares' units below 2**52: mean square + eps < 2**54, isqrt's range
RMS_RECIP_BITS = 30  # per-row reciprocal of rms: one division per row, a multiply and a shift per element
RMS_MAX_SHIFT = 40
RMSNORM_MAX_ERROR_STEPS = 1.0  # bound (tested): output codes within 1 step of round(float / out_scale)


def rmsnorm_shift(bound: int) -> int:
    """Right shift (> 0) bringing |x| <= bound below 2**RMS_SQUARE_BITS, or left shift (< 0) giving small inputs
    the square root's resolution."""
    return int(bound).bit_length() - RMS_SQUARE_BITS


@dataclass(frozen=True, eq=False)
class RMSNormConstants:
    """Compile-time constants of irmsnorm (rmsnorm_constants): shift of the input codes (> 0 right, < 0 left),
    eps in the shifted squares' units, per-channel signed multipliers m0 with their right shifts sh, the
    output zero point, and the fraction bits of the normalized value (frac >= RMS_FRAC_BITS)."""

    shift: int
    eps: int
    m0: np.ndarray
    sh: np.ndarray
    zp: int
    frac: int = RMS_FRAC_BITS


def rmsnorm_constants(scale: float, bound: int, eps: float, gamma: np.ndarray, out_scale: float,
                      out_zp: int = 0) -> RMSNormConstants:
    """Compile-time constants of irmsnorm: input codes of `scale` (zero point 0) with |x| <= bound, the weight
    gamma (per channel, any sign; a smoothing factor may be folded in), int output of out_scale / out_zp."""
    k = rmsnorm_shift(bound)
    e0 = max(eps, 0.0) / (scale * scale)  # eps in squared input units
    while k < 0 and e0 / 4.0 ** k >= 2.0 ** RMS_EPS_BITS:  # a left shift only appends zero bits: take fewer
        k += 1  # where eps in the shifted units would leave isqrt's range
    eps_int = min(int(round(e0 / 4.0 ** k)), 1 << RMS_EPS_BITS)
    g = np.asarray(gamma, dtype=np.float64)
    frac = rmsnorm_frac_bits(bound >> k if k >= 0 else bound << -k, eps_int, max(g.size, 1))
    m0, sh = quantize_multipliers(np.abs(g) / (out_scale * 2.0 ** frac))
    over = np.maximum(sh - RMS_MAX_SHIFT, 0)  # tiny gammas: round the mantissa down to a shift <= 40
    m0 = (m0 + np.where(over > 0, np.left_shift(np.int64(1), np.maximum(over - 1, 0)), 0)) >> over
    return RMSNormConstants(shift=k, eps=eps_int, m0=m0 * np.where(g < 0, -1, 1), sh=sh - over,
                            zp=int(out_zp), frac=frac)


def rmsnorm_frac_bits(ymax: int, eps_int: int, h: int) -> int:
    """Fraction bits of x / rms: RMS_FRAC_BITS, plus as many as eps leaves room for. |x| / rms is at most
    ymax / sqrt(ymax**2 / H + eps), which is sqrt(H) when eps is negligible but far below it when eps dominates
    (tiny inputs): there Q16 would leave the normalized value a few dozen units. The extra bits keep
    |u| <= sqrt(H) * 2**16 (so u * m0 still fits int64) and the reciprocal's shift RMS_RECIP_BITS + e - frac
    non-negative for the smallest e that eps allows."""
    top = math.sqrt(h) / (ymax / math.sqrt(ymax * ymax / h + eps_int)) if ymax > 0 else 1.0
    extra = max(int(math.floor(math.log2(top))), 0)
    e_min = (max(eps_int, 1).bit_length() + 1) >> 1
    return RMS_FRAC_BITS + min(extra, RMS_RECIP_BITS + e_min - RMS_FRAC_BITS)


def irmsnorm(x: np.ndarray, c: RMSNormConstants, qmin: int = -128, qmax: int = 127, out_dtype=np.int8) -> np.ndarray:
    """Integer RMSNorm over the last axis: gamma * x / sqrt(mean(x**2) + eps), requantized to out_dtype.

    x: integer codes (zero point 0; real = scale * x), |x| <= the bound given to rmsnorm_constants. The scale of x
    cancels except in eps (folded into c.eps). Steps: y = x shifted (c.shift), n = sum(y*y) // H + eps in
    int64, rms = isqrt(n) (exact floor), the normalized value in Q(c.frac) through one reciprocal per row
    2**(30 + e) // rms (rms < 2**e), then gamma / out_scale per channel as a fixed-point multiply, rounded half up.
    Bound (tested): within RMSNORM_MAX_ERROR_STEPS output steps of round(float RMSNorm / out_scale) + zp, for
    unclipped outputs and rms (eps included) of at least 2**6 input units after the shift. Below that the
    shift has rounded the row's values to a few units: a row of |x| < 2**shift reads as zeros (for the
    decoder's int32 residual stream, shift 6: rows below 64 codes, which its scale never makes).
    """
    y = x.astype(np.int64)
    k = c.shift
    y = y >> k if k >= 0 else y << -k
    n = np.sum(y * y, axis=-1, keepdims=True) // y.shape[-1] + c.eps
    n = np.maximum(n, 1)
    rms = io.isqrt(n)
    e = (io.bit_length(n) + 1) >> 1
    recip = np.left_shift(np.int64(1), RMS_RECIP_BITS + e) // rms
    u = (y * recip) >> (RMS_RECIP_BITS + e - c.frac)
    sh = c.sh
    out = (u * c.m0 + (np.int64(1) << (sh - 1))) >> sh
    return np.clip(out + c.zp, qmin, qmax).astype(out_dtype)


# ---- SiLU and the SiLU-gated product ---------------------------------------------------------------------
# sigmoid(|v|) = 1 / (1 + exp(-|v|)): exp(-|v|) in Q15 from the softmax's integer exp, 1 / (1 + e) in Q15 from a
# quintic in Horner form (Chebyshev fit on [0, 1], coefficients < 2**15 so that every product fits int32), and
# sigmoid(-|v|) = 1 - sigmoid(|v|).
SIG_FRAC_BITS = 15
RECIP_POLY_Q15 = (32765, -32625, 31172, -25194, 13735, -3471)  # 1 / (1 + u), u in [0, 1], lowest degree first
SIGMOID_MAX_ABS_ERROR = 3.0e-4  # bound (tested) of isigmoid_q15 / 2**15 against float sigmoid of the same input
SILU_MAX_REL_ERROR = SIGMOID_MAX_ABS_ERROR  # isilu: |error| <= 3e-4 * |v| + half an input step


def isigmoid_q15(x: np.ndarray, scale: float, zp: int = 0) -> np.ndarray:
    """sigmoid(scale * (x - zp)) in Q15 (int64 out, 0..32768) for integer codes x (8/16/32-bit)."""
    a = x.astype(np.int64) - zp
    e = io.iexp_q15(np.abs(a), io.exp_constants(scale))  # exp(-|v|) in Q15, <= 32766
    r = io.horner(e, RECIP_POLY_Q15, SIG_FRAC_BITS)  # sigmoid(|v|) in Q15
    return np.where(a >= 0, r, (1 << SIG_FRAC_BITS) - r)


def isilu(x: np.ndarray, scale: float, zp: int = 0) -> np.ndarray:
    """SiLU(v) = v * sigmoid(v) on integer codes (v = scale * (x - zp)) -> int64 codes of the same scale, zero
    point 0: round((x - zp) * sigmoid_q15 / 2**15), half up. |out| <= |x - zp|, so int16 inputs give int16-sized
    outputs. Bound (tested): |scale * out - silu(v)| <= SILU_MAX_REL_ERROR * |v| + scale / 2."""
    a = x.astype(np.int64) - zp
    return (a * isigmoid_q15(x, scale, zp) + (1 << (SIG_FRAC_BITS - 1))) >> SIG_FRAC_BITS


def gated_constants(gate_scale: float, up_scale: float, out_scale: float) -> tuple[int, int]:
    """Fixed-point multiplier (m0, shift) of isilu_gate: gate_scale * up_scale / out_scale."""
    return quantize_multiplier(gate_scale * up_scale / out_scale)


def isilu_gate(gate: np.ndarray, gate_scale: float, up: np.ndarray, up_zp: int, m0: int, shift: int,
               out_zp: int = 0, qmin: int = -128, qmax: int = 127, out_dtype=np.int8) -> np.ndarray:
    """The LLaMA FFN's silu(gate) * up, requantized (the down projection's int8 input).

    gate: codes of gate_scale, zero point 0; up: codes of up_scale with zero point up_zp; both at most 16-bit
    (|gate|, |up - up_zp| <= 2**15) so that isilu(gate) * (up - up_zp) < 2**30 fits int32. (m0, shift) from
    gated_constants. Bound (tested): within 0.5 output steps plus (3e-4 * |g| * |u| + gate_scale * |u| / 2) /
    out_scale of float silu(g) * u, g and u the real inputs.
    """
    prod = isilu(gate, gate_scale) * (up.astype(np.int64) - up_zp)
    return requantize(prod, m0, shift, out_zp, qmin, qmax, out_dtype)


# ---- dynamic per-row power-of-two int8 ------------------------------------------------------------------
# LLaMA's down-projection input carries "massive activations": a few tokens hold values hundreds of times the
# others', so one static int8 scale leaves the ordinary tokens a handful of codes (SmolLM2-135M: +72% perplexity
# from that tensor alone). Each row instead gets its own scale base * 2**k, k >= 0 found at run time from the
# row's integer max: a bit length and a shift, no division. The consumer folds 2**k into its requantization shift.
DYN_QMAX = 127
DYN_CODE_BITS = 7  # |q| <= 127 < 2**7
DYN_BASE_CODE = 1 << 16  # the static base scale: the calibrated max lands at 2**16 base units


def dynamic_exponent(t: np.ndarray) -> np.ndarray:
    """Per row (last axis): k = max(0, bits(max |t|) - 7), the smallest shift with max|t| >> k <= 127
    (int64 (..., 1); t below 2**62)."""
    amax = np.max(np.abs(t.astype(np.int64)), axis=-1, keepdims=True)
    return np.maximum(io.bit_length(amax, 63) - DYN_CODE_BITS, 0)


def idynamic_int8(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of integer codes t (scale `base`, zero point 0) -> (int8 q, k) with q = round(t / 2**k) (half up),
    clipped to +-127, so that the row is q on the scale base * 2**k. Bound (tested): |q * 2**k - t| <= 2**(k-1),
    and 2**k <= max|t| / 64 when k > 0 (a step at most twice that of an exact per-row int8 scale)."""
    t = t.astype(np.int64)
    k = dynamic_exponent(t)
    return np.clip(shift_rows(t, k), -DYN_QMAX, DYN_QMAX).astype(np.int8), k


def shift_rows(v: np.ndarray, k: np.ndarray) -> np.ndarray:
    """round(v / 2**k) (half up) per row, k (M, 1): a row's codes onto its dynamic exponent (idynamic_int8), or
    a constant on the base scale (a bias, (N,)) onto rows whose accumulators are in units of base * 2**k.
    |error| <= 1/2 unit."""
    k = np.asarray(k, np.int64)
    half = np.where(k > 0, np.left_shift(np.int64(1), np.maximum(k - 1, 0)), 0)
    return (np.asarray(v, np.int64) + half) >> k


def requantize_rows(acc: np.ndarray, m0, shift, k: np.ndarray, zero_point: int = 0, qmin: int = -(1 << 31),
                    qmax: int = (1 << 31) - 1, out_dtype=np.int64) -> np.ndarray:
    """requantize(acc, m0, shift) of rows whose input carried a per-row exponent k (from idynamic_int8): the
    multiplier is m0 * 2**(k - shift), so the row's shift is shift - k. Where that is below 1 the product
    (at least 2**30 for any nonzero acc, 2**22 with the 23-bit mantissas of block-4 products) saturates."""
    v = acc.astype(np.int64) * np.asarray(m0, dtype=np.int64)
    eff = np.asarray(shift, dtype=np.int64) - k
    safe = np.maximum(eff, 1)
    out = (v + (np.int64(1) << (safe - 1))) >> safe
    out = np.where(eff >= 1, out, np.sign(v) * (np.int64(1) << 62))
    return np.clip(out + zero_point, qmin, qmax).astype(out_dtype)


def isilu_gate_dynamic(gate: np.ndarray, gate_scale: float, up: np.ndarray, up_zp: int, m0: int, shift: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """silu(gate) * up as dynamic per-row int8 (idynamic_int8): the int32 product (as in isilu_gate) is first
    requantized to the static base scale ((m0, shift) = gated_constants(gate_scale, up_scale, base)), int32.
    Returns (q int8, k): real = base * 2**k * q. Bound: that of isilu_gate with out_scale = base, then
    idynamic_int8's half step of 2**k base units."""
    prod = isilu(gate, gate_scale) * (up.astype(np.int64) - up_zp)
    t = requantize(prod, m0, shift, 0, -(1 << 31), (1 << 31) - 1, np.int64)
    return idynamic_int8(t)


# ---- rotary position embedding ---------------------------------------------------------------------------
ROPE_FRAC_BITS = 14  # cos/sin in Q14: two 16-bit products and their sum stay below 2**31


def rope_tables(head_dim: int, max_positions: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position * theta**(-2i / head_dim), i < head_dim / 2, in Q14 (int16, shape
    (max_positions, head_dim // 2)); the angles are computed in float64 at compile time."""
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head size, got {head_dim}")
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.arange(max_positions, dtype=np.float64)[:, None] * inv[None, :]
    one = 1 << ROPE_FRAC_BITS
    return (np.round(np.cos(ang) * one).astype(np.int16), np.round(np.sin(ang) * one).astype(np.int16))


def rope_constants(in_scale, out_scale) -> tuple[np.ndarray, np.ndarray]:
    """(m0, shift) per head: in_scale / out_scale / 2**14 (scales: scalars or per-head arrays)."""
    m = np.asarray(in_scale, dtype=np.float64) / np.asarray(out_scale, dtype=np.float64) / (1 << ROPE_FRAC_BITS)
    return quantize_multipliers(np.atleast_1d(m))


def irope(x: np.ndarray, positions: np.ndarray, tables: tuple[np.ndarray, np.ndarray], m0, shift,
          out_zp: int = 0, qmin: int = -128, qmax: int = 127, out_dtype=np.int8) -> np.ndarray:
    """Rotary embedding (the rotate-half convention of LLaMA in transformers) on integer codes.

    x: (heads, seq, head_dim) codes, zero point 0, at most 16-bit; positions: int32 (seq,), given at run time,
    each in [0, max_positions); tables from rope_tables; (m0, shift) per head (arrays of length heads or 1) from
    rope_constants. For i < head_dim / 2 with c, s the Q14 table entries at the position:
    out[i] = x[i] c - x[i + h] s, out[i + h] = x[i + h] c + x[i] s, in int32 (< 2**31), then requantized.
    Bound (tested): within 0.5 + 2**-15 (|x[i]| + |x[i + h]|) in_scale / out_scale output steps (plus the
    multiplier's 2**-30 relative error) of round(float rotation / out_scale), unclipped.
    """
    cos_t, sin_t = tables
    pos = np.asarray(positions).astype(np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= cos_t.shape[0]):
        raise ValueError(f"positions must lie in [0, {cos_t.shape[0]}), got {pos.min()}..{pos.max()}")
    half = x.shape[-1] // 2
    c = cos_t[pos].astype(np.int64)  # (seq, half)
    s = sin_t[pos].astype(np.int64)
    a = x.astype(np.int64)
    x1, x2 = a[..., :half], a[..., half:]
    acc = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    m0 = np.asarray(m0, dtype=np.int64).reshape(-1, 1, 1)
    shift = np.asarray(shift, dtype=np.int64).reshape(-1, 1, 1)
    return requantize(acc, m0, shift, out_zp, qmin, qmax, out_dtype)


# ---- the int8 key/value cache ----------------------------------------------------------------------------
KV_QMAX = 127  # keys and values: symmetric int8 (zero point 0), one static scale per layer and KV head


def kv_scales(absmax: np.ndarray) -> np.ndarray:
    """Static cache scales from calibrated |max| per (layer, KV head): absmax / 127 (a floor keeps 0 out)."""
    return np.maximum(np.asarray(absmax, dtype=np.float64), 1e-8) / KV_QMAX


@dataclass
class Int8KVCache:
    """Keys (after the rotary embedding) and values of every layer in int8, symmetric, with one static scale
    per (layer, KV head) fixed at compile time from calibration.

    Because the scales are static, a decode step writes codes on the same scale as the prefill that filled the
    cache before it, and nothing already stored is ever requantized: prefilling n tokens and decoding one gives
    the same integers as prefilling n + 1. Entry j of a layer holds the token at absolute position j.
    keys, values: int8 (layers, kv_heads, max_len, head_dim); k_scale, v_scale: float (layers, kv_heads),
    compile-time constants; length: the number of positions written (the next position to decode).
    """

    keys: np.ndarray
    values: np.ndarray
    k_scale: np.ndarray
    v_scale: np.ndarray
    length: int = 0

    @classmethod
    def empty(cls, layers: int, kv_heads: int, max_len: int, head_dim: int, k_scale, v_scale) -> Int8KVCache:
        shape = (layers, kv_heads, max_len, head_dim)
        return cls(np.zeros(shape, np.int8), np.zeros(shape, np.int8),
                   np.asarray(k_scale, np.float64).reshape(layers, kv_heads),
                   np.asarray(v_scale, np.float64).reshape(layers, kv_heads))

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]

    def write(self, layer: int, positions: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Store int8 codes k, v (kv_heads, seq, head_dim), already on this layer's cache scales, at the
        run-time positions (int32, seq)."""
        pos = np.asarray(positions).astype(np.int64)
        if k.dtype != np.int8 or v.dtype != np.int8:
            raise TypeError("the cache stores int8 codes on its own scales (requantize first)")
        if pos.size and (pos.min() < 0 or pos.max() >= self.max_len):
            raise ValueError(f"cache positions must lie in [0, {self.max_len}), got {pos.min()}..{pos.max()}")
        self.keys[layer][:, pos] = k
        self.values[layer][:, pos] = v

    def advance(self, positions: np.ndarray) -> None:
        """After every layer has written: the cache holds positions up to max(positions)."""
        self.length = max(self.length, int(np.max(positions)) + 1)


def kv_requant_constants(acc_scale, cache_scale) -> tuple[np.ndarray, np.ndarray]:
    """(m0, shift) per KV head bringing values of acc_scale (e.g. a v projection's int32 accumulator) onto the
    cache scale."""
    m = np.asarray(acc_scale, dtype=np.float64) / np.asarray(cache_scale, dtype=np.float64)
    return quantize_multipliers(np.atleast_1d(m))


# ---- grouped-query attention with the causal mask --------------------------------------------------------
MASKED_SCORE = -(1 << 31)  # a masked score: the integer softmax clips it to -2**30, where exp is 0
ATTN_PROB_SCALE = io.SOFTMAX_OUT_SCALE  # 8-bit probabilities: int8 codes of 1/255, zero point -128
ATTN_PROB_ZP = io.SOFTMAX_OUT_ZP
ATTN_PROB_L1_ERROR = 0.004  # per key: |p_int - p| <= 0.004 (the integer softmax's tested bound)
# 16-bit probabilities: codes round(p * 65535) (the integer softmax's fine form), and P.V as two u8 x s8 matmuls,
# (p >> 8).V * 256 + (p & 255).V, which is p.V exactly; |p.V| <= (65535 + keys / 2) * 127 fits int32.
# At 1/255 every probability below 1/510 is 0: over 128 keys that lost 0.34% perplexity on SmolLM2-135M.
ATTN_FINE_SCALE = 1.0 / io.SOFTMAX_FINE_LEVELS
ATTN_FINE_MAX = (1 << 16) - 1
ATTN_FINE_ERROR = 3.0e-4  # per key: |p_int - p| <= 3e-4 (tested)


def causal_mask(q_positions: np.ndarray, key_len: int) -> np.ndarray:
    """True where key j may be seen by the query at absolute position p: j <= p (keys beyond the cache's written
    length are never <= a valid query position)."""
    return np.arange(key_len)[None, :] <= np.asarray(q_positions).astype(np.int64)[:, None]


@dataclass(frozen=True)
class AttentionConstants:
    """Compile-time constants of igqa_attention for one layer.

    q_scale: (heads,) scales of the int8 queries; k_scale, v_scale: (kv_heads,) the cache's scales; out_scale,
    out_zp: the int8 attention output (the o projection's input); head_dim sets the 1/sqrt(d) factor, which
    only changes the softmax's input scale."""

    q_scale: np.ndarray
    k_scale: np.ndarray
    v_scale: np.ndarray
    out_scale: float
    out_zp: int
    head_dim: int
    fine_probs: bool = True  # 16-bit probabilities (two int8 matmuls for P.V); False: int8 codes of 1/255

    @property
    def groups(self) -> int:
        return len(self.q_scale) // len(self.k_scale)

    def score_scale(self, h: int) -> float:
        return float(self.q_scale[h] * self.k_scale[h // self.groups]) / math.sqrt(self.head_dim)

    def out_multiplier(self, h: int) -> tuple[int, int]:
        p_scale = ATTN_FINE_SCALE if self.fine_probs else ATTN_PROB_SCALE
        return quantize_multiplier(p_scale * float(self.v_scale[h // self.groups]) / self.out_scale)


def igqa_attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, q_positions: np.ndarray,
                   c: AttentionConstants) -> np.ndarray:
    """Causal grouped-query attention on int8 codes -> int8 (seq, heads * head_dim) on (c.out_scale, c.out_zp).

    q: int8 (heads, seq, head_dim), zero point 0; keys, values: int8 (kv_heads, key_len, head_dim) (a cache
    layer; entry j is position j), zero point 0; q_positions: int32 (seq,) absolute positions of the queries
    (run time). Query head h reads KV head h // (heads / kv_heads). Per head: scores q.k^T in int32 (|.| <
    head_dim * 2**14), masked (j > position) to MASKED_SCORE, the integer softmax (io.isoftmax) to 16-bit codes
    of 1/65535 (c.fine_probs; else int8 codes of 1/255 with zero point -128), then p.v in int32 and one
    fixed-point requantization.
    Bound (tested): per output, |error| <= 0.5 step + v_scale * max|v| * sum_j |p_int_j - p_j| / out_scale with
    |p_int_j - p_j| <= ATTN_FINE_ERROR (ATTN_PROB_L1_ERROR for 8-bit) against float attention of the same codes.
    """
    heads, seq, d = q.shape
    kv_heads, key_len, _ = keys.shape
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not divide into {kv_heads} KV heads")
    allowed = causal_mask(q_positions, key_len)
    out = np.empty((seq, heads, d), dtype=np.int8)
    for h in range(heads):
        g = h // (heads // kv_heads)
        scores = np.matmul(q[h].astype(np.int32), keys[g].astype(np.int32).T)
        scores = np.where(allowed, scores, MASKED_SCORE).astype(np.int32)
        if c.fine_probs:
            # round(p * 65535), which reaches 65536 for a certain key: capped so that p >> 8 fits u8
            p = np.minimum(io.isoftmax(scores, c.score_scale(h), fine=True).astype(np.int64), ATTN_FINE_MAX)
            vg = values[g].astype(np.int64)
            acc = ((p >> 8) @ vg << 8) + (p & 255) @ vg  # the two u8 x s8 matmuls; equals p @ vg
        else:
            p = io.isoftmax(scores, c.score_scale(h))  # int8, 1/255, zp -128
            acc = np.matmul(p.astype(np.int32) - ATTN_PROB_ZP, values[g].astype(np.int32))
        m0, sh = c.out_multiplier(h)
        out[:, h, :] = requantize(acc, m0, sh, c.out_zp)
    return out.reshape(seq, heads * d)
