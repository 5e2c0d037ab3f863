import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import IntformerError
from compiler.frontend.op_support import check_supported_ops
from compiler.frontend.simplify import simplify


def _run(model, feed):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("trans_b,alpha,beta", [(0, 1.0, 1.0), (1, 1.0, 1.0), (1, 0.5, 2.0)])
def test_gemm_becomes_matmul_and_keeps_the_function(trans_b, alpha, beta):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5) if trans_b else (5, 6)).astype(np.float32)
    c = rng.standard_normal((6,)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)
    g = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": rng.standard_normal((3, 5)).astype(np.float32)}
    ref = _run(m, feed)[0]
    s = simplify(m)
    assert "Gemm" not in {n.op_type for n in s.graph.node}
    assert "MatMul" in {n.op_type for n in s.graph.node}
    np.testing.assert_allclose(_run(s, feed)[0], ref, rtol=1e-5, atol=1e-5)


def test_unsupported_ops_are_listed_with_node_names():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("FakeOpA", ["a"], ["b"], name="first_fake", domain="com.example"),
             helper.make_node("FakeOpA", ["b"], ["c"], name="second_fake", domain="com.example"),
             helper.make_node("Identity", ["c"], ["y"], name="id")]
    g = helper.make_graph(nodes, "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(IntformerError) as e:
        check_supported_ops(m, "m.onnx")
    msg = str(e.value)
    assert "com.example.FakeOpA" in msg and "first_fake" in msg and "second_fake" in msg
    assert "Relu" not in msg
    _ = onnx
