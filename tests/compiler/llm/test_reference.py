"""The fp32 NumPy reference of a LLaMA decoder equals transformers, with and without the cache, and the
perplexity protocol equals transformers' own loss."""

import numpy as np
import pytest
import torch

from compiler.llm.fp32 import Fp32Llama
from compiler.llm.perplexity import document_tokens, perplexity, read_documents, sequence_nll
from tests.helpers.tiny_llama import sentences

FP32_LOGIT_TOL = 1e-4  # NumPy against torch, both fp32


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids)[None], dtype=torch.long)).logits[0].numpy()


def test_fp32_reference_equals_transformers_prefill_and_decode(tiny_llama_loaded):
    model, tok, w = tiny_llama_loaded
    assert (w.shape.heads, w.shape.kv_heads, w.shape.head_dim) == (4, 2, 16)
    ids = np.array(document_tokens(tok, sentences(1, seed=3)[0]), np.int32)
    want = _hf_logits(model, ids)
    ref = Fp32Llama(w, 128)
    assert np.max(np.abs(ref.forward(ids, np.arange(len(ids)))[-5:] - want[-5:])) < FP32_LOGIT_TOL
    ref.reset()  # a prefill chunk, then one token at a time from the cache
    split = len(ids) - 4
    got = [ref.forward(ids[:split], np.arange(split, dtype=np.int32))]
    for t in range(split, len(ids)):
        got.append(ref.forward(ids[t:t + 1], np.array([t], np.int32)))
    assert np.max(np.abs(np.concatenate(got) - want)) < FP32_LOGIT_TOL


def test_perplexity_protocol_equals_transformers_loss(tiny_llama_loaded, tmp_path):
    model, tok, w = tiny_llama_loaded
    docs = sentences(6, seed=11, lo=1, hi=40) + ["", "x"]  # an empty and a one-token document predict nothing
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    assert read_documents(str(path)) == docs
    max_len = 48
    total, count = 0.0, 0
    for d in docs:  # transformers: mean loss over the predicted tokens of each document
        ids = tok.encode(d, add_special_tokens=False)[:max_len]
        if len(ids) < 2:
            continue
        t = torch.tensor([ids])
        with torch.no_grad():
            total += float(model(t, labels=t).loss) * (len(ids) - 1)
        count += len(ids) - 1
    res = perplexity(read_documents(str(path)), tok, lambda ids: _hf_logits(model, ids), max_len=max_len)
    assert res.tokens == count and res.documents == 6
    assert res.ppl == pytest.approx(np.exp(total / count), rel=1e-5)
    assert res.to_json() == {"ppl": res.ppl, "tokens": count}
    ref = perplexity(docs, tok, lambda ids: Fp32Llama(w, max_len).forward(ids, np.arange(len(ids))), max_len)
    assert ref.ppl == pytest.approx(res.ppl, rel=1e-5)
    assert 1.0 < res.ppl < 20.0  # the trained tiny model predicts (uniform would be 256)


def test_sequence_nll_and_refusals(tiny_llama_loaded):
    _, tok, _ = tiny_llama_loaded
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1, 1, 1]]))
    assert sequence_nll(logits, np.array([0, 1, 2])) == pytest.approx(-np.log(0.25) - np.log(0.8))
    with pytest.raises(ValueError):
        perplexity(["a"], tok, lambda ids: None)
    with pytest.raises(ValueError):
        perplexity(["abc"], tok, lambda ids: None, max_len=1)
