"""NumPy reference (the specification) of the integer nonlinearities and the rescaling add.

Every function here computes with integers only (int64 intermediates); float appears only in compile-time
constants (tables, multipliers), never on data. The Relax emitters in compiler/passes/intops.py produce the
same bits; tests/compiler/passes/test_integer_ops.py checks them against these twins.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.intmath.fixed_point import quantize_multiplier

# ---- softmax ---------------------------------------------------------------------------------------------
SOFTMAX_TABLE_BITS = 8  # 256-entry table of 2**-f for f in [0, 1)
SOFTMAX_ONE = 1 << 15  # exp values in Q15
SOFTMAX_OUT_SCALE = 1.0 / 255.0  # the int8 form
SOFTMAX_OUT_ZP = -128
SOFTMAX_FINE_LEVELS = 65535  # the fine form: int32 codes of p * 65535 (requantized by its consumer)


SOFTMAX_MAX_SHIFT = 63  # differences beyond 63 * ln 2 give exp = 0 (the Q15 table shifted out)
SOFTMAX_RECIP_BITS = 46  # per-row reciprocal of the row sum, Q46
SOFTMAX_LN2_BITS = 12  # ln 2 is represented by 2**11..2**12 units of the (shifted) input


def divider(divisor: int, max_dividend: int) -> tuple[int, int]:
    """(m, s) with (x * m) >> s == x // divisor for every 0 <= x <= max_dividend (checked exhaustively, so the
    compiled code never divides by a constant)."""
    x = np.arange(max_dividend + 1, dtype=np.int64)
    want = x // divisor
    for s in range(int(math.ceil(math.log2(max_dividend + 1))) + int(math.ceil(math.log2(divisor + 1))),
                   62 - int(math.ceil(math.log2(max_dividend + 1)))):
        m = (1 << s) // divisor + 1
        if np.array_equal((x * m) >> s, want):
            return m, s
    raise ValueError(f"no exact multiply-shift for // {divisor} up to {max_dividend}")


def softmax_constants(scale: float) -> dict:
    """ln 2 in input units (q_ln2, at least 1), the Q15 table of 2**-((j + 0.5) / 256), and exact multiply-shift
    forms of the two divisions by q_ln2."""
    # bring ln 2 to 2**11..2**12 input units: fine scales drop low bits of the difference (pre > 0), coarse
    # scales scale it up (pre < 0) so that rounding q_ln2 costs at most 2**-12 of the exponent's slope
    pre = int(math.log(2.0) / scale).bit_length() - SOFTMAX_LN2_BITS
    q_ln2 = max(1, int(round(math.log(2.0) / (scale * 2.0 ** pre))))
    n = 1 << SOFTMAX_TABLE_BITS
    table = np.round(SOFTMAX_ONE * np.exp2(-(np.arange(n) + 0.5) / n)).astype(np.int64)
    d_max = (SOFTMAX_MAX_SHIFT + 1) * q_ln2 - 1
    return {"pre_shift": pre, "q_ln2": q_ln2, "table": table, "d_max": d_max, "z": divider(q_ln2, d_max),
            "idx": divider(q_ln2, (q_ln2 << SOFTMAX_TABLE_BITS) - 1)}


def iexp_q15(d: np.ndarray, c: dict) -> np.ndarray:
    """exp(-d * scale) in Q15 for integer d >= 0 (int64), c from softmax_constants(scale)."""
    pre = c["pre_shift"]
    d = np.minimum(d >> pre if pre >= 0 else np.minimum(d, c["d_max"]) << -pre, c["d_max"])
    z = (d * c["z"][0]) >> c["z"][1]
    r = d - z * c["q_ln2"]
    idx = ((r << SOFTMAX_TABLE_BITS) * c["idx"][0]) >> c["idx"][1]
    return c["table"][idx] >> z


def isoftmax(x: np.ndarray, scale: float, axis: int = -1, fine: bool = False) -> np.ndarray:
    """Integer softmax of x (any integer dtype, real = scale * (x - zp); zp cancels) -> int8 with scale 1/255,
    zero point -128.

    exp(-d * scale) for d = max - x >= 0 is 2**-z * 2**-(r / q_ln2) with z = d // q_ln2 and r = d % q_ln2:
    a shift and a 256-entry table (relative error <= 0.14% for scales well below ln 2); the divisions by the
    constant q_ln2 are exact multiply-shifts. The row sum is inverted once per row (Q46, rounded) and each
    probability is a multiply and a rounding shift. `fine`: int32 codes round(p * 65535) instead.
    """
    c = softmax_constants(scale)
    x = x.astype(np.int64)
    e = iexp_q15(np.max(x, axis=axis, keepdims=True) - x, c)
    s = np.sum(e, axis=axis, keepdims=True)
    k = SOFTMAX_RECIP_BITS
    recip = ((np.int64(1) << k) + (s >> 1)) // s
    levels = SOFTMAX_FINE_LEVELS if fine else 255
    q = (e * levels * recip + (np.int64(1) << (k - 1))) >> k
    if fine:
        return q.astype(np.int32)
    return np.clip(q + SOFTMAX_OUT_ZP, -128, 127).astype(np.int8)


# ---- LayerNorm -------------------------------------------------------------------------------------------
LN_FRAC_BITS = 12  # the normalized value (x - mean) / std in Q12
LN_SQRT_ITERS = 8  # Newton steps from 2**ceil(bits(n) / 2), within 2x of sqrt(n): quadratic convergence
LN_SQRT_MAX_BITS = 54
LN_SQUARE_BITS = 25
LN_RECIP_BITS = 30  # per-row reciprocal of std: the normalization is a multiply and a shift per element
LN_MAX_SHIFT = 40  # per-channel output shift cap: |beta / out_scale| * 2**40 stays far inside int64  # |H * (x - mean)| is shifted below 2**25 before squaring


def layernorm_shift(hidden: int, bound: int) -> int:
    """Shift that brings |H * (x - mean)| to below 2**25 for |x| <= bound: right (> 0) so that sums of squares fit
    int64, or left (< 0) so that small inputs keep the square root's resolution."""
    need = math.ceil(math.log2(max(2 * hidden * bound, 2)))
    return need - LN_SQUARE_BITS


