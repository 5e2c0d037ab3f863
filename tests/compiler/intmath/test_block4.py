"""4-bit block weights (compiler/intmath/block4.py): the block form is found exactly for Q4_1 and Q4_0 blocks and
refused for anything else; the integers reproduce the source to 1 / max_weight of each column's range and stay
within the int32 bound, as is every partial sum the kernels form (kernel_sums: their order of operations),
and a K whose grid would be coarser than int8 stays int8; smoothing factors become integer multipliers within
1..256."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.intmath import block4 as b4


def _q4_1(rng, k, n):
    """Dequantized Q4_1 blocks: lo + j * step, j in 0..15 with 0 and 15 present (llama.cpp's min/max rounding)."""
    lo = rng.normal(0, 0.05, (k // 32, n))
    step = rng.uniform(1e-3, 1e-2, (k // 32, n))
    j = rng.integers(0, 16, (k, n))
    j[::32], j[1::32] = 0, 15
    return (np.repeat(lo, 32, 0) + np.repeat(step, 32, 0) * j).astype(np.float32)


def _q4_0(rng, k, n):
    """Dequantized Q4_0 blocks: d * (j - 8), j in 0..15, the top levels possibly unused (symmetric scale)."""
    d = rng.uniform(1e-3, 1e-2, (k // 32, n))
    j = rng.integers(0, 13, (k, n))  # levels 13..15 unused in every block
    j[::32] = 0
    return (np.repeat(d, 32, 0) * (j - 8)).astype(np.float32)


@pytest.mark.parametrize("make", [_q4_1, _q4_0], ids=["q4_1", "q4_0"])
def test_4_bit_blocks_are_found_and_kept_to_the_column_bound(make):
    rng = np.random.default_rng(0)
    k, n = 96, 24
    w = make(rng, k, n)
    bw = b4.fit_block4(w)
    assert bw is not None and bw.q.max() <= 15 and bw.q.dtype == np.uint8
    vals = bw.values()
    limit = b4.max_weight_for(k)
    assert np.abs(vals).max() <= limit
    assert np.abs(bw.d).max() <= b4.INT16_MAX and np.abs(bw.m).max() <= b4.INT16_MAX
    err = np.abs(vals * bw.scale - w).max(axis=0)
    # d rounded (half a unit, times up to 15) and m rounded (half a unit): 8 units of a column's max / the limit,
    # 16 times finer than int8's half step at this K
    assert np.all(err <= 8.0 / (limit - 9) * np.abs(w).max(axis=0) * 1.001)


def test_other_matrices_stay_int8():
    rng = np.random.default_rng(1)
    assert b4.fit_block4(rng.normal(size=(64, 8))) is None  # not on a 16-level grid per block
    assert b4.fit_block4(_q4_1(rng, 64, 8)[:48]) is None  # K not a multiple of 32
    w = _q4_1(rng, 64, 8)
    w[5, 3] += 1e-4  # one value off its grid
    assert b4.fit_block4(w) is None


def test_constant_blocks():
    w = np.zeros((64, 4), np.float32)
    w[32:, 1] = 0.5
    bw = b4.fit_block4(w)
    assert bw is not None
    np.testing.assert_allclose(bw.values() * bw.scale, w, atol=1e-6)


@pytest.mark.parametrize("k", [32, 576, 1536, 4096])
def test_the_kernels_int32_sums_stay_in_bounds_at_the_extremes(k):
    """Columns at the bound (blocks of d = 0, m = +limit, then one of the widest d): every int32 value the kernels
    form, block terms and running sums, stays below 2**31 for activations of +-256 and 0..255."""
    rng = np.random.default_rng(2)
    n = 16
    bw = b4.fit_block4(_q4_1(rng, k, n))
    limit = b4.max_weight_for(k)
    d, m, q = bw.d.copy(), bw.m.copy(), bw.q.copy()
    d[:, 0], m[:, 0] = 0, limit  # column 0: every weight +limit
    d[:, 1], m[:, 1], q[:, 1] = (2 * limit) // 15, -limit, 15  # column 1: the widest d, codes 15
    d[-1, 2], m[-1, 2], q[-32:, 2] = (2 * limit) // 15, -limit, 15  # column 2: only the last block wide
    m[:-1, 2], d[:-1, 2] = limit, 0
    bw = b4.Block4Weight(q, d, m, bw.scale)
    assert np.abs(bw.values()).max() <= limit
    for x in (np.full((1, k), -256), np.full((1, k), 255), np.where(np.arange(k) % 2, 255, 0)[None]):
        got, peak = b4.kernel_sums(x, bw)
        np.testing.assert_array_equal(got, b4.matmul(x, bw))
        assert peak < 2 ** 31, (k, peak)


def test_a_grid_coarser_than_int8_stays_int8():
    rng = np.random.default_rng(4)
    assert b4.fit_block4(_q4_1(rng, 4096, 16)) is not None
    assert b4.max_weight_for(4096 + 32) < b4.MIN_GRID and b4.fit_block4(_q4_1(rng, 4096 + 32, 16)) is None


def test_integer_multipliers():
    s = np.array([1e-3, 0.01, 0.5, 1.0, 3.0, 8.0, 1.2345, 0.777])
    mult, unit = b4.integer_multipliers(s)
    assert mult.dtype == np.int32 and mult.min() >= 1 and mult.max() == b4.MULT_LEVELS
    assert unit == pytest.approx(8.0 / b4.MULT_LEVELS)
    big = s >= unit
    np.testing.assert_allclose(mult[big] * unit, s[big], rtol=0.5 / 16)  # >= 16 units: within 1/32
    assert np.all(mult[~big] == 1)  # below one unit: one unit
