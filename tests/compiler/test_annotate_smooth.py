"""The ONNX-level stages: smoothing keeps the function; annotation puts Q/DQ where the integer rewrite needs it."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler import smooth
from compiler.annotate import asymmetric_qparams, insert_qdq, symmetric_qparams
from compiler.calibrate import collect
from compiler.calibrate.methods import METHODS
from compiler.config import TensorSpec
from compiler.errors import IntformerError
from compiler.smooth import apply_smoothing, row_quantized_activations, smoothing_candidates, smoothing_factors


def _two_layer(rng, outlier=50.0):
    """x -> MatMul(W1) -> Relu -> MatMul(h, h^T): one weight matmul, one activation x activation."""
    w1 = rng.standard_normal((8, 6)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])
    nodes = [helper.make_node("Mul", ["x", "gain"], ["xs"], name="gain"),
             helper.make_node("MatMul", ["xs", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["rt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["r", "rt"], ["y"], name="mm2")]
    gain = np.ones(8, np.float32)
    gain[3] = outlier  # an outlier channel
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(w1, "w1"),
                                                numpy_helper.from_array(gain, "gain")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_qparams():
    qp = asymmetric_qparams(-1.0, 3.0)
    assert qp.scale[0] == pytest.approx(4.0 / 255, rel=1e-6)
    assert -128 <= qp.zero_point <= 127
    # the real zero is exactly representable
    assert round(0.0 / qp.scale[0]) + qp.zero_point == qp.zero_point
    assert asymmetric_qparams(0.5, 2.0).zero_point == -128  # range widened to include 0
    assert symmetric_qparams(-3.0, 1.0) == symmetric_qparams(3.0, -1.0)
    assert symmetric_qparams(-3.0, 1.0).zero_point == 0


def test_smoothing_keeps_the_function_and_helps_outliers():
    rng = np.random.default_rng(0)
    m = _two_layer(rng)
    samples = [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(4)]
    assert list(smoothing_candidates(m)) == ["xs"]
    absmax, rows = collect.channel_stats(m, samples, ["xs"])
    factors = smoothing_factors(m, absmax, rows)  # auto: picks a non-zero alpha for the outlier channel
    assert "xs" in factors and factors["xs"].shape == (8,)
    ref = _run(m, samples[0])
    m2 = apply_smoothing(_two_layer(np.random.default_rng(0)), factors)
    np.testing.assert_allclose(_run(m2, samples[0]), ref, rtol=1e-4, atol=1e-3)
    assert {n.name for n in m2.graph.node} >= {"xs/smooth"}


def _ffn(rng):
    """x -> LayerNorm -> Reshape -> MatMul(W1) -> Relu -> MatMul(W2): a normalized and an activation input."""
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 8)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], name="ln", axis=-1),
             helper.make_node("Reshape", ["ln", "shape"], ["lr"], name="r"),
             helper.make_node("MatMul", ["lr", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="mm2")]
    inits = [numpy_helper.from_array(v, n) for n, v in (("w1", w1), ("w2", w2), ("g", np.ones(8, np.float32)),
                                                         ("b", np.zeros(8, np.float32)),
                                                         ("shape", np.array([4, 8], np.int64)))]
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_alpha_search_quantizes_token_scaled_activations_per_row(monkeypatch):
    """With per-token scales the FFN's activation (no normalization produces it) is quantized row by row in the
    integer graph, so the alpha search ranks its candidates with a per-row round trip; the LayerNorm output
    keeps the per-tensor one."""
    rng = np.random.default_rng(1)
    m = _ffn(rng)
    assert set(smoothing_candidates(m)) == {"lr", "a"}
    assert row_quantized_activations(m) == {"a"}  # "lr" is a LayerNorm output through a Reshape
    samples = [{"x": rng.standard_normal((4, 8)).astype(np.float32) * 3} for _ in range(4)]
    absmax, rows = collect.channel_stats(m, samples, ["lr", "a"])
    seen = []
    real = smooth._fake_quant_per_row
    monkeypatch.setattr(smooth, "_fake_quant_per_row", lambda x: seen.append(x.shape) or real(x))
    smoothing_factors(m, absmax, rows)
    assert seen == []
    smoothing_factors(m, absmax, rows, per_row=frozenset(row_quantized_activations(m)))
    assert len(seen) == len(smooth.ALPHA_GRID) and all(sh[-1] == 16 for sh in seen)  # only "a" (16 channels)
    q = real(np.array([[0.0, 0.01, 0.02], [0.0, 100.0, 255.0]]))
    np.testing.assert_allclose(q[0], [0.0, 0.01, 0.02], atol=0.02 / 255 / 2 + 1e-12)  # a small row keeps its steps


def test_annotation_covers_every_matmul_and_missing_ranges_are_named():
    rng = np.random.default_rng(1)
    m = _two_layer(rng)
    samples = [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(3)]
    table = collect.collect(m, samples, "sha", [TensorSpec("x", (4, 8), "float32")])
    annotated, n = insert_qdq(_two_layer(np.random.default_rng(1)), table, METHODS["minmax"])
    assert n == 2
    q = [node for node in annotated.graph.node if node.op_type == "QuantizeLinear"]
    # mm1: activation input + output; mm2: both operands (r asym, rt sym) + output
    assert len(q) == 5
    out = _run(annotated, samples[0])
    ref = _run(m, samples[0])
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99
    bad = table.__class__(**{**table.__dict__, "tensors": tuple(t for t in table.tensors if t[0] != "h")})
    with pytest.raises(IntformerError, match="no range for tensor 'h'.*mm1"):
        insert_qdq(_two_layer(np.random.default_rng(1)), bad, METHODS["minmax"])
