"""Frozen values that cross stage boundaries: options, tensor specs, quantization parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DimRange:
    """A dim given as a range `LO..HI` in --input-shape: the library accepts every size in it. ``name``: the
    range's variable (the model's dim_param, e.g. "seq", or "INPUT[AXIS]"); dims with one name take one value."""

    lo: int
    hi: int
    name: str = ""

    def __str__(self) -> str:
        return f"{self.lo}..{self.hi}"


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor as it enters or leaves a compiled model. ``shape`` is static: with ``ranges`` it is the
    largest shape accepted, and each (axis, lo, hi, variable) lets that axis take any size in [lo, hi]."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    ranges: tuple[tuple[int, int, int, str], ...] = ()

    def accepts(self, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(self.shape):
            return False
        ranged = {a: (lo, hi) for a, lo, hi, _ in self.ranges}
        return all(ranged[a][0] <= d <= ranged[a][1] if a in ranged else d == self.shape[a]
                   for a, d in enumerate(shape))

    def shape_text(self) -> str:
        """"1x128", or with ranges "1x1..128"."""
        ranged = {a: (lo, hi) for a, lo, hi, _ in self.ranges}
        return "x".join(f"{ranged[a][0]}..{ranged[a][1]}" if a in ranged else str(d) for a, d in enumerate(self.shape))

    def to_json(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.ranges:
            d["ranges"] = [[a, lo, hi, v] for a, lo, hi, v in self.ranges]
        return d

    @staticmethod
    def from_json(d: dict) -> TensorSpec:
        return TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"],
                          tuple((int(a), int(lo), int(hi), str(v)) for a, lo, hi, v in d.get("ranges", ())))


@dataclass(frozen=True)
class QParams:
    """Affine int8 quantization: real = scale * (q - zero_point).

    ``scale`` is a tuple: one entry for per-tensor, one per channel along ``axis`` otherwise.
    """

    scale: tuple[float, ...]
    zero_point: int = 0
    axis: Optional[int] = None
    dtype: str = "int8"


@dataclass(frozen=True)
class CompileOptions:
    """Everything `compile` needs besides the model file."""

    target: str = "host"
    input_shapes: tuple[tuple[str, tuple[int | DimRange, ...]], ...] = ()  # a dim may be a range
    calibration_data: Optional[str] = None
    calibration_table: Optional[str] = None
    calibration_method: str = "minmax"
    calibration_samples: int = 0  # 0: every sample of the .npz
    smoothing_alpha: Optional[float] = None  # None: chosen per activation; 0: off (compiler/smooth.py)
    token_scales: bool = True  # constant-weight matmul inputs: int8 scale per token at run time (integerize_matmul)
    length_augmentation: bool = True  # calibrate on a short variant of each sample too (calibrate/collect.py)
    integer_only: bool = True  # fail if an op still computes in float (except the types in allow_float)
    allow_float: tuple[str, ...] = ()  # op types allowed to stay float, e.g. ("softmax",) or ("relax.nn.softmax",)
    dump_ir: Optional[str] = None
    tuning_db: Optional[str] = None  # `intformer tune` database folder: tuned kernels for this target
    buckets: tuple[tuple[str, tuple[int, ...]], ...] = ()  # ranged dims: variable -> compiled sizes (default: auto)

    def shape_dict(self) -> dict[str, tuple[int, ...]]:
        return dict(self.input_shapes)
