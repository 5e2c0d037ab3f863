"""The integer LLaMA decoder as a Relax function, from the integer reference's constants (compiler/llm/integer.py):
token ids -> int32 logits, built from the emitters of compiler/passes/llama_intops.py so that it computes the
reference's integers (tests/compiler/llm/test_llama_library.py checks the compiled library bit for bit).

Functions of the same step (STEPS): `prefill` (a chunk of a fixed length, the logits of every token: perplexity),
`prefill_last` (the same chunk, the logits of one token chosen at run time: a prompt before generation, where
the vocabulary-wide head on every row would be a tenth of the work for nothing), `decode` (one token), and
`prefill_first` / `prefill_first_last`, the same chunks at position 0, which have no cache to attend to. Each
takes the int8 KV cache as run-time inputs (but the first chunks) and returns, beside the logits, the chunk's
int8 keys and values, which the caller writes into its cache (compiler/llm/library.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from compiler.llm.integer import INT32_MAX, INT32_MIN, IntLlama, QLinear
from compiler.passes import llama_intops as li
from compiler.passes.intops import emit_pow2
from compiler.tvm_compat import const, tensor_info, tensor_type
from schedules import decode_attention
from schedules.block4_gemm import emit_block4_matmul

R = relax.op


def _linear(bb, a, lin: QLinear, rows_k, qmin: int, qmax: int, dtype: str, isa: str = "generic"):
    """int8 activation (zero point lin.in_zp) x the constant weight -> int32 (int8 weight) or int64 (block-4
    weight times the per-input multipliers, on ``isa``'s kernel: schedules/block4_gemm.py), plus the integer
    bias, then the requantization (with the rows' exponents of a dynamic input)."""
    if lin.block4 is not None:
        bw, acc_dtype = lin.block4, "int64"
        acc = emit_block4_matmul(bb, a, lin.act_mult, bw.q, bw.d, bw.m, isa)
    else:
        acc_dtype = "int32"
        acc = bb.emit(R.matmul(a, const(lin.w, "int8"), out_dtype="int32"))
    if lin.in_zp:
        colsum = lin.w.astype(np.int64).sum(axis=0, keepdims=True) * lin.in_zp
        acc = bb.emit(R.subtract(acc, const(colsum, acc_dtype)))
    if lin.bias is not None:  # on the base scale: under the rows' exponents first when they carry one
        b = const(lin.bias, acc_dtype) if rows_k is None else li.emit_shift_rows(bb, lin.bias, rows_k, acc_dtype)
        acc = bb.emit(R.add(acc, b))
    if rows_k is not None:
        return li.emit_requantize_rows(bb, acc, lin.m0, lin.sh, rows_k, qmin, qmax, dtype)
    return li.emit_fixed_requantize(bb, acc, lin.m0, lin.sh, 0, dtype, qmin, qmax)


def _norm_rows(bb, x, c: dict, dynamic: bool):
    if not dynamic:
        return li.emit_rmsnorm(bb, x, c, "int8"), None
    return li.emit_dynamic_int8(bb, li.emit_rmsnorm(bb, x, c, "int64"))


def _heads(bb, t, seq: int, heads: int, d: int):
    """(seq, heads * d) -> (heads, seq, d)."""
    return bb.emit(R.permute_dims(bb.emit(R.reshape(t, (seq, heads, d))), [1, 0, 2]))


def _residual_add(bb, x, y):
    return bb.emit(R.clip(bb.emit(R.add(x, y)), INT32_MIN, INT32_MAX))


def _embed(bb, m: IntLlama, ids):
    """The int8 embedding rows, onto the residual scale by each row's own multiplier (gathered with the row)."""
    e = bb.emit(R.astype(bb.emit(R.take(const(m.embed, "int8"), ids, axis=0)), "int64"))
    m0 = bb.emit(R.expand_dims(bb.emit(R.take(const(m.embed_m0, "int64"), ids, axis=0)), axis=[1]))
    sh = bb.emit(R.expand_dims(bb.emit(R.take(const(m.embed_sh, "int64"), ids, axis=0)), axis=[1]))
    one = const(1, "int64")
    rnd = emit_pow2(bb, bb.emit(R.subtract(sh, one)))
    x = bb.emit(R.right_shift(bb.emit(R.add(bb.emit(R.multiply(e, m0)), rnd)), sh))
    return bb.emit(R.clip(x, INT32_MIN, INT32_MAX))


def _layer(bb, m: IntLlama, i: int, x, positions, shared, seq: int, cache, isa: str = "generic"):
    """One decoder layer on the chunk; cache: int8 run-time inputs, keys (layers, kv_heads, d, context)
    (transposed), values (layers, kv_heads, context, d). Returns (x, the chunk's int8 keys (kv_heads, d, seq) and
    values (kv_heads, seq, d))."""
    s, ly = m.shape, m.layers[i]
    a, ka = _norm_rows(bb, x, ly.attn_norm, m.dynamic_norms)
    q = _heads(bb, _linear(bb, a, ly.q, ka, -32768, 32767, "int16", isa), seq, s.heads, s.head_dim)
    k = _heads(bb, _linear(bb, a, ly.k, ka, -32768, 32767, "int16", isa), seq, s.kv_heads, s.head_dim)
    v = _heads(bb, _linear(bb, a, ly.v, ka, -127, 127, "int8", isa), seq, s.kv_heads, s.head_dim)
    rope, allowed = shared
    q8 = li.emit_rope(bb, q, rope, *ly.q_rope)
    k8 = li.emit_rope(bb, k, rope, *ly.k_rope, qmin=-127)
    k8 = bb.emit(R.permute_dims(k8, [0, 2, 1]))  # the chunk's keys, transposed as the cache keeps them
    if cache is None:  # the first chunk: nothing cached to attend to
        o = li.emit_gqa_attention_cached(bb, q8, (k8,), v, positions, ly.attn, allowed)
    elif seq == 1 and decode_attention.supported(tensor_info(cache[0])[1][3]):  # the cache read in place
        o = li.emit_gqa_attention_decode(bb, q8, cache, i, k8, v, positions, ly.attn, allowed)
    else:
        old_k, old_v = (_layer_of(bb, c, i) for c in cache)
        values = bb.emit(R.concat([old_v, v], axis=1))
        o = li.emit_gqa_attention_cached(bb, q8, (old_k, k8), values, positions, ly.attn, allowed)
    x = _residual_add(bb, x, _linear(bb, o, ly.o, None, INT32_MIN, INT32_MAX, "int64", isa))
    f, kf = _norm_rows(bb, x, ly.ffn_norm, m.dynamic_norms)
    g = _linear(bb, f, ly.gate, kf, -32768, 32767, "int16", isa)
    u = _linear(bb, f, ly.up, kf, -32768, 32767, "int16", isa)
    h, kh = li.emit_silu_gate_dynamic(bb, g, ly.gate_scale, u, 0, *ly.gated)
    x = _residual_add(bb, x, _linear(bb, h, ly.down, kh, INT32_MIN, INT32_MAX, "int64", isa))
    return x, k8, v


def _layer_of(bb, cache, i: int):
    """Layer i of a (layers, ...) cache tensor."""
    return bb.emit(R.squeeze(bb.emit(R.strided_slice(cache, axes=[0], begin=[i], end=[i + 1])), axis=[0]))


def add_step_function(bb, m: IntLlama, name: str, seq: int, context: int, isa: str = "generic",
                      last: bool = False, cached: bool = True) -> None:
    """`name(ids int32 (seq,), positions int32 (seq,), keys int8 (layers, kv_heads, d, context), values int8
    (layers, kv_heads, context, d)) -> (logits int32 (seq, vocab), new_keys int8 (layers, kv_heads, d, seq),
    new_values int8 (layers, kv_heads, seq, d))`. The keys are kept transposed: the scores' matmul reads the
    cache as it is, where a transpose of every layer's cache per step took a third of a decode step.
    With `last`, a third input `last` int32 (1,) (0 <= last < seq) picks the one row whose logits are made:
    logits (1, vocab). Without `cached`, no cache inputs: the chunk at positions 0.. of a prompt, which has
    nothing before it, attends to itself alone (a third of the keys of a 128-token chunk against a context of
    256, and no copy of the cache).

    The chunk at `positions` (ascending, run time) attends to the cache entries before positions[0] and to
    itself under the causal mask; the caller writes new_keys/new_values into its cache at `positions`. The
    same function is the prefill (seq = the chunk length) and the decode step (seq = 1)."""
    s = m.shape
    keys_shape = (s.layers, s.kv_heads, s.head_dim, context)
    values_shape = (s.layers, s.kv_heads, context, s.head_dim)
    ids = relax.Var("ids", tensor_type((seq,), "int32"))
    positions = relax.Var("positions", tensor_type((seq,), "int32"))
    cache = (relax.Var("keys", tensor_type(keys_shape, "int8")), relax.Var("values", tensor_type(values_shape, "int8")))
    row = relax.Var("last", tensor_type((1,), "int32")) if last else None
    with bb.function(name, [ids, positions, *([row] if last else []), *(cache if cached else [])]):
        with bb.dataflow():
            x = _embed(bb, m, ids)
            # the rotation's factors and the causal mask depend on the positions only: made once for every layer
            shared = (li.emit_rope_factors(bb, positions, m.rope_tables),
                      li.emit_cached_mask(bb, positions, context if cached else 0))
            keys, values = [], []
            for i in range(s.layers):
                x, k8, v = _layer(bb, m, i, x, positions, shared, seq, cache if cached else None, isa)
                keys.append(bb.emit(R.expand_dims(k8, axis=[0])))
                values.append(bb.emit(R.expand_dims(v, axis=[0])))
            if last:  # the final norm and the head on the chosen row only
                x = bb.emit(R.take(x, row, axis=0, mode="clip"))  # checked by the runtime too (IndexBound)
            xf, kx = _norm_rows(bb, x, m.final_norm, False)
            logits = _linear(bb, xf, m.head, kx, INT32_MIN, INT32_MAX, "int32")
            out = bb.emit_output(relax.Tuple([logits, bb.emit(R.concat(keys, axis=0)),
                                              bb.emit(R.concat(values, axis=0))]))
        bb.emit_func_output(out)


@dataclass(frozen=True)
class Step:
    """What one entry point runs (add_step_function): a prompt chunk or one token, every row's logits or one
    row's, against the cache or (the chunk at position 0) without one."""

    chunk: bool
    last: bool = False
    cached: bool = True


STEPS = {  # entry point -> its step; the library (compiler/llm/library.py) picks among them by name
    "prefill": Step(chunk=True),  # perplexity's chunks after the first
    "decode": Step(chunk=False),
    "prefill_last": Step(chunk=True, last=True),  # generate's prompt chunks after the first
    "prefill_first": Step(chunk=True, cached=False),  # a document's first chunk
    "prefill_first_last": Step(chunk=True, last=True, cached=False),  # a prompt's first chunk
}


def decoder_module(m: IntLlama, chunk: int, context: int, isa: str = "generic"):
    """The library's integer functions, one per STEPS entry: chunks of `chunk` tokens or one token, against an
    int8 cache of `context` positions (add_step_function); block-4 weights on ``isa``'s kernel
    (schedules/block4_gemm.select_isa of the target; "generic" runs anywhere)."""
    bb = relax.BlockBuilder()
    for name, step in STEPS.items():
        add_step_function(bb, m, name, chunk if step.chunk else 1, context, isa, step.last, step.cached)
    return bb.get()
