"""The integer nonlinearities: compiled Relax emitters equal their NumPy twins bit for bit (hypothesis), and the
twins stay within stated error bounds of the float functions."""

import math

import numpy as np
import pytest
import tvm
from hypothesis import given, settings, strategies as st
from tvm import relax

from compiler.intmath import integer_ops as io
from compiler.intmath.fixed_point import quantize_multipliers
from compiler.passes import intops
from compiler.tvm_compat import tensor_type

R = relax.op

# Stated error bounds (also in the README)
SOFTMAX_MAX_ABS_ERROR = 0.004  # one output step (1/255) plus the exp's 2.5e-4 relative error
LAYERNORM_MAX_ABS_ERROR_STEPS = 1.5  # in output quantization steps, for |normalized| within the int8 range
ISQRT_EXACT = True

_cache = {}


def _compiled(key, build_fn, shape, dtype):
    if key not in _cache:
        bb = relax.BlockBuilder()
        x = relax.Var("x", tensor_type(shape, dtype))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(build_fn(bb, x))
            bb.emit_func_output(out)
        ex = tvm.compile(bb.get(), tvm.target.Target({"kind": "llvm"}))
        _cache[key] = relax.VirtualMachine(ex, tvm.cpu())
    return lambda a: _cache[key]["main"](tvm.runtime.tensor(a)).numpy()


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.sampled_from([1, 7, 64]), st.floats(1e-7, 0.3), st.integers(0, 2 ** 32 - 1))
def test_softmax_matches_twin_and_float(rows, n, scale, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-32768, 32768, size=(rows, n)).astype(np.int16)
    if scale < 1e-4:  # fine scales arrive as wide integers (int32 scores)
        x = (x.astype(np.int32) * int(min(2 ** 15, 1e-4 / scale)))
    f = _compiled(("softmax", rows, n, scale, str(x.dtype)), lambda bb, v: intops.emit_softmax(bb, v, scale),
                  (rows, n), str(x.dtype))
    got = f(x)
    ref = io.isoftmax(x, scale)
    assert np.array_equal(got, ref)
    real = (ref.astype(np.float64) - io.SOFTMAX_OUT_ZP) * io.SOFTMAX_OUT_SCALE
    xf = x.astype(np.float64) * scale
    p = np.exp(xf - xf.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert np.max(np.abs(real - p)) <= SOFTMAX_MAX_ABS_ERROR


def test_softmax_masked_positions_vanish():
    x = np.array([[1000, 900, -32768, -32768]], dtype=np.int32)
    q = io.isoftmax(x, 0.01)
    assert q[0, 2] == q[0, 3] == -128  # probability 0


@given(st.integers(0, 2 ** 54 - 1))
def test_isqrt_is_floor_sqrt(n):
    r = int(io.isqrt(np.array([n]))[0])
    assert r * r <= max(n, 1) and (r + 1) * (r + 1) > n


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([8, 32, 384]), st.sampled_from([127, 32767, 2 ** 20]), st.floats(1e-3, 1.0),
       st.integers(0, 2 ** 32 - 1))
def test_layernorm_matches_twin_and_float(h, bound, scale, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-bound, bound + 1, size=(2, 3, h)).astype(np.int32)
    x[0, 0, :] = 5  # a constant row: variance 0, eps decides
    gamma = rng.uniform(-2, 2, h).astype(np.float32)
    beta = rng.uniform(-1, 1, h).astype(np.float32)
    out_scale, out_zp = 8.0 / 255, 3
    c = io.layernorm_constants(scale, h, bound, 1e-5, gamma, beta, out_scale, out_zp)
    f = _compiled(("ln", h, bound, scale, seed), lambda bb, v: intops.emit_layernorm(bb, v, c, "int8"),
                  (2, 3, h), "int32")
    ref = io.ilayernorm(x, c)
    assert np.array_equal(f(x), ref)
    xf = x.astype(np.float64) * scale
    mu = xf.mean(-1, keepdims=True)
    want = (xf - mu) / np.sqrt(xf.var(-1, keepdims=True) + 1e-5) * gamma + beta
    q = np.round(want / out_scale) + out_zp
    inside = (q > -128) & (q < 127)
    assert np.max(np.abs(ref - q)[inside]) <= LAYERNORM_MAX_ABS_ERROR_STEPS + 0.5


