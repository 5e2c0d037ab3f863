"""Target presets: what intformer can compile for, as data."""

from .presets import TARGETS, TargetSpec, resolve_target

__all__ = ["TARGETS", "TargetSpec", "resolve_target"]
