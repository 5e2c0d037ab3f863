"""Calibration methods: how an observed TensorRange becomes the real interval that int8 covers.

A registry (name -> function); `compile --calibration-method NAME` picks one.
"""

from __future__ import annotations

from typing import Callable

from compiler.calibrate.table import TensorRange


def _minmax(r: TensorRange) -> tuple[float, float]:
    return r.min, r.max


def _percentile(r: TensorRange) -> tuple[float, float]:
    return r.pct_lo, r.pct_hi


METHODS: dict[str, Callable[[TensorRange], tuple[float, float]]] = {
    "minmax": _minmax,
    "percentile": _percentile,
}
