"""The integer ops of a LLaMA-family decoder (compiler/intmath/llama.py): each twin stays within its stated error
bound of the float function of the same inputs, on awkward sizes (hypothesis), and keeps its integer ranges."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from compiler.intmath import llama as il

SEEDS = st.integers(0, 2 ** 32 - 1)


def _float_rmsnorm(x, eps, gamma):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gamma


# ---- RMSNorm -----------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 3, 17, 64, 576, 1000]), st.sampled_from([127, 2 ** 15, 2 ** 24, 2 ** 31 - 1]),
       st.floats(1e-6, 1.0), st.booleans(), SEEDS)
@example(1, 127, 1e-6, True, 0)  # eps dominates: x / rms ~ 6e-4 needs more than Q16 (rmsnorm_frac_bits)
def test_rmsnorm_within_one_step_of_float(h, bound, scale, outlier, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-bound, bound + 1, size=(4, h)).astype(np.int64)
    x[1] //= 1000  # a quiet row
    if outlier:  # one channel 50x the rest (the residual streams of LLaMA models look like this)
        x[:, : h // 2 + 1] //= 50
    x[2] = 0  # rms 0: eps decides, output 0
    gamma = rng.uniform(-3, 3, h)
    eps = 1e-5
    want = _float_rmsnorm(x * scale, eps, gamma)
    out_scale, out_zp = max(np.abs(want).max(), 1e-6) / 120, int(rng.integers(-3, 4))
    c = il.rmsnorm_constants(scale, bound, eps, gamma, out_scale, out_zp)
    got = il.irmsnorm(x.astype(np.int32), c)
    assert got.dtype == np.int8
    q = np.round(want / out_scale) + out_zp
    # the stated regime: rms (eps included) of at least 2**6 input units after the shift; below it the shift
    # has rounded the row to a few units (irmsnorm's docstring; an all-zero row is exact and checked below)
    y = x >> c.shift if c.shift >= 0 else x << -c.shift
    stated = np.sqrt(np.sum(y * y, axis=-1, keepdims=True) // h + c.eps) >= 2 ** 6
    assert np.max(np.abs(got - q) * stated) <= il.RMSNORM_MAX_ERROR_STEPS
    assert np.all(got[2] == out_zp)


@pytest.mark.parametrize("scale", [1e-9, 3e-7])
def test_rmsnorm_where_eps_dominates_stays_inside_isqrt_range(scale):
    """Codes of a tiny scale: eps is 1e4..1e10 times the squares, yet its integer stays below 2**52 (fewer left
    shifts: they only append zero bits) and the outputs keep the bound."""
    rng = np.random.default_rng(7)
    x = rng.integers(-127, 128, size=(3, 64)).astype(np.int64)
    gamma = rng.uniform(-3, 3, 64)
    want = _float_rmsnorm(x * scale, 1e-5, gamma)
    out_scale = np.abs(want).max() / 120
    c = il.rmsnorm_constants(scale, 127, 1e-5, gamma, out_scale)
    assert c.eps < 2 ** il.RMS_EPS_BITS and c.frac > il.RMS_FRAC_BITS
    assert np.max(np.abs(il.irmsnorm(x.astype(np.int32), c) - np.round(want / out_scale))) <= 1


def test_rmsnorm_int16_output_and_tiny_gamma():
    x = np.array([[1000, -2000, 3000, 40]], dtype=np.int32)
    gamma = np.array([1.0, 1e-9, -2.0, 0.5])
    c = il.rmsnorm_constants(0.01, 4000, 1e-6, gamma, 1e-4)
    got = il.irmsnorm(x, c, -32768, 32767, np.int16)
    want = np.round(_float_rmsnorm(x * 0.01, 1e-6, gamma) / 1e-4)
    assert got.dtype == np.int16 and np.max(np.abs(got - want)) <= 1


# ---- SiLU and the gated product ----------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.floats(1e-6, 0.05), st.integers(-20, 20))
def test_sigmoid_and_silu_bounds_on_every_int16_code(scale, zp):
    x = np.arange(-32768, 32768, dtype=np.int64)
    v = (x - zp) * scale
    sig = il.isigmoid_q15(x.astype(np.int16), scale, zp)
    assert sig.min() >= 0 and sig.max() <= 1 << 15
    ref = 0.5 * (1 + np.tanh(v / 2))  # sigmoid without overflow
    assert np.max(np.abs(sig / 2 ** 15 - ref)) <= il.SIGMOID_MAX_ABS_ERROR
    silu = il.isilu(x.astype(np.int16), scale, zp)
    assert np.all(np.abs(silu) <= np.abs(x - zp))  # never wider than the input
    err = np.abs(silu * scale - v * ref)
    assert np.all(err <= il.SILU_MAX_REL_ERROR * np.abs(v) + scale / 2 + 1e-12)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([1, 5, 128, 1536]), st.floats(1e-4, 0.01), st.floats(1e-4, 0.01),
       st.integers(-100, 100), SEEDS)
def test_silu_gate_within_bound(n, s_g, s_u, up_zp, seed):
    rng = np.random.default_rng(seed)
    g = rng.integers(-32767, 32768, size=(3, n)).astype(np.int16)
    u = np.clip(rng.integers(-32767, 32768, size=(3, n)) + up_zp, -32768, 32767).astype(np.int16)
    gf, uf = g * s_g, (u.astype(np.int64) - up_zp) * s_u
    want = gf / (1 + np.exp(-gf)) * uf
    # an output scale from the values (a floor: rows whose SiLU is ~0, e.g. every gate far below 0, give ~1e-78)
    out_scale, out_zp = max(np.abs(want).max() / 100, s_g * s_u), -7
    m0, sh = il.gated_constants(s_g, s_u, out_scale)
    got = il.isilu_gate(g, s_g, u, up_zp, m0, sh, out_zp)
    assert got.dtype == np.int8
    q = want / out_scale + out_zp
    slack = 0.5 + (il.SILU_MAX_REL_ERROR * np.abs(gf) * np.abs(uf) + s_g * np.abs(uf) / 2) / out_scale + 1e-6
    inside = (q > -128) & (q < 127)
    assert np.all(np.abs(got - q)[inside] <= slack[inside])
    # the int32 budget of the product (what a kernel computes in int32)
    prod = il.isilu(g, s_g) * (u.astype(np.int64) - up_zp)
    assert np.abs(prod).max() < 2 ** 31


# ---- rotary embedding --------------------------------------------------------------------------------------
def _float_rope(x, positions, head_dim, theta):
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)
    sin = np.concatenate([np.sin(ang)] * 2, -1)
    half = head_dim // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)  # transformers' rotate_half
    return x * cos + rot * sin


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([2, 8, 64, 128]), st.sampled_from([1, 3, 9]), st.integers(1, 13),
       st.sampled_from([10000.0, 100000.0, 500000.0]), st.sampled_from([np.int8, np.int16]), SEEDS)
def test_rope_within_bound(head_dim, heads, seq, theta, dtype, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    x = rng.integers(info.min + 1, info.max + 1, size=(heads, seq, head_dim)).astype(dtype)
    max_pos = 4096
    positions = rng.integers(0, max_pos, size=seq).astype(np.int32)  # any order: given at run time
    in_scale = rng.uniform(0.5, 2.0, heads) * 1e-3
    out_scale = in_scale * info.max * math.sqrt(2) / 127  # what calibration of the rotated range gives
    tables = il.rope_tables(head_dim, max_pos, theta)
    m0, sh = il.rope_constants(in_scale, out_scale)
    got = il.irope(x, positions, tables, m0, sh)
    want = _float_rope(x.astype(np.float64) * in_scale[:, None, None], positions, head_dim, theta)
    q = want / out_scale[:, None, None]
    half = head_dim // 2
    mag = np.abs(x.astype(np.int64))
    pair = np.concatenate([mag[..., :half] + mag[..., half:]] * 2, -1)
    slack = 0.5 + pair * 2.0 ** -15 * (in_scale / out_scale)[:, None, None] + 1e-6
    inside = np.abs(q) < 127
    assert np.all(np.abs(got - q)[inside] <= slack[inside])


def test_rope_position_zero_is_identity_and_bad_positions_refused():
    tables = il.rope_tables(8, 16, 10000.0)
    x = np.arange(-16, 16, dtype=np.int8).reshape(1, 4, 8)
    m0, sh = il.rope_constants(1.0, 1.0)
    got = il.irope(x, np.zeros(4, np.int32), tables, m0, sh)
    assert np.array_equal(got, x)
    with pytest.raises(ValueError):
        il.irope(x, np.array([0, 1, 2, 16], np.int32), tables, m0, sh)
    with pytest.raises(ValueError):
        il.rope_tables(7, 16, 10000.0)


# ---- attention and the cache -------------------------------------------------------------------------------
def _constants(rng, heads, kv_heads, d, out_scale=0.02, fine=True):
    return il.AttentionConstants(q_scale=rng.uniform(0.01, 0.05, heads), k_scale=rng.uniform(0.01, 0.05, kv_heads),
                                 v_scale=rng.uniform(0.005, 0.02, kv_heads), out_scale=out_scale, out_zp=3,
                                 head_dim=d, fine_probs=fine)


def _float_attention(q, keys, values, positions, c):
    heads, seq, d = q.shape
    groups = heads // keys.shape[0]
    allowed = il.causal_mask(positions, keys.shape[1])
    out = np.zeros((seq, heads, d))
    for h in range(heads):
        g = h // groups
        s = (q[h] * c.q_scale[h]) @ (keys[g] * c.k_scale[g]).T / math.sqrt(d)
        s = np.where(allowed, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, h] = p @ (values[g] * c.v_scale[g])
    return out.reshape(seq, heads * d)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([(4, 2), (9, 3), (6, 1), (2, 2)]), st.sampled_from([1, 8, 64]), st.integers(1, 9),
       st.integers(0, 40), st.booleans(), SEEDS)
def test_gqa_attention_within_bound(heads_kv, d, seq, past, fine, seed):
    heads, kv_heads = heads_kv
    rng = np.random.default_rng(seed)
    key_len = past + seq + int(rng.integers(0, 5))  # a cache longer than what is written
    q = rng.integers(-127, 128, size=(heads, seq, d)).astype(np.int8)
    keys = rng.integers(-127, 128, size=(kv_heads, key_len, d)).astype(np.int8)
    values = rng.integers(-127, 128, size=(kv_heads, key_len, d)).astype(np.int8)
    positions = np.arange(past, past + seq, dtype=np.int32)
    c = _constants(rng, heads, kv_heads, d, fine=fine)
    got = il.igqa_attention(q, keys, values, positions, c)
    assert got.shape == (seq, heads * d) and got.dtype == np.int8
    want = _float_attention(q.astype(np.float64), keys.astype(np.float64), values.astype(np.float64), positions, c)
    q_want = want / c.out_scale + c.out_zp
    n_seen = (positions + 1)[:, None]  # keys each query sees
    vmax = np.repeat(c.v_scale, heads // kv_heads) * 127  # per head
    per_key = il.ATTN_FINE_ERROR if fine else il.ATTN_PROB_L1_ERROR
    slack = 0.5 + np.repeat(vmax, d)[None, :] * n_seen * per_key / c.out_scale
    inside = np.abs(q_want) < 127  # unclipped outputs
    assert np.all((np.abs(got - q_want) <= slack)[inside])


def test_attention_is_causal_and_decode_equals_prefill():
    rng = np.random.default_rng(0)
    heads, kv_heads, d, n = 4, 2, 16, 11
    c = _constants(rng, heads, kv_heads, d)
    q = rng.integers(-127, 128, size=(heads, n, d)).astype(np.int8)
    keys = rng.integers(-127, 128, size=(kv_heads, 16, d)).astype(np.int8)
    values = rng.integers(-127, 128, size=(kv_heads, 16, d)).astype(np.int8)
    full = il.igqa_attention(q, keys, values, np.arange(n, dtype=np.int32), c)
    # keys and values past each query's position never matter
    k2, v2 = keys.copy(), values.copy()
    k2[:, n:], v2[:, n:] = 99, -99
    assert np.array_equal(full, il.igqa_attention(q, k2, v2, np.arange(n, dtype=np.int32), c))
    # one query at a time (decode) gives each prefill row bit for bit
    for t in range(n):
        one = il.igqa_attention(q[:, t:t + 1], keys, values, np.array([t], np.int32), c)
        assert np.array_equal(one[0], full[t])


@pytest.mark.parametrize("fine", [True, False])
def test_masked_row_of_one_key_copies_the_value(fine):
    c = il.AttentionConstants(np.array([0.1]), np.array([0.1]), np.array([0.01]), 0.01, 0, 4, fine)
    q = np.full((1, 1, 4), 50, np.int8)
    keys = np.full((1, 3, 4), 100, np.int8)
    values = np.array([[[10, -20, 30, -40], [1, 1, 1, 1], [2, 2, 2, 2]]], np.int8)
    out = il.igqa_attention(q, keys, values, np.array([0], np.int32), c)
    assert out.tolist() == [[10, -20, 30, -40]]  # p = 1 exactly, scales equal


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 300), st.floats(1e-3, 0.2), SEEDS)
def test_fine_probabilities_within_bound_per_key(n, scale, seed):
    from compiler.intmath import integer_ops as io

    rng = np.random.default_rng(seed)
    x = rng.integers(-20000, 20000, size=(3, n)).astype(np.int32)
    p = io.isoftmax(x, scale, fine=True) * il.ATTN_FINE_SCALE
    z = x * scale
    want = np.exp(z - z.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert np.max(np.abs(p - want)) <= il.ATTN_FINE_ERROR


def test_kv_cache_writes_at_runtime_positions_on_static_scales():
    cache = il.Int8KVCache.empty(2, 3, 8, 4, il.kv_scales(np.full((2, 3), 12.7)), il.kv_scales(np.ones((2, 3))))
    assert np.allclose(cache.k_scale, 0.1) and cache.length == 0
    k = np.arange(3 * 2 * 4, dtype=np.int8).reshape(3, 2, 4)
    cache.write(1, np.array([0, 1], np.int32), k, -k)
    cache.advance(np.array([0, 1]))
    cache.write(1, np.array([2], np.int32), k[:, :1] + 1, k[:, :1])
    cache.advance(np.array([2]))
    assert cache.length == 3
    assert np.array_equal(cache.keys[1, :, :2], k) and np.array_equal(cache.values[1, :, :2], -k)
    assert np.array_equal(cache.keys[1, :, 2], k[:, 0] + 1)
    assert not cache.keys[0].any()  # the other layer untouched
    with pytest.raises(ValueError):
        cache.write(0, np.array([8], np.int32), k[:, :1], k[:, :1])
    with pytest.raises(TypeError):
        cache.write(0, np.array([0], np.int32), k[:, :1].astype(np.int16), k[:, :1])
    m0, sh = il.kv_requant_constants([0.001, 0.002, 0.004], cache.k_scale[0])
    assert np.allclose(m0 * 2.0 ** -sh, [0.01, 0.02, 0.04])


# ---- dynamic per-row power-of-two int8 ---------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 3, 128, 1536]), st.integers(0, 31), SEEDS)
def test_dynamic_int8_rows_within_half_a_step(n, bits, seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(-(1 << bits), (1 << bits) + 1, size=(5, n)).astype(np.int64)
    t[1] = 0  # an all-zero row: k = 0
    t[2, 0] = (1 << 31) - 1  # one massive value in a row
    q, k = il.idynamic_int8(t)
    assert q.dtype == np.int8 and k.shape == (5, 1) and k[1, 0] == 0
    assert np.all(np.abs(q.astype(np.int64)) <= 127)
    step = np.left_shift(np.int64(1), k)
    assert np.all(np.abs(q * step - t) <= np.maximum(step // 2, 0) + (np.abs(q) == 127) * step)
    amax = np.abs(t).max(-1, keepdims=True)
    assert np.all((k == 0) | (step * 64 <= amax))  # at most twice an exact per-row scale's step


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([1, 8, 64]), st.floats(1e-4, 1.0), SEEDS)
def test_requantize_rows_folds_the_row_exponent(n, m, seed):
    from compiler.intmath.fixed_point import quantize_multiplier, requantize

    rng = np.random.default_rng(seed)
    t = rng.integers(-(1 << 20), 1 << 20, size=(4, n))
    t[0] *= 1000
    q, k = il.idynamic_int8(t)
    acc = q.astype(np.int64) * 3  # a stand-in for q @ W
    m0, sh = quantize_multiplier(m)
    got = il.requantize_rows(acc, m0, sh, k)
    want = np.clip(np.floor(acc * np.exp2(k.astype(np.float64)) * m0 * 2.0 ** -sh + 0.5), -(1 << 31), (1 << 31) - 1)
    assert np.all(np.abs(got - want) <= 1)
    assert np.array_equal(il.requantize_rows(acc, m0, sh, np.zeros_like(k)), requantize(acc, m0, sh, 0, -(1 << 31),
                                                                                        (1 << 31) - 1, np.int64))
    sat = il.requantize_rows(np.array([[5, -5, 0]]), 1 << 30, 3, np.array([[10]]))  # shift below 1 saturates
    assert sat.tolist() == [[(1 << 31) - 1, -(1 << 31), 0]]


def test_silu_gate_dynamic_keeps_quiet_rows_fine():
    g = np.full((2, 4), 20000, np.int16)
    u = np.array([[30000, -30000, 5, 7], [3, -3, 5, 7]], np.int16)  # a loud row and a quiet one
    s_g, s_u, base = 1e-3, 1e-3, 1e-4
    m0, sh = il.gated_constants(s_g, s_u, base)
    q, k = il.isilu_gate_dynamic(g, s_g, u, 0, m0, sh)
    real = q * base * np.exp2(k)
    want = (g * s_g) / (1 + np.exp(-g * s_g)) * (u * s_u)
    assert k[1, 0] < k[0, 0]
    assert np.all(np.abs(real - want) <= base * np.exp2(k) / 2 + 3e-4 * np.abs(want) + 1e-9)
