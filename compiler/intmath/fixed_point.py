"""Fixed-point requantization: a real multiplier as an int32 mantissa and a right shift.

A real multiplier ``m > 0`` is written ``m = M0 * 2**-shift`` with ``M0`` an int32 in ``[2**30, 2**31)``.
Requantizing an int32 accumulator is then ``(int64(acc) * M0 + 2**(shift-1)) >> shift``: an arithmetic
shift, so rounding is *half up* (towards +infinity on ties). Compiled code uses the same formula, so the
two agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

MANTISSA_BITS = 31
MAX_SHIFT = 62  # int64(acc) * M0 stays below 2**62 for |acc| < 2**31; shifts beyond this round to 0


def quantize_multiplier(m: float, bits: int = MANTISSA_BITS) -> tuple[int, int]:
    """Return (M0, shift) with m ~= M0 * 2**-shift, M0 in [2**(bits-1), 2**bits), 1 <= shift <= MAX_SHIFT.
    Fewer mantissa bits for wider accumulators: int64(acc) * M0 plus the rounding half (< 2**61) stays below
    2**63 for |acc| < 2**(62 - bits)."""
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"requantization multiplier must be finite and >= 0, got {m}")
    if m == 0.0:
        return 0, 1
    frac, exp = math.frexp(m)  # m = frac * 2**exp, frac in [0.5, 1)
    m0 = int(round(frac * (1 << bits)))
    if m0 == (1 << bits):
        m0 //= 2
        exp += 1
    shift = bits - exp
    if shift < 1:
        raise ValueError(f"requantization multiplier {m} >= 2**{bits - 1} is not supported")
    if shift > MAX_SHIFT:
        return 0, 1  # below 2**(bits - 62) of one unit: every accumulator in the bound above rounds to zero
    return m0, shift


def quantize_multipliers(ms: np.ndarray, bits: int = MANTISSA_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Vector form of :func:`quantize_multiplier`: int64 arrays of mantissas and shifts."""
    pairs = [quantize_multiplier(float(m), bits) for m in np.asarray(ms, dtype=np.float64).ravel()]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64).reshape(np.shape(ms))
    sh = np.array([p[1] for p in pairs], dtype=np.int64).reshape(np.shape(ms))
    return m0, sh


def requantize(acc: np.ndarray, m0, shift, zero_point: int, qmin: int = -128, qmax: int = 127,
               out_dtype=np.int8) -> np.ndarray:
    """Reference requantization of an integer accumulator (broadcasting m0/shift on the last axis)."""
    x = np.asarray(acc).astype(np.int64) * np.asarray(m0, dtype=np.int64)
    sh = np.asarray(shift, dtype=np.int64)
    x = (x + (np.int64(1) << (sh - 1))) >> sh
    return np.clip(x + zero_point, qmin, qmax).astype(out_dtype)


def qmatmul(a_q: np.ndarray, za: int, b_q: np.ndarray, zb: int) -> np.ndarray:
    """Reference integer matmul: sum_k (a - za) (b - zb) in int32 (exact in int64, then cast)."""
    a = a_q.astype(np.int64) - za
    b = b_q.astype(np.int64) - zb
    return np.matmul(a, b).astype(np.int32)
