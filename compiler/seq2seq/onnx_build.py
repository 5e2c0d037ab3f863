"""A small ONNX graph builder (opset 17, static shapes) for the importers: named nodes, constant weights as
initializers, and the Transformer pieces the integer compiler knows how to handle (MatMul by a constant weight,
bias Add, LayerNormalization, Softmax over the last axis, additive attention masks from ``Where`` of scalars)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MASK_VALUE = -1e9  # added to the attention scores of padding positions


class GraphBuilder:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count: dict[str, int] = {}

    # ---- plumbing ----------------------------------------------------------------------------------------
    def _fresh(self, base: str) -> str:
        n = self._count.get(base, 0)
        self._count[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def input(self, name: str, shape, dtype=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def output(self, value: str, name: str, shape, dtype=TensorProto.FLOAT) -> str:
        """Expose `value` as graph output `name` (an Identity when the names differ)."""
        if value != name:
            self.op("Identity", [value], name=name, out=name)
        self.outputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def const(self, name: str, value) -> str:
        name = self._fresh(name)
        self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def op(self, op_type: str, inputs: list[str], name: str, out: str | None = None, **attrs) -> str:
        name = self._fresh(name)
        out = out or name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, list(self.inits.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="intformer")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    # ---- layers ------------------------------------------------------------------------------------------
    def linear(self, x: str, w: np.ndarray, b: np.ndarray | None, name: str) -> str:
        """x @ w (+ b): w is (in, out), a constant."""
        y = self.op("MatMul", [x, self.const(f"{name}.w", w.astype(np.float32))], name=f"{name}/MatMul")
        if b is not None:
            y = self.op("Add", [y, self.const(f"{name}.b", b.reshape(-1).astype(np.float32))], name=f"{name}/Add")
        return y

    def layer_norm(self, x: str, scale: np.ndarray, bias: np.ndarray, eps: float, name: str) -> str:
        return self.op("LayerNormalization",
                       [x, self.const(f"{name}.scale", scale.reshape(-1).astype(np.float32)),
                        self.const(f"{name}.bias", bias.reshape(-1).astype(np.float32))],
                       name=name, axis=-1, epsilon=float(eps))

    def reshape(self, x: str, shape, name: str) -> str:
        return self.op("Reshape", [x, self.const(f"{name}.shape", np.asarray(shape, np.int64))], name=name)

    def transpose(self, x: str, perm, name: str) -> str:
        return self.op("Transpose", [x], name=name, perm=list(perm))

    def scale(self, x: str, k: float, name: str) -> str:
        return self.op("Mul", [x, self.const(f"{name}.k", np.float32(k))], name=name)

    def add(self, a: str, b: str, name: str) -> str:
        return self.op("Add", [a, b], name=name)

    def attention_mask(self, mask: str, shape4, name: str) -> str:
        """src_mask (1 token / 0 padding) -> an additive (B, 1, 1, S) mask: 0 or MASK_VALUE."""
        m = self.reshape(mask, shape4, f"{name}/reshape")
        pad = self.op("Equal", [m, self.const(f"{name}.zero", np.int64(0))], name=f"{name}/is_pad")
        return self.op("Where", [pad, self.const(f"{name}.neg", np.float32(MASK_VALUE)),
                                 self.const(f"{name}.pos", np.float32(0.0))], name=f"{name}/additive")

    def split_heads(self, x: str, batch: int, length: int, heads: int, transpose_k: bool, name: str) -> str:
        """(B, L, H*dk) -> (B, H, L, dk), or (B, H, dk, L) with transpose_k (keys ready for Q @ K^T)."""
        dk = -1
        y = self.reshape(x, (batch, length, heads, dk), f"{name}/split")
        return self.transpose(y, (0, 2, 3, 1) if transpose_k else (0, 2, 1, 3), f"{name}/heads")

    def attend(self, q: str, k_t: str, v: str, mask_add: str, dk: int, batch: int, length: int, name: str) -> str:
        """softmax(q @ k^T / sqrt(dk) + mask) @ v, heads merged back: (B, Lq, H*dk)."""
        s = self.op("MatMul", [q, k_t], name=f"{name}/scores")
        s = self.scale(s, 1.0 / np.sqrt(dk), f"{name}/scale")
        s = self.add(s, mask_add, f"{name}/mask")
        p = self.op("Softmax", [s], name=f"{name}/softmax", axis=-1)
        o = self.op("MatMul", [p, v], name=f"{name}/context")
        o = self.transpose(o, (0, 2, 1, 3), f"{name}/merge")
        return self.reshape(o, (batch, length, -1), f"{name}/merge_reshape")

    def ffn_relu(self, x: str, w1, b1, w2, b2, name: str) -> str:
        h = self.op("Relu", [self.linear(x, w1, b1, f"{name}/W1")], name=f"{name}/relu")
        return self.linear(h, w2, b2, f"{name}/W2")