def test_layernorm_tiny_gamma_does_not_overflow():
    gamma, beta = np.array([1, 2e-7, 1e-8, 1.0]), np.array([0.5, 0.5, -0.5, -0.5])
    c = io.layernorm_constants(0.01, 4, 1000, 1e-5, gamma, beta, 1e-4, 0)
    out = io.ilayernorm(np.array([[100, 200, 300, 400]]), c, -32768, 32767, np.int16)
    xf = np.array([1.0, 2, 3, 4])  # the real values (scale 0.01)
    want = np.round((xf - xf.mean()) / np.sqrt(xf.var() + 1e-5) * gamma / 1e-4 + beta / 1e-4)
    assert np.max(np.abs(out[0] - want)) <= 2, (out, want)


def test_lookup_and_rescale():
    table = np.arange(256, dtype=np.int64)[::-1].astype(np.int8)
    x = np.array([-128, 0, 127], dtype=np.int8)
    assert io.lookup(x, table, 128).tolist() == [table[0], table[128], table[255]]
    assert io.rescale(np.array([10, -10]), 2, 1 << 30, 31).tolist() == [4, -6]  # (8, -12) * 0.5
    _ = math, pytest


LOG_SOFTMAX_MAX_ABS_ERROR = 0.004  # + half an input step: exp 0.0003, log2 table 0.0011 nats


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.sampled_from([1, 5, 64, 1000]), st.floats(1e-5, 0.3), st.integers(0, 2 ** 32 - 1),
       st.sampled_from(["int16", "int64"]))
