"""Padding never enters a calibration statistic: which axes of each tensor run over the tokens, and which
positions of a sample are real (its attention mask).

The token axes of a tensor are found by pinning the model's sequence dim (the attention mask's axis 1) at a
second length and comparing the two folded graphs' inferred shapes: an axis whose size follows the length is
a token axis (the attention scores have two, queries and keys). A tensor whose shape changes in any other way
(a flattened batch x sequence) keeps every value, as before.

Expects: the shape-pinned, folded model the observer runs, its input specs and the original model file.
Guarantees: `TokenPositions.valid(name, value, feed)` -> a boolean array of the value's shape marking the real
positions, or None (use every value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from compiler.config import TensorSpec


@dataclass(frozen=True)
class TokenPositions:
    mask: str  # the attention-mask input
    length: int  # the sequence length the observed model is pinned at
    axes: tuple[tuple[str, tuple[int, ...]], ...]  # tensor -> its token axes

    def valid(self, name: str, value: np.ndarray, feed: dict) -> np.ndarray | None:
        axes = dict(self.axes).get(name)
        m = feed.get(self.mask)
        if not axes or m is None:
            return None
        m = np.asarray(m).reshape(-1, np.shape(m)[-1]) != 0
        if m.all():
            return None
        b, s = m.shape
        shape = value.shape
        batched = b > 1 and 0 not in axes and len(shape) > 0 and shape[0] == b
        if b > 1 and not batched:
            return None
        valid = np.ones(shape, dtype=bool)
        for a in axes:
            if shape[a] != s:
                return None
            view = [1] * len(shape)
            view[a] = s
            if batched:
                view[0] = b
                valid &= m.reshape(view)
            else:
                valid &= m[0].reshape(view)
        return valid


def _shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    return out


def find_token_positions(model: onnx.ModelProto, specs: list[TensorSpec], model_path: str) -> TokenPositions | None:
    """None when the model has no attention-mask input of shape (batch, seq) or its seq dim is not dynamic."""
    from compiler.frontend.load import load_onnx
    from compiler.frontend.shapes import bind_input_shapes, graph_inputs
    from compiler.frontend.simplify import simplify

    masks = [s for s in specs if "mask" in s.name.lower() and len(s.shape) == 2]
    if not masks:
        return None
    mask = masks[0]
    original = load_onnx(model_path)
    dims = {i.name: i.type.tensor_type.shape.dim for i in graph_inputs(original)}
    seq = dims[mask.name][1]
    if not seq.HasField("dim_param"):
        return None
    length = mask.shape[1]
    other = length - 1 if length > 1 else length + 1
    shapes = {}
    for s in specs:
        shapes[s.name] = tuple(other if d.HasField("dim_param") and d.dim_param == seq.dim_param else v
                               for d, v in zip(dims[s.name], s.shape))
    try:
        bind_input_shapes(original, shapes)
        second = _shapes(simplify(original))
    except Exception:  # noqa: BLE001  (a model that does not fold at another length: keep every value)
        return None
    first = _shapes(model)
    axes = {}
    for name, a in first.items():
        b = second.get(name)
        if b is None or len(a) != len(b):
            continue
        moved = tuple(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
        if moved and all(a[k] == length and b[k] == other for k in moved):
            axes[name] = moved
    return TokenPositions(mask.name, length, tuple(axes.items()))


def extend(positions: TokenPositions | None, model: onnx.ModelProto) -> TokenPositions | None:
    """The same positions for a model with nodes added (smoothing's Mul before a MatMul): a new tensor of the
    same shape as an input with known token axes inherits them."""
    if positions is None:
        return None
    axes = dict(positions.axes)
    shapes = _shapes(model)
    for node in model.graph.node:
        for o in node.output:
            if o in axes or o not in shapes:
                continue
            for i in node.input:
                if i in axes and shapes.get(i) == shapes[o]:
                    axes[o] = axes[i]
                    break
    return TokenPositions(positions.mask, positions.length, tuple(axes.items()))
