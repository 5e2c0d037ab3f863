"""Frozen values that cross stage boundaries: options, tensor specs, quantization parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor with a static shape, as it enters or leaves a compiled model."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: dict) -> "TensorSpec":
        return TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"])


@dataclass(frozen=True)
class QParams:
    """Affine int8 quantization: real = scale * (q - zero_point).

    ``scale`` is a tuple: one entry for per-tensor, one per channel along ``axis`` otherwise.
    """

    scale: tuple[float, ...]
    zero_point: int = 0
    axis: Optional[int] = None
    dtype: str = "int8"

    @property
    def per_tensor(self) -> bool:
        return self.axis is None


@dataclass(frozen=True)
class CompileOptions:
    """Everything `compile` needs besides the model file."""

    target: str = "host"
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    calibration_data: Optional[str] = None
    calibration_table: Optional[str] = None
    calibration_method: str = "minmax"
    calibration_samples: int = 0  # 0: every sample of the .npz
    smoothing_alpha: Optional[float] = None  # None: chosen per activation; 0: off (compiler/smooth.py)
    length_augmentation: bool = True  # calibrate on a short variant of each sample too (calibrate/collect.py)
    integer_only: bool = True  # fail if an op still computes in float (except the types in allow_float)
    allow_float: tuple[str, ...] = ()  # op types allowed to stay float, e.g. ("softmax",) or ("relax.nn.softmax",)
    dump_ir: Optional[str] = None
    tuning_db: Optional[str] = None  # `intformer tune` database folder: tuned kernels for this target
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def shape_dict(self) -> dict[str, tuple[int, ...]]:
        return dict(self.input_shapes)