def test_log_softmax_matches_twin_and_float(rows, n, scale, seed, dtype):
    """int16 logits take the int32 path (differences and result in int32), int64 ones the int64 path."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-32768, 32768, size=(rows, n)).astype(dtype)
    f = _compiled(("log_softmax", rows, n, scale, dtype), lambda bb, v: intops.emit_log_softmax(bb, v, scale),
                  (rows, n), dtype)
    got = f(x)
    ref = io.ilog_softmax(x, scale)
    assert np.array_equal(got, ref)
    xf = x.astype(np.float64) * scale
    want = xf - xf.max(-1, keepdims=True)
    want = want - np.log(np.exp(want).sum(-1, keepdims=True))
    assert np.max(np.abs(ref * scale - want)) <= LOG_SOFTMAX_MAX_ABS_ERROR + scale / 2


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(["int8", "int16"]), st.integers(-100, 100), st.integers(-100, 100), st.integers(0, 2 ** 32 - 1))
def test_product_and_relu_match_twins(dtype, za, zb, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, size=(3, 17)).astype(dtype)
    b = rng.integers(info.min, info.max + 1, size=(3, 17)).astype(dtype)
    bound = int(info.max) - int(info.min) + 200
    k = io.product_shift(bound, bound)
    bb = relax.BlockBuilder()
    va, vb = (relax.Var(n, tensor_type((3, 17), dtype)) for n in "ab")
    with bb.function("main", [va, vb]):
        with bb.dataflow():
            p = intops.emit_mul(bb, va, za, vb, zb, k)
            out = bb.emit_output(bb.emit(R.maximum(p, relax.const(np.int64(0), "int64"))))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    ref = io.irelu(io.imul(a, za, b, zb, k), 0)
    assert np.array_equal(got, ref)
    exact = (a.astype(np.float64) - za) * (b.astype(np.float64) - zb) / 2.0 ** k
    assert np.max(np.abs(io.imul(a, za, b, zb, k) - exact)) <= 0.5


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(["int8", "int16"]), st.floats(1e-6, 0.1), st.integers(-3000, 3000))
def test_gelu_matches_twin_and_float(dtype, scale, zp):
    """intmath.igelu and intops.emit_gelu agree bit for bit on every code; within GELU_MAX_ABS_ERROR * max(1, |v|)
    of the exact GELU."""
    info = np.iinfo(dtype)
    zp = int(np.clip(zp, info.min, info.max))
    c = io.gelu_constants(scale)
    x = np.arange(info.min, info.max + 1).astype(dtype).reshape(1, -1)
    f = _compiled(("gelu", dtype, scale, zp), lambda bb, v: intops.emit_gelu(bb, v, zp, c), x.shape, dtype)
    got = f(x)
    ref = io.igelu(x, zp, c)
    assert got.dtype == np.int32 and np.array_equal(got, ref)
    real = (x.astype(np.float64) - zp) * scale
    exact = 0.5 * real * (1 + np.vectorize(math.erf)(real / math.sqrt(2)))
    err = np.abs(ref * scale / (1 << io.GELU_FRAC_BITS) - exact)
    assert np.all(err <= io.GELU_MAX_ABS_ERROR * np.maximum(1.0, np.abs(real)))


# ---- pooling heads ---------------------------------------------------------------------------------------
L2_MAX_ABS_ERROR = 2e-4  # of x / ||x|| per element, for inputs using at least 2**12 of their code range


def _compiled2(key, build_fn, shapes, dtypes):
    if key not in _cache:
        bb = relax.BlockBuilder()
        xs = [relax.Var(f"x{i}", tensor_type(s, d)) for i, (s, d) in enumerate(zip(shapes, dtypes))]
        with bb.function("main", xs):
            with bb.dataflow():
                out = bb.emit_output(build_fn(bb, *xs))
            bb.emit_func_output(out)
        ex = tvm.compile(bb.get(), tvm.target.Target({"kind": "llvm"}))
        _cache[key] = relax.VirtualMachine(ex, tvm.cpu())
    return lambda *a: _cache[key]["main"](*[tvm.runtime.tensor(v) for v in a]).numpy()


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([1, 5, 16]), st.sampled_from([3, 32]), st.integers(-300, 300), st.integers(0, 2 ** 32 - 1))
def test_masked_mean_matches_twin_and_float(seq, hidden, zp, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-32768, 32768, size=(2, seq, hidden)).astype(np.int16)
    w = (rng.random((2, seq, 1)) < 0.6).astype(np.int64)
    w[1] = 0  # a row with nothing unmasked: divided by 1, never by 0
    bound = 32768 + abs(zp)
    f = _compiled2(("mean", seq, hidden, zp), lambda bb, a, b: intops.emit_masked_mean(bb, a, zp, b, [1], bound,
                                                                                     False),
                   [(2, seq, hidden), (2, seq, 1)], ["int16", "int64"])
    got = f(x, w)
    ref = io.imasked_mean(x, zp, w, 1, bound)
    assert np.array_equal(got, ref)
    frac = io.quotient_frac_bits(bound)
    want = ((x.astype(np.float64) - zp) * w).sum(1) / np.maximum(w.sum(1), 1)
    assert np.max(np.abs(ref / 2.0 ** frac - want)) <= 0.5 / 2 ** frac + 1e-9
    assert np.all(ref[1] == 0)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([1, 4]), st.sampled_from([8, 384]), st.sampled_from([2 ** 15, 2 ** 24, 2 ** 40]),
       st.integers(0, 2 ** 32 - 1))
def test_l2_normalize_matches_twin_and_float(rows, hidden, bound, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-bound, bound, size=(rows, hidden)).astype(np.int64)
    x[0] = 0  # an all-zero row: divided by eps, gives 0
    f = _compiled2(("l2", rows, hidden, bound), lambda bb, a: intops.emit_l2_normalize(bb, a, 0, bound, 1, -1),
                   [(rows, hidden)], ["int64"])
    got = f(x)
    ref = io.il2_normalize(x, 0, bound, 1, -1)
    assert np.array_equal(got, ref) and got.dtype == np.int32
    assert np.all(ref[0] == 0)
    if rows > 1:
        xf = x[1:].astype(np.float64)
        want = xf / np.linalg.norm(xf, axis=-1, keepdims=True)
        assert np.max(np.abs(ref[1:] / 2.0 ** io.L2_OUT_FRAC_BITS - want)) <= L2_MAX_ABS_ERROR


@settings(max_examples=12, deadline=None)
@given(st.sampled_from([1, 3]), st.sampled_from([1, 8, 96]), st.integers(0, 15), st.booleans(),
       st.integers(0, 2 ** 32 - 1))
def test_row_quantize_matches_twin_and_bound(rows, k_dim, bits, one_sided, seed):
    """Each row gets the smallest power-of-two step that fits its span (max - min) into 255 steps and a zero
    point of its own: the codes stay in [-128, 127] without clipping, 2**k * (q + z) is within half a step of
    the input, the step is at most span / 127.5, and the emitter equals the twin."""
    rng = np.random.default_rng(seed)
    lim = 2 ** bits
    x = rng.integers(-lim, lim, size=(2, rows, k_dim))
    if one_sided:  # a GELU-like row: a small negative floor, a long positive tail
        x = np.abs(x) - lim // 16
    x = x.clip(-32768, 32767).astype(np.int16)
    x[0, 0, 0] = -32768 if bits == 15 else x[0, 0, 0]  # the extreme code
    emit = intops.emit_row_quantize
    fq, fk, fz = (_compiled((f"row{i}", rows, k_dim), lambda bb, v, i=i: emit(bb, v)[i], (2, rows, k_dim), "int16")
                  for i in range(3))
    q, k, z = io.row_quantize(x)
    assert np.array_equal(fq(x), q) and np.array_equal(fk(x), k) and np.array_equal(fz(x), z)
    step = 2 ** k.astype(np.int64)
    x64 = x.astype(np.int64)
    half = step // 2
    unclipped = ((x64 + half) >> k) - z
    assert np.all((unclipped >= -128) & (unclipped <= 127))
    assert np.all(np.abs(step * (q.astype(np.int64) + z) - x64) <= half)
    span = x64.max(-1, keepdims=True) - x64.min(-1, keepdims=True)
    assert np.all(step <= np.maximum(span / 127.5, 1))
    # k is the smallest such shift: with one halving less the span would not fit 255 steps
    prev = np.array((0,) + io.ROW_SPAN_THRESHOLDS)[k]
    assert np.all((k == 0) | (span > prev))


def _requantize_rows_vm(rows: int, n: int, build):
    bb = relax.BlockBuilder()
    a = relax.Var("a", tensor_type((rows, n), "int32"))
    kv = relax.Var("k", tensor_type((rows, 1), "int32"))
    zv = relax.Var("z", tensor_type((rows, 1), "int32"))
    with bb.function("main", [a, kv, zv]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, a, kv, zv))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), tvm.target.Target({"kind": "llvm"}))
    return relax.VirtualMachine(ex, tvm.cpu())


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([1, 5]), st.sampled_from([4, 64]), st.floats(1e-7, 1e-2), st.integers(-300, 300),
       st.integers(0, 2 ** 32 - 1))
def test_requantize_rows_matches_twin_and_float(rows, n, mult, zp, seed):
    rng = np.random.default_rng(seed)
    acc = rng.integers(-2 ** 24, 2 ** 24, size=(rows, n)).astype(np.int32)
    k = rng.integers(0, io.ROW_SHIFT_MAX + 1, size=(rows, 1)).astype(np.int32)
    z = rng.integers(-300, 300, size=(rows, 1)).astype(np.int32)
    colsum = rng.integers(-512 * 127, 512 * 127, n).astype(np.int64)
    multiplier = mult * rng.uniform(0.5, 2.0, n)
    m0, sh = io.row_multipliers(multiplier, 512)
    bias = rng.integers(-1000, 1000, n).astype(np.int64)
    key = ("rq_rows", rows, n, mult, zp, seed)
    if key not in _cache:
        _cache[key] = _requantize_rows_vm(rows, n, lambda bb, a, kv, zv: intops.emit_requantize_rows(
            bb, a, m0, sh, kv, zv, colsum, bias, zp, "int16"))
    got = _cache[key]["main"](*(tvm.runtime.tensor(v) for v in (acc, k, z))).numpy()
    ref = io.requantize_rows(acc, m0, sh, k, z, colsum, bias, zp)
    assert np.array_equal(got, ref)
    real = (acc.astype(np.float64) + z * colsum.astype(np.float64)) * multiplier * 2.0 ** k + bias + zp
    inside = np.abs(real) < 32000
    assert np.all(np.abs(ref[inside] - real[inside]) <= 0.5 + 1e-6 * np.abs(real[inside]) + 1)


@settings(max_examples=20, deadline=None)
@given(st.floats(1e-9, 2.0 ** 4), st.sampled_from([1, 384, 1536, 65536]), st.integers(0, 2 ** 32 - 1))
def test_requantize_rows_is_exact_rounding_without_overflow(mult, k_dim, seed):
    """Shifting the product left by k then rounding off sh bits equals rounding it off sh - k bits (Python
    integers, no overflow), at the extremes of what row-quantized int16 codes give for the reduction length
    (every code at +-2**15 times every weight at +-127, at the smallest and the largest k)."""
    rng = np.random.default_rng(seed)
    multiplier = mult * rng.uniform(0.5, 2.0, 6)
    mults = io.row_multipliers(multiplier, k_dim)
    if mults is None:  # too large a multiplier for this reduction length: statically quantized instead
        _, sh = quantize_multipliers(multiplier)
        assert np.any(sh - (31 - io.row_mantissa_bits(k_dim)) <= io.ROW_SHIFT_MAX + 1)
        return
    m0, sh = mults
    assert np.all(m0 < 2 ** io.row_mantissa_bits(k_dim))
    colsum = np.array([k_dim * 127, -k_dim * 127, 0, 1, -1, 12345 % (k_dim * 127 + 1)], np.int64)
    x = np.array([[-32768] * 6, [32767] * 6, [-32768] * 6, [32767] * 6])  # every code of the row
    k = np.array([[0], [0], [io.ROW_SHIFT_MAX], [io.ROW_SHIFT_MAX]], np.int32)
    z = (((x[:, :1] + ((1 << k) >> 1)) >> k) + io.ROW_ZERO_OFFSET).astype(np.int32)  # at the forced k
    acc = np.repeat(-128 * colsum[None, :], 4, axis=0).astype(np.int32)  # q = -128: the row's only code
    got = io.requantize_rows(acc, m0, sh, k, z, colsum, np.zeros(6, np.int64), 0, np.int64)
    for i in range(4):
        for j in range(6):
            s = int(sh[j]) - int(k[i, 0])
            t = int(acc[i, j]) + int(z[i, 0]) * int(colsum[j])
            assert got[i, j] == (t * int(m0[j]) + (1 << (s - 1))) >> s
    real = (acc + z * colsum.astype(np.float64)) * (m0 / 2.0 ** sh) * 2.0 ** k
    assert np.all(np.abs(got - real) <= 0.5 + 1e-9 * np.abs(real))


def test_row_multipliers_refuse_large_ratios():
    assert io.row_multipliers(np.array([1e-3, 0.0]), 384) is not None
    m0, sh = io.row_multipliers(np.array([1e-3, 0.0]), 384)
    assert m0[1] == 0 and sh[1] > io.ROW_SHIFT_MAX
    assert io.row_multipliers(np.array([2.0 ** 21]), 384) is None  # too few shift bits to give up per row
    assert io.row_mantissa_bits(384) == 30 and io.row_mantissa_bits(1536) == 28


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([2, 50]), st.sampled_from([1, 8]), st.floats(1e-3, 10.0), st.integers(0, 2 ** 32 - 1))
def test_row_scaled_table_gather_matches_twin_and_bound(vocab, hidden, spread, seed):
    """Embedding rows of very different magnitudes keep each their own int8 step: the error is at most half of
    it plus half the fine step (max row / 127 / 2**14)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(vocab, hidden)) * np.exp(rng.uniform(-np.log(1e4), 0, (vocab, 1))) * spread
    codes, mult, fine = io.row_scaled_table(table.astype(np.float32))
    idx = rng.integers(0, vocab, size=(1, 5)).astype(np.int64)
    got = _compiled(("gather_rows", vocab, hidden, spread, seed),
                    lambda bb, v: intops.emit_gather_rows(bb, codes, mult, v), (1, 5), "int64")(idx)
    ref = io.gather_rows(codes, mult, idx)
    assert np.array_equal(got, ref)
    real = table[idx[0]]
    row_step = np.abs(real).max(-1, keepdims=True) / 127
    assert np.all(np.abs(ref[0] * fine - real) <= (row_step + fine) / 2 + 1e-12)


def test_gather_rows_clips_ids_outside_the_table():
    """An id the caller did not check reads the nearest row (the library and the reference interpreter alike),
    never memory outside the table."""
    from compiler.intmath.interpreter import Interpreter

    table = np.random.default_rng(0).normal(size=(10, 4))
    codes, mult, _ = io.row_scaled_table(table)
    bb = relax.BlockBuilder()
    x = relax.Var("x", tensor_type((1, 5), "int64"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(intops.emit_gather_rows(bb, codes, mult, x))
        bb.emit_func_output(out)
    mod = bb.get()
    ids = np.array([[0, 9, 3, 10, 1000]], np.int64)
    vm = relax.VirtualMachine(tvm.compile(mod, tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(ids)).numpy()
    want = Interpreter(mod)(ids)
    np.testing.assert_array_equal(got, want[0] if isinstance(want, (list, tuple)) else want)
    np.testing.assert_array_equal(got[0, 3:], io.gather_rows(codes, mult, np.array([[9, 9]]))[0])
