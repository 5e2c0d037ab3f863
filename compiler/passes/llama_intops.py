"""Relax emitters of the LLaMA decoder's integer ops; each produces the bits of its NumPy twin in
compiler/intmath/llama.py (tests/compiler/passes/test_llama_intops.py checks them compiled). Attention runs
every head in one batch against the KV cache passed in (emit_gqa_attention_cached; one token's step reads the
cache in place: emit_gqa_attention_decode)."""

from __future__ import annotations

import numpy as np
from tvm import relax

from compiler.intmath import integer_ops as io, llama as il
from compiler.passes.intops import emit_bit_length, emit_exp_q15, emit_horner, emit_isqrt, emit_pow2, emit_softmax
from compiler.tvm_compat import const, tensor_info
from schedules.decode_attention import emit_pv_decode, emit_qk_decode

R = relax.op


def _i64(v):
    return const(v, "int64")


def _i32(v):
    return const(v, "int32")


def _as(bb, x, dtype):
    return x if tensor_info(x)[0] == dtype else bb.emit(R.astype(x, dtype))


def _round_shift(bb, v, shift):
    """(v + 2**(shift - 1)) >> shift on int64 v (shift >= 1: constant, scalar or per channel)."""
    shift = np.asarray(shift, np.int64)
    return bb.emit(R.right_shift(bb.emit(R.add(v, _i64(np.left_shift(np.int64(1), shift - 1)))), _i64(shift)))


def _clip_cast(bb, v, qmin: int, qmax: int, dtype: str):
    return bb.emit(R.astype(bb.emit(R.clip(v, qmin, qmax)), dtype))


def emit_fixed_requantize(bb, acc, m0, shift, zero_point: int, out_dtype: str, qmin=None, qmax=None):
    """intmath.fixed_point.requantize with given (m0, shift) (scalars or arrays broadcasting on acc)."""
    v = bb.emit(R.multiply(_as(bb, acc, "int64"), _i64(m0)))
    v = _round_shift(bb, v, shift)
    if zero_point:
        v = bb.emit(R.add(v, _i64(zero_point)))
    info = np.iinfo(out_dtype)
    return _clip_cast(bb, v, int(info.min if qmin is None else qmin), int(info.max if qmax is None else qmax),
                      out_dtype)


def emit_rmsnorm(bb, x, c: il.RMSNormConstants, out_dtype: str = "int8"):
    """il.irmsnorm over the last axis (c from il.rmsnorm_constants)."""
    y = _as(bb, x, "int64")
    h = tensor_info(y)[1][-1]
    if c.shift > 0:
        y = bb.emit(R.right_shift(y, _i64(c.shift)))
    elif c.shift < 0:
        y = bb.emit(R.left_shift(y, _i64(-c.shift)))
    n = bb.emit(R.floor_divide(bb.emit(R.sum(bb.emit(R.multiply(y, y)), axis=[-1], keepdims=True)), _i64(h)))
    n = bb.emit(R.maximum(bb.emit(R.add(n, _i64(c.eps))), _i64(1)))
    rms, e = emit_isqrt(bb, n)
    top = emit_pow2(bb, bb.emit(R.add(e, _i64(il.RMS_RECIP_BITS))))
    recip = bb.emit(R.floor_divide(top, rms))
    u = bb.emit(R.right_shift(bb.emit(R.multiply(y, recip)),
                              bb.emit(R.add(e, _i64(il.RMS_RECIP_BITS - c.frac)))))
    v = _round_shift(bb, bb.emit(R.multiply(u, _i64(c.m0))), c.sh)
    if c.zp:
        v = bb.emit(R.add(v, _i64(c.zp)))
    info = np.iinfo(out_dtype)
    return _clip_cast(bb, v, int(info.min), int(info.max), out_dtype)


