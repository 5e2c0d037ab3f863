"""Static input shapes: parse `--input-shape NAME=DIMS` and pin every dynamic dim of the graph inputs."""

from __future__ import annotations

import onnx

from compiler.config import TensorSpec
from compiler.errors import IntformerError


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'input_ids=1x128' -> ('input_ids', (1, 128))."""
    name, sep, dims = text.partition("=")
    if not sep or not name or not dims:
        raise IntformerError(f"--input-shape '{text}': expected NAME=DIMS, e.g. input_ids=1x128")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise IntformerError(f"--input-shape '{text}': DIMS must be positive integers joined by 'x', e.g. 1x128") from None
    if any(d <= 0 for d in shape):
        raise IntformerError(f"--input-shape '{text}': every dim must be positive")
    return name.strip(), shape


def graph_inputs(model: onnx.ModelProto) -> list:
    """Graph inputs that are real inputs (older exporters list initializers as inputs too)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def onnx_dtype_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def bind_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[TensorSpec]:
    """Pin the inputs' shapes in place and return them.

    A dim given by name (dim_param) in one input's --input-shape binds the same name in every other
    input, so `--input-shape input_ids=1x128` also fixes an attention_mask declared [batch, seq].
    """
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    unknown = [n for n in shapes if n not in names]
    if unknown:
        raise IntformerError(f"--input-shape names unknown input(s) {unknown}; the model's inputs are {names}")
    params: dict[str, int] = {}
    for inp in inputs:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            given = shapes[inp.name]
            if len(dims) != len(given):
                raise IntformerError(f"--input-shape {inp.name}: the model's input has rank {len(dims)} "
                                     f"but {len(given)} dims were given")
            for d, v in zip(dims, given):
                if d.HasField("dim_value") and d.dim_value != v:
                    raise IntformerError(f"--input-shape {inp.name}: dim {d.dim_value} of the model is fixed, got {v}")
                if d.HasField("dim_param"):
                    params.setdefault(d.dim_param, v)
    specs = []
    missing = []
    for inp in inputs:
        tt = inp.type.tensor_type
        given = shapes.get(inp.name)
        out = []
        for k, d in enumerate(tt.shape.dim):
            if given is not None:
                v = given[k]
            elif d.HasField("dim_value") and d.dim_value > 0:
                v = d.dim_value
            elif d.HasField("dim_param") and d.dim_param in params:
                v = params[d.dim_param]
            else:
                missing.append(f"{inp.name}[{k}]" + (f" ({d.dim_param})" if d.HasField("dim_param") else ""))
                v = None
            out.append(v)
        if None not in out:
            for d, v in zip(tt.shape.dim, out):
                d.ClearField("dim_param")
                d.dim_value = v
            specs.append(TensorSpec(inp.name, tuple(out), onnx_dtype_name(tt.elem_type)))
    if missing:
        hint = " ".join(f"--input-shape {i.name}=" + "x".join("N" for _ in i.type.tensor_type.shape.dim)
                        for i in inputs if any(m.startswith(i.name + "[") for m in missing))
        raise IntformerError(f"dynamic input dims without a value: {', '.join(missing)}; give them with {hint}")
    if any(s.dtype not in _INPUT_DTYPES for s in specs):
        bad = [f"{s.name}:{s.dtype}" for s in specs if s.dtype not in _INPUT_DTYPES]
        raise IntformerError(f"unsupported input dtype(s) {bad}")
    return specs


_INPUT_DTYPES = {"float32", "int64", "int32", "bool", "float16", "int8", "uint8"}
