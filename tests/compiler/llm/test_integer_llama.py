"""The integer NumPy reference of a LLaMA decoder (compiler/llm/integer.py): integer codes everywhere, decode
steps from the int8 cache equal a prefill bit for bit, and perplexity stays near fp32 on held-out text."""

import numpy as np
import pytest

from compiler.llm.calibrate import calibrate
from compiler.llm.fp32 import Fp32Llama
from compiler.llm.integer import build_integer_llama
from compiler.llm.perplexity import document_tokens, perplexity
from tests.helpers.tiny_llama import sentences

TINY_PPL_GAP = 0.01  # integer perplexity within 1% of fp32 on held-out text (measured: about 0.1%)
TINY_LOGIT_COSINE = 0.999


@pytest.fixture(scope="module")
def tiny_int(tiny_llama_loaded):
    _, tok, w = tiny_llama_loaded
    calib = [np.array(document_tokens(tok, s), np.int32) for s in sentences(12, seed=21, lo=4, hi=30)]
    ranges = calibrate(w, calib)
    return tok, w, ranges, build_integer_llama(w, ranges)


def test_calibration_records_prefill_and_decode_steps(tiny_int):
    _, w, ranges, _ = tiny_int
    s = w.shape
    assert ranges.tokens > 12 * 4
    assert ranges.lo[("q_rot", 0)].shape == (s.heads * s.head_dim,)
    assert ranges.lo[("ffn_mid", s.layers - 1)].shape == (128,)
    assert len(ranges.names("resid")) == s.layers + 1


def test_every_tensor_is_integer_and_the_cache_int8(tiny_int):
    tok, w, _, im = tiny_int
    for ly in im.layers:
        for lin in (ly.q, ly.k, ly.v, ly.o, ly.gate, ly.up, ly.down):
            assert lin.w.dtype == np.int8 and lin.m0.dtype == np.int64
    ids = np.array(document_tokens(tok, "the red house"), np.int32)
    cache = im.new_cache(32)
    out = im.forward(ids, np.arange(len(ids), dtype=np.int32), cache)
    assert out.dtype == np.int32 and out.shape == (len(ids), 256)
    assert cache.keys.dtype == np.int8 and cache.length == len(ids)
    assert cache.keys[:, :, len(ids):].any() == False  # noqa: E712  nothing written past the chunk
    assert np.array_equal(cache.k_scale, np.stack([ly.attn.k_scale for ly in im.layers]))


def test_decode_after_prefill_equals_one_prefill(tiny_int):
    tok, _, _, im = tiny_int
    ids = np.array(document_tokens(tok, sentences(1, seed=5, lo=12, hi=13)[0]), np.int32)
    n = len(ids)
    whole_cache = im.new_cache(n)
    whole = im.forward(ids, np.arange(n, dtype=np.int32), whole_cache)
    cache = im.new_cache(n)
    parts = [im.forward(ids[:5], np.arange(5, dtype=np.int32), cache)]
    for t in range(5, n):  # one token at a time, positions given at run time
        parts.append(im.forward(ids[t:t + 1], np.array([t], np.int32), cache))
    assert np.array_equal(np.concatenate(parts), whole)
    assert np.array_equal(cache.keys, whole_cache.keys) and np.array_equal(cache.values, whole_cache.values)


def test_integer_perplexity_near_fp32_on_held_out_text(tiny_int):
    tok, w, _, im = tiny_int
    held_out = sentences(10, seed=99, lo=4, hi=30)  # calibration used seed 21

    def int_logits(ids):
        return im.logits(im.forward(ids, np.arange(len(ids), dtype=np.int32), im.new_cache(len(ids))))

    def fp_logits(ids):
        return Fp32Llama(w, len(ids)).forward(ids, np.arange(len(ids)))

    fp = perplexity(held_out, tok, fp_logits)
    ip = perplexity(held_out, tok, int_logits)
    assert ip.tokens == fp.tokens
    assert abs(ip.ppl / fp.ppl - 1) <= TINY_PPL_GAP, (ip.ppl, fp.ppl)
    ids = np.array(document_tokens(tok, held_out[0]), np.int32)
    a, b = int_logits(ids).ravel(), fp_logits(ids).ravel()
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= TINY_LOGIT_COSINE


def test_static_norm_outputs_keep_decode_exact_and_perplexity_near_fp32(tiny_int):
    tok, w, ranges, default = tiny_int
    assert default.dynamic_norms and default.layers[0].attn_in[1] == 0  # symmetric dynamic rows by default
    im = build_integer_llama(w, ranges, dynamic_norms=False)
    ids = np.array(document_tokens(tok, sentences(1, seed=6, lo=10, hi=11)[0]), np.int32)
    n = len(ids)
    whole = im.forward(ids, np.arange(n, dtype=np.int32), im.new_cache(n))
    cache = im.new_cache(n)
    parts = [im.forward(ids[: n - 2], np.arange(n - 2, dtype=np.int32), cache)]
    parts += [im.forward(ids[t:t + 1], np.array([t], np.int32), cache) for t in (n - 2, n - 1)]
    assert np.array_equal(np.concatenate(parts), whole)
    held_out = sentences(10, seed=99, lo=4, hi=30)
    fp = perplexity(held_out, tok, lambda x: Fp32Llama(w, len(x)).forward(x, np.arange(len(x))))
    ip = perplexity(held_out, tok, lambda x: im.logits(im.forward(x, np.arange(len(x), dtype=np.int32),
                                                                   im.new_cache(len(x)))))
    assert abs(ip.ppl / fp.ppl - 1) <= TINY_PPL_GAP


def test_greedy_decoding_through_the_caches(tiny_int):
    from compiler.llm.generate import agreement, greedy

    tok, w, _, im = tiny_int
    prompt = document_tokens(tok, "the big dog ")
    ref = Fp32Llama(w, 64)
    want = greedy(ref.forward, prompt, 16)
    # the fp32 reference's cached decode equals one forward over the whole text, token by token
    full = Fp32Llama(w, 64).forward(np.array(prompt + want[:-1], np.int32), np.arange(len(prompt) + 15))
    assert [int(t) for t in full[len(prompt) - 1:].argmax(-1)] == want
    cache = im.new_cache(64)
    got = greedy(lambda ids, pos: im.forward(ids, pos, cache), prompt, 16)
    assert len(got) == 16 and cache.length == len(prompt) + 15
    assert agreement(got, want) >= 8  # the trained tiny model: seen 16 of 16
    assert agreement([1, 2, 3], [1, 2, 4]) == 2
