"""Input shapes: parse `--input-shape NAME=DIMS` (a dim may be a range LO..HI) and pin every dynamic dim of the
graph inputs (a ranged dim at its largest size; the ranged pipeline pins each compiled size in turn)."""

from __future__ import annotations

import onnx

from compiler.config import DimRange, TensorSpec
from compiler.errors import IntformerError


def parse_input_shape(text: str) -> tuple[str, tuple]:
    """'input_ids=1x128' -> ('input_ids', (1, 128)); 'input_ids=1x1..128' -> ('input_ids', (1, DimRange(1, 128)))."""
    name, sep, dims = text.partition("=")
    if not sep or not name or not dims:
        raise IntformerError(f"--input-shape '{text}': expected NAME=DIMS, e.g. input_ids=1x128")
    shape = []
    for part in dims.lower().split("x"):
        lo, dots, hi = part.partition("..")
        try:
            d = DimRange(int(lo), int(hi)) if dots else int(part)
        except ValueError:
            raise IntformerError(f"--input-shape '{text}': DIMS must be positive integers or ranges LO..HI joined "
                                 "by 'x', e.g. 1x128 or 1x1..128") from None
        if isinstance(d, DimRange):
            if d.lo < 1:
                raise IntformerError(f"--input-shape '{text}': range {d} starts below 1")
            if d.lo > d.hi:
                raise IntformerError(f"--input-shape '{text}': range {d} is empty (LO > HI)")
            if d.lo == d.hi:
                d = d.lo
        elif d <= 0:
            raise IntformerError(f"--input-shape '{text}': every dim must be positive")
        shape.append(d)
    return name.strip(), tuple(shape)


def _top(v) -> int:
    return v.hi if isinstance(v, DimRange) else v


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
    params: dict[str, int | DimRange] = {}
    for inp in inputs:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            given = shapes[inp.name]
            if len(dims) != len(given):
                raise IntformerError(f"--input-shape {inp.name}: the model's input has rank {len(dims)} "
                                     f"but {len(given)} dims were given")
            for k, (d, v) in enumerate(zip(dims, given)):
                if d.HasField("dim_value") and d.dim_value > 0 and isinstance(v, DimRange):
                    raise IntformerError(f"--input-shape {inp.name}: dim {k} is fixed to {d.dim_value} by the "
                                         f"model; it cannot take the range {v}")
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != v:
                    raise IntformerError(f"--input-shape {inp.name}: dim {d.dim_value} of the model is fixed, got {v}")
                if d.HasField("dim_param"):
                    if isinstance(v, DimRange):
                        v = DimRange(v.lo, v.hi, d.dim_param)
                    old = params.setdefault(d.dim_param, v)
                    if (isinstance(old, DimRange) or isinstance(v, DimRange)) and \
                            (getattr(old, "lo", old), _top(old)) != (getattr(v, "lo", v), _top(v)):
                        raise IntformerError(f"--input-shape {inp.name}: dim '{d.dim_param}' is {old} for another "
                                             f"input but {v} here")
    specs = []
    missing = []
    for inp in inputs:
        tt = inp.type.tensor_type
        given = shapes.get(inp.name)
        out, ranges = [], []
        for k, d in enumerate(tt.shape.dim):
            if given is not None:
                v = given[k]
                if isinstance(v, DimRange) and d.HasField("dim_param"):
                    v = params[d.dim_param]
                elif isinstance(v, DimRange):
                    v = DimRange(v.lo, v.hi, f"{inp.name}[{k}]")
            elif d.HasField("dim_value") and d.dim_value > 0:
                v = d.dim_value
            elif d.HasField("dim_param") and d.dim_param in params:
                v = params[d.dim_param]
            else:
                missing.append(f"{inp.name}[{k}]" + (f" ({d.dim_param})" if d.HasField("dim_param") else ""))
                v = None
            if isinstance(v, DimRange):
                ranges.append((k, v.lo, v.hi, v.name))
                v = v.hi  # pinned at its largest size
            out.append(v)
        if None not in out:
            for d, v in zip(tt.shape.dim, out):
                d.ClearField("dim_param")
                d.dim_value = v
            specs.append(TensorSpec(inp.name, tuple(out), onnx_dtype_name(tt.elem_type), tuple(ranges)))
    if missing:
        hint = " ".join(f"--input-shape {i.name}=" + "x".join("N" for _ in i.type.tensor_type.shape.dim)
                        for i in inputs if any(m.startswith(i.name + "[") for m in missing))
        raise IntformerError(f"dynamic input dims without a value: {', '.join(missing)}; give them with {hint}")
    if any(s.dtype not in _INPUT_DTYPES for s in specs):
        bad = [f"{s.name}:{s.dtype}" for s in specs if s.dtype not in _INPUT_DTYPES]
        raise IntformerError(f"unsupported input dtype(s) {bad}")
    return specs


_INPUT_DTYPES = {"float32", "int64", "int32", "bool", "float16", "int8", "uint8"}
