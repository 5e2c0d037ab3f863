"""Calibration methods: how an observed TensorRange becomes the real interval that int8 covers.

A registry (name -> function); `compile --calibration-method NAME` picks one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler.calibrate.table import TensorRange

KL_LEVELS = 128  # int8 levels on one side of zero
KL_STRIDE = 16  # candidate thresholds every KL_STRIDE bins


def _minmax(r: TensorRange) -> tuple[float, float]:
    return r.min, r.max


def _percentile(r: TensorRange) -> tuple[float, float]:
    return r.pct_lo, r.pct_hi


def kl_threshold(hist: np.ndarray, top: float, levels: int = KL_LEVELS) -> float:
    """TensorRT-style entropy calibration: the clipping threshold T over a histogram of |x| (equal bins over
    [0, top]) that minimizes KL(P || Q), P the histogram clipped at T (outliers folded into its last bin), Q
    that histogram quantized to `levels` levels (each level spread evenly over its non-empty bins)."""
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.size
    if n <= levels or hist.sum() == 0:
        return top
    best, best_i = np.inf, n
    for i in list(range(levels, n, KL_STRIDE)) + [n]:
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        edges = np.linspace(0, i, levels + 1).astype(int)
        q = np.zeros(i)
        for lo, hi in zip(edges[:-1], edges[1:]):
            chunk = hist[lo:hi]
            nz = chunk > 0
            if nz.any():
                q[lo:hi][nz] = chunk.sum() / nz.sum()
        ps, qs = p / p.sum(), q / max(q.sum(), 1e-300)
        mask = ps > 0
        kl = float(np.sum(ps[mask] * np.log(ps[mask] / np.maximum(qs[mask], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return top * best_i / n


def _entropy(r: TensorRange) -> tuple[float, float]:
    """Min/max clipped to the KL threshold (min/max when the table has no histogram)."""
    if not r.hist:
        return r.min, r.max
    t = kl_threshold(np.asarray(r.hist), r.hist_max)
    return max(r.min, -t), min(r.max, t)


def mse_threshold(hist: np.ndarray, top: float, levels: int = KL_LEVELS) -> float:
    """The clipping threshold T over a histogram of |x| (equal bins over [0, top]) that minimizes the expected
    squared error of int8 quantization: rounding noise step**2 / 12 (step = T / levels) for values inside,
    (|x| - T)**2 for values clipped (bin centres)."""
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.size
    if n == 0 or hist.sum() == 0:
        return top
    centres = (np.arange(n) + 0.5) * top / n
    best, best_t = np.inf, top
    for i in range(1, n + 1):
        t = top * i / n
        inside = hist[:i].sum()
        err = inside * (t / levels) ** 2 / 12 + float(np.sum(hist[i:] * (centres[i:] - t) ** 2))
        if err < best:
            best, best_t = err, t
    return best_t


def _mse(r: TensorRange) -> tuple[float, float]:
    """Min/max clipped to the MSE-optimal threshold (min/max when the table has no histogram)."""
    if not r.hist:
        return r.min, r.max
    t = mse_threshold(np.asarray(r.hist), r.hist_max)
    return max(r.min, -t), min(r.max, t)


METHODS: dict[str, Callable[[TensorRange], tuple[float, float]]] = {
    "minmax": _minmax,
    "percentile": _percentile,
    "entropy": _entropy,
    "mse": _mse,
}