def bit_length(n: np.ndarray, max_bits: int = LN_SQRT_MAX_BITS) -> np.ndarray:
    """Bits of 0 <= n < 2**max_bits, by comparisons (no data-dependent branch)."""
    bits = np.zeros_like(n)
    for i in range(max_bits):
        bits = bits + (n >= (np.int64(1) << i)).astype(np.int64)
    return bits


def isqrt(n: np.ndarray) -> np.ndarray:
    """floor(sqrt(n)) for 0 <= n < 2**54: the bit length by comparisons, then Newton steps from above."""
    n = n.astype(np.int64)
    r = np.left_shift(np.int64(1), (bit_length(n) + 1) >> 1)
    for _ in range(LN_SQRT_ITERS):
        nr = (r + n // r) >> 1
        r = np.maximum(np.minimum(r, nr), 1)
    return r


def layernorm_constants(scale: float, hidden: int, bound: int, eps: float, gamma: np.ndarray, beta: np.ndarray,
                        out_scale: float, out_zp: int) -> dict:
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
    return {"shift": k, "eps": eps_int, "m0": m0, "sh": sh, "bias": bias, "zp": int(out_zp)}


def ilayernorm(x: np.ndarray, c: dict, qmin: int = -128, qmax: int = 127, out_dtype=np.int8) -> np.ndarray:
    """Integer LayerNorm over the last axis. The zero point and the scale of x cancel except in eps (folded
    into c["eps"]); gamma, beta and the output scale are per-channel fixed-point constants (c from
    layernorm_constants)."""
    x = x.astype(np.int64)
    h = x.shape[-1]
    y = h * x - np.sum(x, axis=-1, keepdims=True)
    y = y >> c["shift"] if c["shift"] >= 0 else y << -c["shift"]
    n = np.sum(y * y, axis=-1, keepdims=True) // h + c["eps"]
    std = isqrt(n)
    # (y << LN_FRAC_BITS) // std through one division per row: std < 2**e with e = ceil(bits(n) / 2), so the
    # reciprocal 2**(LN_RECIP_BITS + e) // std lies in [2**LN_RECIP_BITS, 2**(LN_RECIP_BITS + 2)) and
    # |y| * reciprocal < 2**(LN_SQUARE_BITS + LN_RECIP_BITS + 2) stays inside int64
    e = (bit_length(n) + 1) >> 1
    recip = np.left_shift(np.int64(1), LN_RECIP_BITS + e) // std
    u = (y * recip) >> (LN_RECIP_BITS + e - LN_FRAC_BITS)
    sh = c["sh"]
    out = (u * c["m0"] + c["bias"] + (np.int64(1) << (sh - 1))) >> sh
    return np.clip(out + c["zp"], qmin, qmax).astype(out_dtype)


# ---- rescaling add ---------------------------------------------------------------------------------------
def rescale(x: np.ndarray, zp: int, m0: int, shift: int) -> np.ndarray:
    """(x - zp) * (m0 * 2**-shift) rounded half up, int64 (no clipping)."""
    v = (x.astype(np.int64) - zp) * m0
    return (v + (np.int64(1) << (shift - 1))) >> shift


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


def log_softmax_constants(scale: float) -> dict:
    """Softmax exp constants, the log2 table, and ln 2 / (scale * 2**16) as a fixed-point multiplier (Q16 log2
    -> input units)."""
    from compiler.intmath.fixed_point import quantize_multiplier

    m0, sh = quantize_multiplier(math.log(2.0) / (scale * (1 << LOG2_FRAC_BITS)))
    return {"exp": softmax_constants(scale), "log2": log2_table(), "m0": m0, "sh": sh}


def ilog_softmax(x: np.ndarray, scale: float) -> np.ndarray:
    """Integer log-softmax over the last axis -> int64 in the input's units (real = scale * out, zero point 0).

    out = (x - max) - round(ln(sum exp) / scale): the exps are the softmax's Q15 values (sum >= 2**15 * 0.998),
    the log2 of the sum is its bit length plus a table of the next LOG2_TABLE_BITS mantissa bits (Q16), and
    ln 2 / scale is a fixed-point multiply. Error of the log-sum-exp: <= 0.0021 (table of exp) + 0.0011 (log2
    table) nats, plus half an input step."""
    c = log_softmax_constants(scale)
    x = x.astype(np.int64)
    d = np.max(x, axis=-1, keepdims=True) - x
    s = np.sum(iexp_q15(d, c["exp"]), axis=-1, keepdims=True) << LOG2_FRAC_BITS  # Q31
    bits = bit_length(s, LOG_SUM_BITS)
    idx = (s >> (bits - 1 - LOG2_TABLE_BITS)) - (1 << LOG2_TABLE_BITS)
    log2q = ((bits - 32) << LOG2_FRAC_BITS) + c["log2"][idx]  # log2(sum / 2**15) in Q16
    lse = rescale(log2q, 0, c["m0"], c["sh"])
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