def emit_sigmoid_q15(bb, x, scale: float, zp: int = 0):
    """(a, sigmoid in Q15) as int32 for 8/16-bit x, a = x - zp (il.isigmoid_q15)."""
    a = _as(bb, x, "int32")
    if zp:
        a = bb.emit(R.subtract(a, _i32(zp)))
    mag = bb.emit(R.maximum(a, bb.emit(R.negative(a))))
    e = emit_exp_q15(bb, mag, io.exp_constants(scale))
    r = emit_horner(bb, e, il.RECIP_POLY_Q15, il.SIG_FRAC_BITS)
    neg = bb.emit(R.subtract(_i32(1 << il.SIG_FRAC_BITS), r))
    return a, bb.emit(R.where(bb.emit(R.greater_equal(a, _i32(0))), r, neg))


def emit_silu(bb, x, scale: float, zp: int = 0):
    """il.isilu as int32 (8/16-bit x: the product stays below 2**31)."""
    a, sig = emit_sigmoid_q15(bb, x, scale, zp)
    prod = bb.emit(R.add(bb.emit(R.multiply(a, sig)), _i32(1 << (il.SIG_FRAC_BITS - 1))))
    return bb.emit(R.right_shift(prod, _i32(il.SIG_FRAC_BITS)))


def emit_dynamic_int8(bb, t):
    """il.idynamic_int8 of int64 rows: (int8 q, int64 k of shape (..., 1))."""
    t = _as(bb, t, "int64")
    amax = bb.emit(R.max(bb.emit(R.maximum(t, bb.emit(R.negative(t)))), axis=[-1], keepdims=True))
    k = bb.emit(R.maximum(bb.emit(R.subtract(emit_bit_length(bb, amax, 63), _i64(il.DYN_CODE_BITS))), _i64(0)))
    return _clip_cast(bb, emit_shift_rows(bb, t, k, "int64"), -il.DYN_QMAX, il.DYN_QMAX, "int8"), k


def emit_silu_gate_dynamic(bb, gate, gate_scale: float, up, up_zp: int, m0: int, shift: int):
    """il.isilu_gate_dynamic: (int8 q, int64 k)."""
    u = _as(bb, up, "int32")
    if up_zp:
        u = bb.emit(R.subtract(u, _i32(up_zp)))
    prod = bb.emit(R.multiply(emit_silu(bb, gate, gate_scale), u))  # |.| < 2**30
    t = emit_fixed_requantize(bb, prod, m0, shift, 0, "int64", -(1 << 31), (1 << 31) - 1)
    return emit_dynamic_int8(bb, t)


def emit_shift_rows(bb, v, k, out_dtype: str):
    """il.shift_rows: round(v / 2**k) half up, v int64 rows (..., N) or a constant (N,), k (M, 1) int64."""
    v = v if isinstance(v, relax.Expr) else _i64(np.asarray(v, np.int64))
    half = bb.emit(R.right_shift(emit_pow2(bb, k), _i64(1)))  # 0 at k = 0
    return _as(bb, bb.emit(R.right_shift(bb.emit(R.add(v, half)), k)), out_dtype)


def emit_requantize_rows(bb, acc, m0, shift, k, qmin: int = -(1 << 31), qmax: int = (1 << 31) - 1,
                         out_dtype: str = "int64"):
    """il.requantize_rows (zero point 0): the row's shift is shift - k; below 1 the product saturates."""
    v = bb.emit(R.multiply(_as(bb, acc, "int64"), _i64(m0)))
    eff = bb.emit(R.subtract(_i64(np.asarray(shift, np.int64)), k))
    safe = bb.emit(R.maximum(eff, _i64(1)))
    rnd = emit_pow2(bb, bb.emit(R.subtract(safe, _i64(1))))
    out = bb.emit(R.right_shift(bb.emit(R.add(v, rnd)), safe))
    big = bb.emit(R.multiply(bb.emit(R.sign(v)), _i64(1 << 62)))
    out = bb.emit(R.where(bb.emit(R.greater_equal(eff, _i64(1))), out, big))
    return _clip_cast(bb, out, qmin, qmax, out_dtype)


def emit_rope_factors(bb, positions, tables):
    """The rotation's factors at run-time `positions` (int32 (seq,), assumed in range: the caller checks them
    against the table, as the twin does), tables from il.rope_tables: (cos2, sin2) int32 (seq, head_dim) with
    cos2 = [c, c] and sin2 = [-s, s] per position. One lookup per step, shared by every layer's queries and
    keys (emit_rope)."""
    cos_t, sin_t = (np.asarray(t, np.int32) for t in tables)
    cos2 = const(np.concatenate([cos_t, cos_t], axis=1), "int32")
    sin2 = const(np.concatenate([-sin_t, sin_t], axis=1), "int32")
    return bb.emit(R.take(cos2, positions, axis=0)), bb.emit(R.take(sin2, positions, axis=0))


