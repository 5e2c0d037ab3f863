"""Per-site smoothing strength (compiler/llm/smoothing.py) and the calibration rows it is chosen on."""

import numpy as np

from compiler.llm import smoothing as sm
from compiler.llm.calibrate import Ranges
from compiler.llm.integer import smoothing


def _site(rng, outlier):
    x = rng.normal(size=(300, 32)).astype(np.float32)
    if outlier:
        x[:, 3] *= 60.0  # one loud channel, as after LLaMA's norms
    w = rng.normal(size=(32, 16)).astype(np.float32)
    return x, w


def _choose(x, w, grid=sm.ALPHA_GRID):
    xabs, wrows = np.abs(x).max(0), np.abs(w).max(1)

    def factors(a):
        f = smoothing(xabs, wrows, a)
        return f, f

    def round_trip(f):
        return sm.static_round_trip(float((x / f).min()), float((x / f).max()))

    return sm.choose_alpha(x, w, factors, round_trip, grid)


def test_an_outlier_channel_is_smoothed_and_the_choice_is_the_best_of_the_grid():
    rng = np.random.default_rng(0)
    x, w = _site(rng, outlier=True)
    best = _choose(x, w)
    assert best is not None

    ref = x @ w
    errs = {}
    for a in sm.ALPHA_GRID:
        f = smoothing(np.abs(x).max(0), np.abs(w).max(1), a)
        xq = sm.static_round_trip(float((x / f).min()), float((x / f).max()))(x / f)
        got = xq @ sm.weight_round_trip(w * f[:, None])
        errs[a] = float(np.sum((got - ref) ** 2))
    assert errs[best] == min(errs.values()) and errs[best] < errs[None] / 4
    assert sm.choose_alpha(None, w, None, None) == 0.5  # no rows: the default strength


def test_dynamic_round_trip_matches_the_integer_rows():
    from compiler.intmath import llama as il

    rng = np.random.default_rng(1)
    t = rng.integers(-(1 << 20), 1 << 20, size=(6, 40))
    t[0] *= 300
    q, k = il.idynamic_int8(t)
    base = 1e-3
    got = sm.dynamic_round_trip(base)(t * base)
    assert np.allclose(got, q * np.exp2(k) * base, rtol=0, atol=base * np.exp2(k).max() * 0.51)


def test_samples_keep_the_loudest_row_and_are_bounded():
    r = Ranges()
    rng = np.random.default_rng(2)
    for n in range(30):
        x = rng.normal(size=(40, 8)).astype(np.float32)
        if n == 17:
            x[11, 2] = 500.0
        r.record("ffn_mid", 0, x)
    rows = r.samples("ffn_mid", 0, n=64)
    assert len(rows) <= 64 and np.abs(rows).max() == 500.0
    assert r.samples("q", 0) is None
