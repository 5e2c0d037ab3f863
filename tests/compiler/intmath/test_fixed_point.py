import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.intmath.fixed_point import qmatmul, quantize_multiplier, quantize_multipliers, requantize

# |M0 * 2**-shift - m| <= m * 2**-31 (the mantissa's rounding); requantize is then within one unit of
# round(acc * m) for |acc| < 2**31.
MULTIPLIER_REL_ERROR = 2.0 ** -30


@given(st.floats(min_value=1e-9, max_value=1e8, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_represents_m(m):
    m0, shift = quantize_multiplier(m)
    assert (1 << 30) <= m0 < (1 << 31)
    assert 1 <= shift <= 62
    assert abs(m0 * 2.0 ** -shift - m) <= m * MULTIPLIER_REL_ERROR


def test_quantize_multiplier_edges():
    assert quantize_multiplier(0.0) == (0, 1)
    assert quantize_multiplier(1e-30) == (0, 1)  # below every int32 accumulator's resolution
    with pytest.raises(ValueError):
        quantize_multiplier(-1.0)
    with pytest.raises(ValueError):
        quantize_multiplier(float("nan"))


@settings(max_examples=200)
@given(st.lists(st.integers(-(2 ** 31) + 1, 2 ** 31 - 1), min_size=1, max_size=64),
       st.floats(min_value=1e-6, max_value=0.5), st.integers(-128, 127))
def test_requantize_rounds_half_up(acc, m, zp):
    acc = np.array(acc, dtype=np.int32)
    m0, sh = quantize_multiplier(m)
    got = requantize(acc, m0, sh, zp).astype(np.int64)
    exact = np.floor(acc.astype(np.float64) * m0 * 2.0 ** -sh + 0.5) + zp  # the definition, in float64
    # float64 holds acc * m0 < 2**62 only approximately: allow the tie cases to differ by one
    assert np.all(np.abs(got - np.clip(exact, -128, 127)) <= 1)
    assert np.all(np.abs(got - np.clip(np.round(acc * m) + zp, -128, 127)) <= 1)


def test_requantize_per_channel_and_int16():
    acc = np.array([[1000, -1000, 32767]], dtype=np.int32)
    m0, sh = quantize_multipliers(np.array([0.5, 0.25, 2.0]))
    out = requantize(acc, m0, sh, 0, -32768, 32767, np.int16)
    assert out.dtype == np.int16
    assert out.tolist() == [[500, -250, 32767]]  # 65534 clipped


@given(st.integers(1, 5), st.integers(1, 9), st.integers(1, 5), st.integers(-128, 127), st.integers(-5, 5))
def test_qmatmul_matches_float(m, k, n, za, zb):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-127, 128, (k, n)).astype(np.int8)
    ref = (a.astype(np.float64) - za) @ (b.astype(np.float64) - zb)
    assert np.array_equal(qmatmul(a, za, b, zb), ref.astype(np.int32))


@given(st.floats(1e-6, 0.99), st.integers(16, 31))
def test_fewer_mantissa_bits_for_wide_accumulators(m, bits):
    m0, sh = quantize_multiplier(m, bits)
    if m0 == 0:
        return
    assert (1 << (bits - 1)) <= m0 < (1 << bits)
    assert abs(m0 * 2.0 ** -sh / m - 1) <= 2.0 ** -bits
    acc = np.array([(1 << (62 - bits)) - 1, -(1 << (62 - bits))], np.int64)  # the widest |acc| for these bits
    got = requantize(acc, m0, sh, 0, -(1 << 62), 1 << 62, np.int64)
    assert np.all(np.abs(got - acc * (m0 * 2.0 ** -sh)) <= 1 + np.abs(acc) * m0 * 2.0 ** -sh * 1e-12)
