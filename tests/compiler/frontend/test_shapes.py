import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.errors import IntformerError
from compiler.frontend.shapes import bind_input_shapes, parse_input_shape


def _model(dims_a, dims_b):
    a = helper.make_tensor_value_info("ids", TensorProto.INT64, dims_a)
    b = helper.make_tensor_value_info("mask", TensorProto.INT64, dims_b)
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    g = helper.make_graph([helper.make_node("Add", ["ids", "mask"], ["y"])], "g", [a, b], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_parse_input_shape():
    assert parse_input_shape("input_ids=1x128") == ("input_ids", (1, 128))
    for bad in ("input_ids", "input_ids=", "=1x2", "x=1xa", "x=0x3"):
        with pytest.raises(IntformerError):
            parse_input_shape(bad)


def test_named_dims_bind_across_inputs():
    m = _model(["batch", "seq"], ["batch", "seq"])
    specs = bind_input_shapes(m, {"ids": (1, 32)})
    assert [(s.name, s.shape) for s in specs] == [("ids", (1, 32)), ("mask", (1, 32))]
    assert [d.dim_value for d in m.graph.input[1].type.tensor_type.shape.dim] == [1, 32]


def test_dynamic_dim_without_value_is_an_error_naming_it():
    m = _model(["batch", "seq"], ["batch", "len2"])
    with pytest.raises(IntformerError, match=r"mask\[1\] \(len2\).*--input-shape mask=NxN"):
        bind_input_shapes(m, {"ids": (1, 32)})


def test_unknown_input_and_wrong_rank():
    m = _model(["b", "s"], ["b", "s"])
    with pytest.raises(IntformerError, match="unknown input"):
        bind_input_shapes(m, {"nope": (1, 2)})
    with pytest.raises(IntformerError, match="rank 2"):
        bind_input_shapes(m, {"ids": (1, 2, 3)})


def test_fixed_dim_conflict():
    m = _model([1, 8], [1, 8])
    assert bind_input_shapes(m, {})[0].shape == (1, 8)
    with pytest.raises(IntformerError, match="fixed"):
        bind_input_shapes(m, {"ids": (1, 9)})
    _ = np, onnx
