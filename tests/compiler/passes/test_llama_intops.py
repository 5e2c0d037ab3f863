"""The LLaMA decoder's integer ops compiled from their Relax emitters equal their NumPy twins
(compiler/intmath/llama.py) bit for bit."""

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.intmath import llama as il
from compiler.passes import llama_intops as li
from compiler.tvm_compat import tensor_type


def _run(build, args):
    """Compile build(bb, *vars) for the given NumPy arguments and run it once; a tuple result comes back as a
    list of arrays."""
    bb = relax.BlockBuilder()
    vs = [relax.Var(f"a{i}", tensor_type(a.shape, str(a.dtype))) for i, a in enumerate(args)]
    with bb.function("main", vs):
        with bb.dataflow():
            out = build(bb, *vs)
            several = isinstance(out, tuple)
            out = bb.emit_output(relax.Tuple(list(out)) if several else out)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    res = vm["main"](*[tvm.runtime.tensor(a) for a in args])
    return [r.numpy() for r in res] if several else res.numpy()


@pytest.mark.parametrize("h,bound,scale", [(64, 2 ** 31 - 1, 1e-6), (17, 127, 0.05), (3, 127, 1e-6)])
def test_rmsnorm_emitter_equals_twin(h, bound, scale):
    rng = np.random.default_rng(h)
    x = rng.integers(-bound, bound, size=(5, h)).astype(np.int32)
    x[1] //= 5000
    x[2] = 0
    c = il.rmsnorm_constants(scale, bound, 1e-5, rng.uniform(-2, 2, h), 0.02, 3)
    assert np.array_equal(_run(lambda bb, v: li.emit_rmsnorm(bb, v, c), [x]), il.irmsnorm(x, c))


def test_silu_gate_dynamic_and_rows_emitters_equal_twins():
    rng = np.random.default_rng(0)
    g = rng.integers(-32768, 32768, size=(4, 40)).astype(np.int16)
    u = rng.integers(-32768, 32768, size=(4, 40)).astype(np.int16)
    u[1] //= 300  # a quiet row
    m0, sh = il.gated_constants(3e-4, 2e-4, 1e-5)
    q, k = _run(lambda bb, a, b: li.emit_silu_gate_dynamic(bb, a, 3e-4, b, 7, m0, sh), [g, u])
    tq, tk = il.isilu_gate_dynamic(g, 3e-4, u, 7, m0, sh)
    assert np.array_equal(q, tq) and np.array_equal(k, tk)
    acc = rng.integers(-(1 << 20), 1 << 20, size=(4, 16)).astype(np.int32)
    dm0, dsh = il.gated_constants(1.0, 1.0, 7.0)
    kk = np.array([[0], [3], [30], [40]], np.int64)  # the last two rows saturate (shift below 1)
    got = _run(lambda bb, a, b: li.emit_requantize_rows(bb, a, dm0, dsh, b), [acc, kk])
    assert np.array_equal(got, il.requantize_rows(acc, dm0, dsh, kk))


@pytest.mark.parametrize("dtype", [np.int16, np.int8])
def test_rope_emitter_equals_twin(dtype):
    rng = np.random.default_rng(1)
    heads, seq, d = 3, 5, 16
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, size=(heads, seq, d)).astype(dtype)
    positions = np.array([7, 0, 300, 299, 1], np.int32)  # run-time positions, any order
    tables = il.rope_tables(d, 512, 10000.0)
    m0, sh = il.rope_constants(np.array([1e-3, 2e-3, 5e-4]), np.array([0.02, 0.03, 0.01]))
    got = _run(lambda bb, a, p: li.emit_rope(bb, a, li.emit_rope_factors(bb, p, tables), m0, sh), [x, positions])
    assert np.array_equal(got, il.irope(x, positions, tables, m0, sh))


