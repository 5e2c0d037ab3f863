"""`--token-scales` (the default) on a tiny BERT: every constant-weight matmul input that no LayerNorm produces is
quantized per token at run time; the graph stays float-free, the library equals the NumPy reference bit for bit,
the manifest says how it was built (for `eval --per-layer`), and the outputs stay as close to fp32 as the static
scales' (a wrong row scale or bias would not)."""

from dataclasses import replace

import numpy as np
import pytest

from compiler.api import compile_model, load
from compiler.config import CompileOptions


def _cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def builds(tiny_bert, tmp_path_factory):
    model, calib, _ = tiny_bert
    d = tmp_path_factory.mktemp("tokscales")
    out = {}
    for name, on in (("static", False), ("tokens", None)):
        lib = str(d / f"{name}.so")
        opts = CompileOptions(input_shapes=(("input_ids", (1, 16)),), calibration_data=calib)
        if on is not None:
            opts = replace(opts, token_scales=on)
        out[name] = (compile_model(model, lib, opts), lib)
    return model, out


def test_token_scales_float_free_and_bit_exact(builds):
    from tests.helpers.tiny_models import sample_inputs

    _, out = builds
    res, lib = out["tokens"]
    assert res.report.float_ops == []
    ops = {o.op for o in res.report.ops}
    assert "relax.min" in ops  # each row's smallest code: the per-row scales and zero points were built
    assert "relax.min" not in {o.op for o in out["static"][0].report.ops}
    model, ref = load(lib), res.reference()
    assert model.manifest.token_scales and not load(out["static"][1]).manifest.token_scales
    feeds = sample_inputs("bert", 12, seed=3)
    for i in range(12):
        feed = {k: v[i] for k, v in feeds.items()}
        assert np.array_equal(model(feed)[0], ref(feed)[0]), f"sample {i}"


def test_token_scales_keep_fp32_accuracy(builds):
    import onnxruntime as ort

    from tests.helpers.tiny_models import sample_inputs

    onnx_path, out = builds
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feeds = sample_inputs("bert", 12, seed=5)
    libs = {k: load(lib) for k, (_, lib) in out.items()}
    cos = {k: [] for k in libs}
    for i in range(12):
        feed = {k: v[i] for k, v in feeds.items()}
        want = sess.run(None, {n: feed[n] for n in names if n in feed})[0]
        for k, m in libs.items():
            cos[k].append(_cosine(m(feed)[0], want))
    assert min(cos["static"]) > 0.98
    assert np.mean(cos["tokens"]) > np.mean(cos["static"]) - 0.01 and min(cos["tokens"]) > 0.97, cos
