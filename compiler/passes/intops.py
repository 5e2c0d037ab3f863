"""Emitters for the integer building blocks in Relax, shared by the passes.

Each emitter has its NumPy twin in :mod:`compiler.intmath` and produces the same bits.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from compiler.intmath.fixed_point import quantize_multipliers
from compiler.tvm_compat import const, tensor_info

R = relax.op


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (the last axis): (w_q int8, scales float32 of shape (N,))."""
    w = np.asarray(w, dtype=np.float32)
    absmax = np.max(np.abs(w.reshape(-1, w.shape[-1])), axis=0)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale


def emit_qmatmul(bb, a_q, za: int, b_q, zb: int, b_value: np.ndarray | None):
    """int32 sum_k (a - za)(b - zb): one int8 x int8 -> int32 matmul plus zero-point corrections,
    constant when the operand is constant."""
    acc = bb.emit(R.matmul(a_q, b_q, out_dtype="int32"))
    _, a_shape = tensor_info(a_q)
    k = a_shape[-1]
    if za != 0:
        if b_value is not None:
            colsum = b_value.astype(np.int64).sum(axis=-2, keepdims=True) * za
            acc = bb.emit(R.subtract(acc, const(colsum, "int32")))
        else:
            cs = bb.emit(R.sum(R.astype(b_q, "int32"), axis=[-2], keepdims=True))
            acc = bb.emit(R.subtract(acc, bb.emit(R.multiply(cs, const(za, "int32")))))
    if zb != 0:
        rs = bb.emit(R.sum(R.astype(a_q, "int32"), axis=[-1], keepdims=True))
        acc = bb.emit(R.subtract(acc, bb.emit(R.multiply(rs, const(zb, "int32")))))
        if za != 0:
            acc = bb.emit(R.add(acc, const(k * za * zb, "int32")))
    return acc


def emit_requantize(bb, acc, multiplier: np.ndarray, zero_point: int, out_dtype: str = "int8"):
    """int32 -> int8 by a fixed-point multiply and a rounding right shift (half up), no float arithmetic.

    ``multiplier`` is the real scale ratio, scalar or per channel along the last axis.
    """
    m0, shift = quantize_multipliers(np.asarray(multiplier, dtype=np.float64))
    if m0.ndim and np.all(shift == shift.flat[0]):
        shift = shift.flat[0]
    x = bb.emit(R.astype(acc, "int64"))
    x = bb.emit(R.multiply(x, const(m0, "int64")))
    x = bb.emit(R.add(x, const(np.left_shift(np.int64(1), np.asarray(shift, np.int64) - 1), "int64")))
    x = bb.emit(R.right_shift(x, const(shift, "int64")))
    if zero_point:
        x = bb.emit(R.add(x, const(zero_point, "int64")))
    info = np.iinfo(out_dtype)
    x = bb.emit(R.clip(x, int(info.min), int(info.max)))
    return bb.emit(R.astype(x, out_dtype))