def test_cached_gqa_attention_emitter_equals_twin():
    """The chunk's queries against a cache of 6 positions of which 4 are written (the other 2 hold stale codes
    that must stay masked) and the chunk's own 3 keys, all heads in one batch; the twin sees the 7 keys in
    position order."""
    rng = np.random.default_rng(2)
    heads, kv_heads, d, seq, cache_len = 4, 2, 8, 3, 6
    q = rng.integers(-127, 128, size=(heads, seq, d)).astype(np.int8)
    keys = rng.integers(-127, 128, size=(kv_heads, 7, d)).astype(np.int8)
    values = rng.integers(-127, 128, size=(kv_heads, 7, d)).astype(np.int8)
    positions = np.array([4, 5, 6], np.int32)  # a chunk after 4 cached tokens
    q[3, 1] = 127  # a row where one key takes all the probability (fine code 65536 before the cap)
    keys[1, 0] = 127
    stale = rng.integers(-127, 128, size=(2, kv_heads, 2, d)).astype(np.int8)
    lib_keys = np.concatenate([keys[:, :4], stale[0], keys[:, 4:]], axis=1)  # cache (6) + chunk (3)
    lib_values = np.concatenate([values[:, :4], stale[1], values[:, 4:]], axis=1)
    c = il.AttentionConstants(rng.uniform(0.01, 0.05, heads), rng.uniform(0.01, 0.05, kv_heads),
                              rng.uniform(0.005, 0.02, kv_heads), 0.02, 3, d)
    lib_keys = np.ascontiguousarray(lib_keys.transpose(0, 2, 1))  # the library keeps the keys transposed
    got = _run(lambda bb, a, k, v, p: li.emit_gqa_attention_cached(bb, a, k, v, p, c),
               [q, lib_keys, lib_values, positions])
    assert cache_len + seq == lib_keys.shape[2]
    # the keys in two parts (the cache's, the chunk's), scored apart: the same
    split = _run(lambda bb, a, k1, k2, v, p: li.emit_gqa_attention_cached(bb, a, (k1, k2), v, p, c),
                 [q, np.ascontiguousarray(lib_keys[..., :cache_len]), np.ascontiguousarray(lib_keys[..., cache_len:]),
                  lib_values, positions])
    assert np.array_equal(split, got)
    assert np.array_equal(got, il.igqa_attention(q, keys, values, positions, c))


def test_decode_attention_emitter_reads_the_cache_in_place_and_equals_twin():
    """One token at position 5 against a 3-layer cache of 16 positions (5 written, the rest stale codes that
    must stay masked), read at layer 1 where it lies; the twin sees the 6 keys in position order. A query whose
    probability sits on one key reaches the fine softmax's cap."""
    rng = np.random.default_rng(3)
    heads, kv_heads, d, layers, context, pos = 6, 2, 16, 3, 16, 5
    q = rng.integers(-127, 128, size=(heads, 1, d)).astype(np.int8)
    keys = rng.integers(-127, 128, size=(kv_heads, pos + 1, d)).astype(np.int8)
    values = rng.integers(-128, 128, size=(kv_heads, pos + 1, d)).astype(np.int8)
    q[4], keys[1, 2] = 127, 127
    cache_k = rng.integers(-128, 128, size=(layers, kv_heads, d, context)).astype(np.int8)  # stale everywhere
    cache_v = rng.integers(-128, 128, size=(layers, kv_heads, context, d)).astype(np.int8)
    cache_k[1, :, :, :pos] = keys[:, :pos].transpose(0, 2, 1)
    cache_v[1, :, :pos] = values[:, :pos]
    k_new = np.ascontiguousarray(keys[:, pos:].transpose(0, 2, 1))  # (kv, d, 1)
    v_new = np.ascontiguousarray(values[:, pos:])
    positions = np.array([pos], np.int32)
    c = il.AttentionConstants(rng.uniform(0.01, 0.05, heads), rng.uniform(0.01, 0.05, kv_heads),
                              rng.uniform(0.005, 0.02, kv_heads), 0.02, -2, d)
    got = _run(lambda bb, a, ck, cv, kn, vn, p: li.emit_gqa_attention_decode(bb, a, (ck, cv), 1, kn, vn, p, c),
               [q, cache_k, cache_v, k_new, v_new, positions])
    assert np.array_equal(got, il.igqa_attention(q, keys, values, positions, c))
