"""Encoder exports with the heads users put on them (sentence-transformers pooling and normalization, CLS
pooling, AutoModelForSequenceClassification with logits, softmax or sigmoid), from both exporters: integer-only
with the defaults, close to onnxruntime fp32, and the library bit-exact with the NumPy reference."""

import numpy as np
import onnxruntime as ort
import pytest

from compiler.api import compile_model, load
from compiler.config import CompileOptions
from compiler.pipeline import run_pipeline
from tests.helpers.tiny_models import export_tiny, sample_inputs

MIN_COSINE = 0.99  # random-weight tiny models, per sample
MAX_LOGIT_ERROR = 0.1  # mean |error| of logits (spread about 1) or probabilities


def _integer_graph(tmp_path, kind, head, dynamo, opset):
    model = export_tiny(kind, str(tmp_path / f"{kind}_{head}.onnx"), dynamo=dynamo, opset=opset, head=head)
    np.savez(tmp_path / "calib.npz", **sample_inputs(kind, 12, seed=3))
    opts = CompileOptions(input_shapes=(("input_ids", (1, 16)),), calibration_data=str(tmp_path / "calib.npz"))
    return model, opts, run_pipeline(model, opts, until="verify")


@pytest.mark.parametrize("kind,head,dynamo,opset", [
    ("bert", "pooled", False, 17), ("bert", "pooled", True, 20), ("distilbert", "pooled", False, 17),
    ("bert", "cls", True, 18), ("bert", "classifier", False, 17), ("roberta", "classifier", False, 17),
    ("bert", "classifier_softmax", True, 18), ("bert", "classifier_sigmoid", False, 17)])
def test_head_is_integer_only_and_close_to_fp32(kind, head, dynamo, opset, tmp_path):
    model, _, st = _integer_graph(tmp_path, kind, head, dynamo, opset)
    assert st.report.float_ops == [], st.report.float_ops
    mm = st.report.matmuls
    assert mm.int8 == mm.total > 0
    from compiler.intmath.interpreter import Interpreter

    ref = Interpreter(st.relax_mod)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feeds = sample_inputs(kind, 8, seed=4)
    errors = []
    for i in range(8):
        feed = {k: v[i] for k, v in feeds.items()}
        want = sess.run(None, feed)[0].astype(np.float64).reshape(-1)
        got = np.asarray(ref(*[feed[s.name] for s in st.inputs])[0], np.float64).reshape(-1)
        if head in ("pooled", "cls"):
            assert float(want @ got) >= MIN_COSINE, (i, got[:4], want[:4])  # both unit vectors
            assert abs(np.linalg.norm(got) - 1.0) < 1e-3
        errors.append(np.mean(np.abs(got - want)))
    # logits of 2 classes (random weights, calibrated on 12 samples): mean error within a tenth of their spread
    # (an output saturated at its calibrated range, as before OUTPUT_HEADROOM, was 0.68)
    assert np.mean(errors) <= MAX_LOGIT_ERROR if head.startswith("classifier") else True, errors


def test_pooled_library_is_bit_exact_with_reference(tmp_path):
    model, opts, _ = _integer_graph(tmp_path, "bert", "pooled", False, 17)
    lib = str(tmp_path / "pooled.so")
    res = compile_model(model, lib, opts)
    assert res.report.float_ops == []
    compiled, ref = load(lib), res.reference()
    feeds = sample_inputs("bert", 6, seed=5)
    feeds["attention_mask"][0, 0, :] = 0  # nothing unmasked: a zero embedding, as fp32 gives (0 / 1e-9)
    for i in range(6):
        feed = {k: v[i] for k, v in feeds.items()}
        got, want = compiled(feed)[0], ref(feed)[0]
        assert np.array_equal(got, want), f"sample {i}: max diff {np.max(np.abs(got - want))}"
