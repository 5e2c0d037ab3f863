"""The integer representation that scale propagation carries for every tensor, and small readers of constants
shared by its rule modules (compiler/passes/propagate_scales.py, compiler/passes/head_rules.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tvm
from tvm import relax

from compiler.tvm_compat import constant_value

INT_RANGE = {"int8": 128, "uint8": 256, "int16": 32768, "int32": 2 ** 31, "int64": 2 ** 40}


@dataclass(frozen=True)
class IntRepr:
    """real = scale * (expr - zp); |expr - zp| <= bound."""

    expr: relax.Expr
    scale: float
    zp: int
    dtype: str
    bound: int


@dataclass(frozen=True)
class Probe:
    """A LayerNorm's integer output in the integer graph, where `eval --per-layer` reads the error."""

    layer: int  # the LayerNorm's index in graph order
    value: IntRepr


def op(name):
    return tvm.ir.Op.get(name)


def scalar(expr) -> Optional[float]:
    """The value of a one-element constant, else None."""
    v = constant_value(expr)
    if v is None or v.size != 1:
        return None
    return float(v.reshape(()).item())