def emit_rope(bb, x, factors, m0, shift, out_zp: int = 0, qmin: int = -128, qmax: int = 127,
              out_dtype: str = "int8"):
    """il.irope: x (heads, seq, head_dim) 8/16-bit, factors from emit_rope_factors at the chunk's positions.
    x * [c, c] + [x2, x1] * [-s, s] = [x1 c - x2 s, x2 c + x1 s]: the twin's sums, term for term (each product
    below 2**29 in magnitude), with the halves swapped by one gather instead of slices and a concat, so that
    the rest is one row group (compiler/passes/fuse_rows.py)."""
    d = tensor_info(x)[1][2]
    half = d // 2
    cos2, sin2 = factors
    a = _as(bb, x, "int32")
    swapped = bb.emit(R.take(a, const(np.r_[half:d, 0:half], "int32"), axis=2))
    acc = bb.emit(R.add(bb.emit(R.multiply(a, cos2)), bb.emit(R.multiply(swapped, sin2))))
    m0 = np.asarray(m0, np.int64).reshape(-1, 1, 1)
    shift = np.asarray(shift, np.int64).reshape(-1, 1, 1)
    return emit_fixed_requantize(bb, acc, m0, shift, out_zp, out_dtype, qmin, qmax)


def emit_cached_mask(bb, positions, cache_len: int):
    """bool (seq, cache_len + seq): cache entry j is visible to every query iff j < positions[0] (the cache
    holds the positions before the chunk); chunk entry i to the query at p iff positions[i] <= p."""
    seq = tensor_info(positions)[1][0]
    new = bb.emit(R.less_equal(bb.emit(R.expand_dims(positions, axis=[0])), bb.emit(R.expand_dims(positions,
                                                                                                   axis=[1]))))
    if cache_len == 0:  # no cache: the causal mask of the chunk alone
        return new
    start = bb.emit(R.strided_slice(positions, axes=[0], begin=[0], end=[1]))
    old = bb.emit(R.less(const(np.arange(cache_len)[None, :], "int32"), bb.emit(R.expand_dims(start, axis=[1]))))
    old = bb.emit(R.broadcast_to(old, (seq, cache_len)))
    return bb.emit(R.concat([old, new], axis=1))


def emit_gqa_attention_cached(bb, q, keys, values, positions, c: il.AttentionConstants, allowed=None):
    """il.igqa_attention (16-bit probabilities) of a chunk against the cache, every head in one batch.

    q: int8 (heads, seq, d) at `positions` (int32 (seq,), ascending); keys: int8 (kv_heads, d, cache_len + seq)
    (transposed), or a tuple of such parts along the keys (the cache's, the chunk's: scored apart, the scores
    joined, so the cache is never copied to append the chunk); values: int8 (kv_heads, cache_len + seq, d): the
    cache's entries (position j at index j, those >= positions[0] masked) followed by the chunk's own. Query
    head h = g * groups + j reads KV head g, so the queries of one KV head are contiguous rows: scores and P.V
    are batch matmuls over the KV heads. Integer sums do not depend on the order of the keys, so this equals the
    twin (keys in position order) bit for bit. allowed: emit_cached_mask of these positions and cache, made
    once for every layer (else here). -> int8 (seq, heads * d)."""
    if not c.fine_probs:
        raise NotImplementedError("the emitter implements the 16-bit probabilities (the decoder's default)")
    heads, seq, d = tensor_info(q)[1]
    parts = keys if isinstance(keys, (tuple, list)) else (keys,)
    kv_heads = tensor_info(parts[0])[1][0]
    key_len = sum(tensor_info(k)[1][2] for k in parts)
    rows = heads // kv_heads * seq
    qg = bb.emit(R.reshape(q, (kv_heads, rows, d)))
    scores = [bb.emit(R.matmul(qg, k, out_dtype="int32")) for k in parts]
    scores = scores[0] if len(scores) == 1 else bb.emit(R.concat(scores, axis=2))
    p = _probabilities(bb, scores, positions, c, allowed, (heads, seq, key_len))
    # P.V in two 8-bit halves of the 16-bit probabilities, each as int8 (u - 128) so that both products are
    # int8 x int8 on the project's batch kernels: sum (u - 128) v + 128 sum v = sum u v, exactly in int32
    hi = bb.emit(R.astype(bb.emit(R.subtract(bb.emit(R.right_shift(p, _i32(8))), _i32(128))), "int8"))
    lo = bb.emit(R.astype(bb.emit(R.subtract(bb.emit(R.bitwise_and(p, _i32(255))), _i32(128))), "int8"))
    vsum = bb.emit(R.multiply(bb.emit(R.sum(bb.emit(R.astype(values, "int32")), axis=[1], keepdims=True)),
                              _i32(128)))
    acc_hi = bb.emit(R.add(bb.emit(R.matmul(hi, values, out_dtype="int32")), vsum))
    acc_lo = bb.emit(R.add(bb.emit(R.matmul(lo, values, out_dtype="int32")), vsum))
    acc = bb.emit(R.add(bb.emit(R.left_shift(acc_hi, _i32(8))), acc_lo))
    return _attention_out(bb, acc, c, (heads, seq, d))


