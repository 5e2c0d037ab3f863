"""4-bit block weights: a matrix stored as 4-bit codes with an integer scale and offset per block of 32 inputs, the
form of a GGUF's Q4_0 / Q4_1 tensors, kept instead of being re-quantized to int8 per channel.

A (K, N) weight (K inputs, a multiple of ``BLOCK``) is, per output column n and block b of ``BLOCK`` consecutive
inputs, ``W[k, n] = d[b, n] * q[k, n] + m[b, n]`` with codes ``q`` in 0..15 and integers ``d``, ``m`` (int16
range); the float weight is ``scale[n] * W[k, n]``. ``fit_block4`` finds this form when the float matrix already
is 4-bit per block (each block's values are ``lo + j * step``, j in 0..15, as dequantized Q4_1 or Q4_0 blocks
are). d and m are rounded to the integer grid of one column, ``max_weight_for(K)`` units for the column's
largest |w|: the integers reproduce the source within 8 units of that grid (15 half-units of d, one of m). That
is finer than int8's half step (1/254 of the column's max) only while the grid has at least 8 * 254 units, i.e.
K <= 4096: beyond it ``fit_block4`` returns None and the matrix stays int8, as it does for any matrix that is
not 4-bit per block.

The product with integer activations (``matmul``): per block the activation x code products summed, times d,
plus m times the block's activation sum. Bound: with |W| <= ``max_weight_for(K)``, |sum_k x[k] W[k, n]| < 2**31
for any activations |x| <= 256 (a byte, or int8 minus an int8 zero point), and so is every partial sum over a
prefix of the blocks (``kernel_sums`` checks the kernels' order of operations). The decoder multiplies its int8
activations by per-input integers 1..256 first (the smoothing factors, ``integer_multipliers``), an int16; the
kernels take its two bytes apart (two such products, each within the bound) and join them in int64
(schedules/block4_gemm.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32  # inputs per block (GGUF Q4_0 / Q4_1 blocks)
LEVELS = 16  # codes 0..15
ACT_BOUND = 256  # |activation| the int32 bound allows (int8 minus an int8 zero point)
INT16_MAX = (1 << 15) - 1
EXACT_TOL = 1e-4  # a block is 4-bit if every value lies within this fraction of a step of a level
ROUNDING_UNITS = LEVELS // 2  # |W - source| <= 8 grid units: d rounded (15 halves) and m (one half)
MIN_GRID = ROUNDING_UNITS * 254 + ROUNDING_UNITS + 1  # a grid finer than int8's half step (1/254 of the max)


def max_weight_for(k: int) -> int:
    """The largest |W| (integer weight) with sum over k inputs of |a| |W| < 2**31 for |a| <= ACT_BOUND; at most
    the int16 range (d and m are stored as int16)."""
    return int(min(INT16_MAX, ((1 << 31) - 1) // (ACT_BOUND * k)))


@dataclass(frozen=True)
class Block4Weight:
    """``W[k, n] = d[k // BLOCK, n] * q[k, n] + m[k // BLOCK, n]``; the float weight is ``scale[n] * W``."""

    q: np.ndarray  # (K, N) uint8, 0..15
    d: np.ndarray  # (K / BLOCK, N) int32, |d| < 2**15
    m: np.ndarray  # (K / BLOCK, N) int32, |m| < 2**15
    scale: np.ndarray  # (N,) float64

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def values(self) -> np.ndarray:
        """The integer weight W (K, N) as int64."""
        k = self.q.shape[0]
        rep = lambda t: np.repeat(t.astype(np.int64), BLOCK, axis=0)[:k]  # noqa: E731
        return rep(self.d) * self.q.astype(np.int64) + rep(self.m)


def _levels(w: np.ndarray):
    """Per block: (lo, step, codes, exact?) of the finest grid of at most 16 levels from the block's min to its
    max on which every value lies: span / 15 first (a Q4_1 block uses its min and max levels), then coarser
    divisions of the span for the blocks not yet exact (a Q4_0 block, symmetric, may leave its top levels
    unused)."""
    k, n = w.shape
    b = w.reshape(k // BLOCK, BLOCK, n).astype(np.float64)
    lo, hi = b.min(axis=1), b.max(axis=1)
    tol = EXACT_TOL * np.maximum(np.abs(lo), np.abs(hi)) / (LEVELS - 1) + 1e-30
    step = np.zeros_like(lo)
    codes = np.zeros(b.shape, np.uint8)
    exact = hi - lo <= tol  # constant blocks: code 0, step 0
    for r in range(LEVELS - 1, 0, -1):
        todo = ~exact
        if not todo.any():
            break
        st = (hi - lo) / r
        j = np.round((b - lo[:, None]) / np.where(st > 0, st, 1.0)[:, None])
        ok = todo & (np.abs(j * st[:, None] + lo[:, None] - b).max(axis=1) <= EXACT_TOL * st)
        step = np.where(ok, st, step)
        codes = np.where(ok[:, None], j, codes).astype(np.uint8)
        exact |= ok
    return lo, step, codes, exact


def fit_block4(w: np.ndarray) -> Block4Weight | None:
    """The block form of a float (K, N) weight if each of its blocks of ``BLOCK`` inputs is 4-bit and the
    integer grid of K inputs is finer than int8 (module docstring); else None (K not a multiple of ``BLOCK``
    included)."""
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[0] % BLOCK or w.shape[0] == 0 or max_weight_for(w.shape[0]) < MIN_GRID:
        return None
    lo, step, q, exact = _levels(w)
    if not exact.all():
        return None
    k, n = w.shape
    top = np.maximum(np.abs(lo), np.abs(lo + (LEVELS - 1) * step)).max(axis=0)  # per column: max |w|
    limit = max_weight_for(k) - ROUNDING_UNITS - 1  # room for rounding d (15 x 1/2) and m (1/2)
    scale = np.maximum(top, 1e-30) / limit
    d = np.round(step / scale).astype(np.int64)
    m = np.round(lo / scale).astype(np.int64)
    d = np.clip(d, 0, (limit + limit) // (LEVELS - 1))
    m = np.clip(m, -limit, limit)
    return Block4Weight(q.reshape(k, n), d.astype(np.int32), m.astype(np.int32), scale.astype(np.float64))


def matmul(a: np.ndarray, bw: Block4Weight) -> np.ndarray:
    """int64 ``a @ W`` for integer activations (M, K) (the twin of the kernels; exact)."""
    return np.matmul(a.astype(np.int64), bw.values())


def kernel_sums(x: np.ndarray, bw: Block4Weight) -> tuple[np.ndarray, int]:
    """(x @ W, the largest |value| the kernels' int32 arithmetic holds) for activations (M, K) with |x| <= 256:
    per block ``blk * d + s * m`` (blk: the block's x x code sums, s: its x sums), then added to the running sum,
    block after block, as schedules/block4_gemm.py does for each byte of its int16 activations."""
    k, n = bw.q.shape
    xb = x.astype(np.int64).reshape(x.shape[0], k // BLOCK, BLOCK)  # (M, B, 32)
    qb = bw.q.astype(np.int64).reshape(k // BLOCK, BLOCK, n)  # (B, 32, N)
    blk = np.einsum("mbt,btn->mbn", xb, qb)
    s = xb.sum(axis=2)[:, :, None]
    terms = (blk * bw.d[None], s * bw.m[None], blk * bw.d[None] + s * bw.m[None])
    running = np.cumsum(terms[2], axis=1)
    peak = max(int(np.abs(t).max(initial=0)) for t in (*terms, running, blk))
    return running[:, -1], peak


MULT_LEVELS = 256  # per-input multipliers 1..256: an int8 activation times one stays within int16


def integer_multipliers(s: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-input factors (smoothing, > 0) as integers times one unit: (S int32 in 1..MULT_LEVELS, unit) with
    S * unit ~ s, unit = max(s) / MULT_LEVELS. A block-4 weight cannot absorb a factor per input (it would break
    the blocks), so the product multiplies the activations by S instead: an int8 activation times S is an int16
    (the kernels split it into two bytes). Factors below one unit become one unit (less smoothing there)."""
    s = np.asarray(s, np.float64)
    unit = float(s.max()) / MULT_LEVELS
    return np.clip(np.round(s / unit), 1, MULT_LEVELS).astype(np.int32), unit
