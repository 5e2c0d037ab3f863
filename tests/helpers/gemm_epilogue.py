"""Epilogues for the fused-GEMM tests and their NumPy twin (what each step of schedules/gemm_epilogue.OPS means,
written independently of the TIR, as the Relax ops compute it)."""

from __future__ import annotations

import numpy as np

from schedules.gemm_epilogue import Epilogue, EpilogueStep as S

_NUMPY = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "right_shift": np.right_shift,
    "left_shift": np.left_shift, "minimum": np.minimum, "maximum": np.maximum, "floor_divide": np.floor_divide,
    "mulhi": lambda x, c: (np.asarray(x, np.int64) * np.asarray(c, np.int64)) >> 32,  # the product's high word
}
_TAKE = {"fast": lambda i, size: i, "clip": lambda i, size: np.clip(i, 0, size - 1), "wrap": np.mod}


def apply_epilogue(epi: Epilogue, operands, acc: np.ndarray) -> np.ndarray:
    """The chain on an int32 (M, N) accumulator, in NumPy (wrapping integer arithmetic)."""
    x, ops = acc, iter(operands)
    for step in epi.steps:
        c = next(ops) if step.operand else None
        if step.operand == "row":  # one value per output row
            c = np.asarray(c).reshape(-1, 1)
        elif step.operand == "outer":  # a row value times a column vector, in the step's type
            c = np.asarray(c, step.dtype).reshape(-1, 1) * np.asarray(next(ops), step.dtype).reshape(1, -1)
        if step.op in _NUMPY:
            x = _NUMPY[step.op](*((c, x) if step.swap else (x, c))).astype(step.dtype)
        elif step.op == "astype":
            x = x.astype(step.dtype)
        elif step.op == "negative":
            x = np.negative(x)
        elif step.op == "clip":
            x = np.clip(x, *step.attrs).astype(x.dtype)
        elif step.op == "take":
            x = c[_TAKE[step.attrs[0]](x, len(c))]
        else:
            raise NotImplementedError(step.op)
    return x


def requantize(n: int, rng, out: str = "int8", per_channel: bool = True, bias: bool = True, lookup: bool = False,
               rows: int = 0):
    """(Epilogue, operands) of a requantize chain like integerize's (intops.emit_qmatmul + emit_requantize), with
    an optional int16 table lookup and second rescale to int8 after it (GELU's FFN); with ``rows`` (the output's
    row count) the row-scaled form instead (intops.emit_requantize_rows: a per-row zero point times the column
    sums, a per-row left shift, then per-column rounding)."""
    steps, ops = [], []
    if rows:
        return _requantize_rows(n, rows, rng, out)

    def add(step, value=None):
        steps.append(step)
        if value is not None:
            ops.append(np.asarray(value, step.operand_dtype).reshape(-1))

    kind = "vector" if per_channel and n > 1 else "scalar"
    width = n if kind == "vector" else 1
    add(S("subtract", "int32", "vector" if n > 1 else "scalar", "int32"), rng.integers(-5000, 5000, n if n > 1 else 1))
    if bias:
        add(S("add", "int32", kind, "int32"), rng.integers(-20000, 20000, width))
    add(S("astype", "int64"))
    add(S("multiply", "int64", kind, "int64"), rng.integers(1 << 29, 1 << 31, width))
    shift = 40 if out == "int8" else 36
    add(S("add", "int64", "scalar", "int64"), [1 << (shift - 1)])
    add(S("right_shift", "int64", "scalar", "int64"), [shift])
    add(S("add", "int64", "scalar", "int64"), [-3])
    info = np.iinfo(out)
    add(S("clip", "int64", attrs=(int(info.min), int(info.max))))
    add(S("astype", out))
    if lookup:
        table = rng.integers(-32768, 32768, 1 << 16).astype(np.int16)
        add(S("astype", "int64"))
        add(S("add", "int64", "scalar", "int64"), [-int(info.min)])
        add(S("take", "int16", "table", "int16", attrs=("fast",), table_size=len(table)), table)
        add(S("astype", "int64"))
        add(S("multiply", "int64", "scalar", "int64"), [1518500250])
        add(S("right_shift", "int64", "scalar", "int64"), [38])
        add(S("clip", "int64", attrs=(-128, 127)))
        add(S("astype", "int8"))
    return Epilogue(tuple(steps)), tuple(ops)


def _requantize_rows(n: int, rows: int, rng, out: str):
    """(acc + z_i * colsum_j) * m0_j << k_i, + 2**(sh_j - 1), >> sh_j, + bias_j, clip, astype
    (intmath.requantize_rows; z and colsum stored as int32, as the fuse pass passes them)."""
    sh = rng.integers(20, 40, n)
    steps = (S("astype", "int64"), S("add", "int64", "outer", "int32"),
             S("multiply", "int64", "vector", "int64"), S("left_shift", "int64", "row", "int64"),
             S("add", "int64", "vector", "int64"), S("right_shift", "int64", "vector", "int64"),
             S("add", "int64", "vector", "int64"), S("clip", "int64", attrs=(int(np.iinfo(out).min),
                                                                            int(np.iinfo(out).max))),
             S("astype", out))
    ops = (rng.integers(-300, 300, rows).astype(np.int32), rng.integers(-40000, 40000, n).astype(np.int32),
           rng.integers(1 << 20, 1 << 22, n).astype(np.int64), rng.integers(0, 10, rows).astype(np.int64),
           (np.int64(1) << (sh - 1)).astype(np.int64), sh.astype(np.int64), rng.integers(-900, 900, n).astype(np.int64))
    return Epilogue(steps), ops