def emit_gqa_attention_decode(bb, q, caches, layer: int, k_new, v_new, positions, c: il.AttentionConstants,
                              allowed=None):
    """emit_gqa_attention_cached for one token (seq 1), reading layer `layer` of the whole-model cache where it
    lies (schedules/decode_attention.py: no copy of the layer's keys and values, the probabilities' two bytes
    inside the P.V kernel). caches: (keys int8 (layers, kv_heads, d, context), values int8 (layers, kv_heads,
    context, d)); k_new int8 (kv_heads, d, 1), v_new int8 (kv_heads, 1, d): the step's own. The same integers
    as emit_gqa_attention_cached. -> int8 (1, heads * d)."""
    if not c.fine_probs:
        raise NotImplementedError("the emitter implements the 16-bit probabilities (the decoder's default)")
    heads, seq, d = tensor_info(q)[1]
    context = tensor_info(caches[0])[1][3]
    scores = emit_qk_decode(bb, q, caches[0], k_new, layer)
    p = _probabilities(bb, scores, positions, c, allowed, (heads, seq, context + seq))
    return _attention_out(bb, emit_pv_decode(bb, p, caches[1], v_new, layer), c, (heads, seq, d))


def _probabilities(bb, scores, positions, c: il.AttentionConstants, allowed, shape):
    """Scores (kv_heads, rows, keys) -> the masked fine softmax per head, clipped to ATTN_FINE_MAX, same shape."""
    heads, seq, key_len = shape
    kv_rows = tensor_info(scores)[1][:2]
    scores = bb.emit(R.reshape(scores, (heads, seq, key_len)))
    if allowed is None:
        allowed = emit_cached_mask(bb, positions, key_len - seq)
    scores = bb.emit(R.where(allowed, scores, _i32(il.MASKED_SCORE)))
    p = emit_softmax(bb, scores, [c.score_scale(h) for h in range(heads)], fine=True)  # per-head scales
    return bb.emit(R.reshape(bb.emit(R.minimum(p, _i32(il.ATTN_FINE_MAX))), (*kv_rows, key_len)))


def _attention_out(bb, acc, c: il.AttentionConstants, shape):
    """P.V accumulators (kv_heads, rows, d) -> requantized per head, int8 (seq, heads * d)."""
    heads, seq, d = shape
    acc = bb.emit(R.reshape(acc, (heads, seq, d)))
    mult = [c.out_multiplier(h) for h in range(heads)]
    out = emit_fixed_requantize(bb, acc, np.array([m for m, _ in mult]).reshape(-1, 1, 1),
                                np.array([s for _, s in mult]).reshape(-1, 1, 1), c.out_zp, "int8")
    return bb.emit(R.reshape(bb.emit(R.permute_dims(out, [1, 0, 2])), (seq, heads * d)))
