"""A Qwen2-style decoder (q/k/v biases) with the default dynamic RMSNorm rows: the bias, on the base scale, is
brought under each row's exponent before the row's requantization (il.shift_rows), so the integer reference
stays near fp32 (it was off by a factor of 2**k on the bias before), and the compiled library equals the
reference bit for bit. One compile (about 35 s on one core)."""

import numpy as np
import pytest

from compiler.intmath import llama as il
from compiler.llm.calibrate import calibrate
from compiler.llm.fp32 import Fp32Llama
from compiler.llm.integer import build_integer_llama
from compiler.llm.perplexity import document_tokens, perplexity
from tests.helpers.tiny_llama import compile_tiny, sentences

PPL_GAP = 0.02
CONTEXT = 32


@pytest.fixture(scope="module")
def loaded(tiny_qwen2_dir):
    from compiler.llm.weights import from_transformers, load_causal_lm

    model, tok = load_causal_lm(tiny_qwen2_dir)
    w = from_transformers(model)
    assert w.layers[0].bq is not None and np.abs(w.layers[0].bq).max() > 0.3
    return tok, w


def test_shift_rows_rounds_half_up():
    v = np.array([5, -5, 6, 7, 0])
    k = np.array([[0], [1], [2]])
    np.testing.assert_array_equal(il.shift_rows(v, k), [[5, -5, 6, 7, 0], [3, -2, 3, 4, 0], [1, -1, 2, 2, 0]])


def test_reference_with_biases_near_fp32(loaded):
    tok, w = loaded
    ranges = calibrate(w, [np.array(document_tokens(tok, s), np.int32) for s in sentences(12, seed=21, lo=4, hi=30)])
    im = build_integer_llama(w, ranges)
    held_out = sentences(10, seed=99, lo=4, hi=30)
    fp = perplexity(held_out, tok, lambda x: Fp32Llama(w, len(x)).forward(x, np.arange(len(x))))
    ip = perplexity(held_out, tok, lambda x: im.logits(im.forward(x, np.arange(len(x), dtype=np.int32),
                                                                  im.new_cache(len(x)))))
    assert abs(ip.ppl / fp.ppl - 1) <= PPL_GAP, (ip.ppl, fp.ppl)


def test_library_with_biases_equals_the_reference(tiny_qwen2_dir, tmp_path_factory):
    from compiler.llm.library import LlmLibrary

    res = compile_tiny(tiny_qwen2_dir, tmp_path_factory.mktemp("qwen2_lib"), CONTEXT, seed=21)
    lib, im = LlmLibrary(res.library), res.llm_model
    # the decode step (context 32: attention on schedules/decode_attention.py) counts per layer 7 projections,
    # Q.K and P.V's two halves as matmuls, all int8, and the head
    decode = dict(res.report.graphs)["decode"]
    assert decode.matmuls.total == decode.matmuls.int8 == 10 * im.shape.layers + 1
    ids = np.array(lib.tokenizer.encode("we see the big red tree over the river", add_special_tokens=False), np.int32)
    cache = im.new_cache(CONTEXT)
    for a, b in [(0, 9)] + [(t, t + 1) for t in range(9, 14)]:
        got = lib.forward(ids[a:b])
        want = im.forward(ids[a:b], np.arange(a, b, dtype=np.int32), cache)
        assert np.array_equal(got, want), (a, b)


def test_other_biases_are_refused_by_name():
    from transformers import LlamaConfig, LlamaForCausalLM

    from compiler.errors import IntformerError
    from compiler.llm.weights import from_transformers

    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, vocab_size=64, attention_bias=True)
    with pytest.raises(IntformerError, match="o_proj"):
        from_transformers(LlamaForCausalLM(cfg))
