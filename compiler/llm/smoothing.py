"""The smoothing strength of each smoothed matmul input of an integer LLaMA, chosen on calibration rows.

x @ W == (x / s) @ (diag(s) W) for positive per-channel s = max|x|**alpha / max|W|**(1 - alpha) (SmoothQuant).
No single alpha suits every site of SmolLM2-135M (perplexity gap +3.6% at 0.5, +4.7% at 0.8, +9.5% at 0.3), so
each site (layer x {attn_in, attn_out, ffn_in, ffn_mid, final}) gets the alpha of ALPHA_GRID whose int8 round
trip (the activation as the integer model quantizes it, the weight per output channel) gives the smallest
relative output error on the sampled calibration rows. Float here is compile time only: it ranks candidates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ALPHA_GRID = (None, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # None: no smoothing
SEARCH_ROWS = 256


def weight_round_trip(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output column (w is (in, out))."""
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
    return np.clip(np.round(w / scale), -127, 127) * scale


def static_round_trip(lo: float, hi: float) -> Callable[[np.ndarray], np.ndarray]:
    """Per-tensor asymmetric int8 over the calibrated [lo, hi] (already divided by the factors)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zp = np.clip(np.round(-128 - lo / scale), -128, 127)
    return lambda x: (np.clip(np.round(x / scale) + zp, -128, 127) - zp) * scale


def dynamic_round_trip(base: float) -> Callable[[np.ndarray], np.ndarray]:
    """Per-row int8 on base * 2**k (as intmath.llama.idynamic_int8)."""
    def rt(x):
        amax = np.abs(x).max(axis=-1, keepdims=True) / base
        k = np.maximum(np.ceil(np.log2(np.maximum(amax, 1e-30) / 127.0)), 0)
        step = base * np.exp2(k)
        return np.clip(np.round(x / step), -127, 127) * step
    return rt


def choose_alpha(rows: np.ndarray | None, w: np.ndarray, factors: Callable, round_trip: Callable,
                 grid=ALPHA_GRID, exact_weights: bool = False):
    """The alpha of `grid` minimizing ||Q(rows / s) Q(W s) - rows W||^2 / ||rows W||^2.

    factors(alpha) -> (s per input channel of w, s per channel of rows); round_trip(s_rows) -> the activation's
    int8 round trip for those factors; exact_weights: W s is kept exactly (block-4 weights with the factors as
    integer multipliers of the activations), no weight round trip. Without rows, 0.5."""
    if rows is None or len(rows) == 0:
        return 0.5
    x = rows[:SEARCH_ROWS].astype(np.float32)
    w = w.astype(np.float32)
    ref = x @ w
    norm = max(float(np.sum(ref.astype(np.float64) ** 2)), 1e-30)

    def error(alpha):
        s_w, s_x = factors(alpha)
        ws = w * s_w[:, None]
        got = round_trip(s_x)(x / s_x) @ (ws if exact_weights else weight_round_trip(ws).astype(np.float32))
        return float(np.sum((got - ref).astype(np.float64) ** 2)) / norm

    return min(grid, key=error)
