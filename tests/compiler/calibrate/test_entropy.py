"""Entropy (KL-divergence) calibration: the threshold clips rare outliers, keeps a uniform range, and the
streaming |x| histogram re-bins without losing counts."""

import numpy as np

from compiler.calibrate.collect import HIST_BINS, _AbsHistogram
from compiler.calibrate.methods import METHODS, kl_threshold
from compiler.calibrate.table import TensorRange


def _hist(x, parts=1):
    h = _AbsHistogram()
    for p in np.array_split(x, parts):
        h.add(p)
    return h.result()


def test_gaussian_with_outliers_is_clipped_near_a_few_sigma():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000)
    x[:4] = [60.0, -45.0, 30.0, 52.0]
    counts, top = _hist(x, parts=7)
    t = kl_threshold(np.array(counts), top)
    assert 2.5 < t < 6.0  # minmax would keep 60


def test_uniform_keeps_its_range():
    x = np.random.default_rng(1).uniform(-3, 3, 100_000)
    counts, top = _hist(x)
    assert kl_threshold(np.array(counts), top) >= 0.95 * top


def test_rebinning_keeps_every_count_and_the_shape():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0, 1, 10_000), rng.uniform(0, 4, 10_000)
    counts, top = _hist(np.concatenate([a, b]), parts=2)  # the second part quadruples the range
    assert top == np.abs(np.concatenate([a, b])).max() and sum(counts) == 20_000
    direct = np.histogram(np.concatenate([a, b]), bins=HIST_BINS, range=(0, top))[0]
    coarse = lambda c: np.add.reduceat(np.asarray(c), np.arange(0, HIST_BINS, 64))  # noqa: E731
    assert np.abs(coarse(counts) - coarse(direct)).max() <= 0.02 * 20_000 / (HIST_BINS / 64) + 64


def test_registry_method_and_json_round_trip():
    x = np.random.default_rng(3).standard_normal(50_000)
    x[0] = 40.0
    counts, top = _hist(x)
    r = TensorRange(float(x.min()), float(x.max()), -3.0, 3.0, counts, top)
    assert TensorRange.from_json(r.to_json()) == r
    lo, hi = METHODS["entropy"](r)
    assert lo == -hi and 2.5 < hi < 8.0  # symmetric threshold: the outlier at 40 is clipped
    no_hist = TensorRange(-1.0, 2.0, -0.5, 0.5)
    assert METHODS["entropy"](no_hist) == (-1.0, 2.0)


def test_mse_threshold_clips_rare_outliers_and_keeps_a_uniform_range():
    from compiler.calibrate.methods import mse_threshold

    rng = np.random.default_rng(0)
    x = np.abs(np.concatenate([rng.standard_normal(200000), [60.0]]))
    hist, edges = np.histogram(x, bins=2048, range=(0, x.max()))
    t = mse_threshold(hist, x.max())
    assert 2.0 < t < 40.0  # below the single outlier at 60: clipping it costs less than coarse steps for all
    u = rng.random(100000)
    hist, _ = np.histogram(u, bins=2048, range=(0, 1.0))
    assert mse_threshold(hist, 1.0) > 0.97
