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
    """Integer -> int8/int16 by a fixed-point multiply and a rounding right shift (half up), no float arithmetic.

    ``multiplier`` is the real scale ratio, scalar or per channel along the last axis.
    """
    m0, shift = quantize_multipliers(np.asarray(multiplier, dtype=np.float64))
    if m0.ndim and np.all(shift == shift.flat[0]):
        shift = shift.flat[0]
    x = _i64(bb, acc)
    x = bb.emit(R.multiply(x, const(m0, "int64")))
    x = bb.emit(R.add(x, const(np.left_shift(np.int64(1), np.asarray(shift, np.int64) - 1), "int64")))
    x = bb.emit(R.right_shift(x, const(shift, "int64")))
    if zero_point:
        x = bb.emit(R.add(x, const(zero_point, "int64")))
    info = np.iinfo(out_dtype)
    x = bb.emit(R.clip(x, int(info.min), int(info.max)))
    return bb.emit(R.astype(x, out_dtype))


# ---- integer nonlinearities (NumPy twins in compiler/intmath/integer_ops.py) -----------------------------
def _i64(bb, x):
    from compiler.tvm_compat import tensor_info

    return x if tensor_info(x)[0] == "int64" else bb.emit(R.astype(x, "int64"))


def emit_softmax(bb, x, scale: float, fine: bool = False):
    """Integer softmax over the last axis -> int8 (scale 1/255, zero point -128), or with `fine` int32 codes of
    p * 65535; see intmath.isoftmax."""
    from compiler.intmath import integer_ops as io

    c = io.softmax_constants(scale)
    i64 = lambda v: const(v, "int64")  # noqa: E731
    x = _i64(bb, x)
    d = bb.emit(R.subtract(bb.emit(R.max(x, axis=[-1], keepdims=True)), x))
    e = emit_exp_q15(bb, d, c)
    s = bb.emit(R.sum(e, axis=[-1], keepdims=True))
    k = io.SOFTMAX_RECIP_BITS
    recip = bb.emit(R.floor_divide(bb.emit(R.add(bb.emit(R.right_shift(s, i64(1))), i64(1 << k))), s))
    levels = io.SOFTMAX_FINE_LEVELS if fine else 255
    q = bb.emit(R.multiply(bb.emit(R.multiply(e, i64(levels))), recip))
    q = bb.emit(R.right_shift(bb.emit(R.add(q, i64(1 << (k - 1)))), i64(k)))
    if fine:
        return bb.emit(R.astype(q, "int32"))
    q = bb.emit(R.add(q, i64(io.SOFTMAX_OUT_ZP)))
    return bb.emit(R.astype(bb.emit(R.clip(q, -128, 127)), "int8"))


def emit_exp_q15(bb, d, c: dict):
    """exp(-d * scale) in Q15 for int64 d >= 0 (intmath.iexp_q15; c from softmax_constants)."""
    from compiler.intmath import integer_ops as io

    i64 = lambda v: const(v, "int64")  # noqa: E731
    pre = c["pre_shift"]
    if pre > 0:
        d = bb.emit(R.right_shift(d, i64(pre)))
    elif pre < 0:  # clip first: the left shift must not overflow for masked (saturated) differences
        d = bb.emit(R.left_shift(bb.emit(R.minimum(d, i64(c["d_max"]))), i64(-pre)))
    d = bb.emit(R.minimum(d, i64(c["d_max"])))
    z = bb.emit(R.right_shift(bb.emit(R.multiply(d, i64(c["z"][0]))), i64(c["z"][1])))
    r = bb.emit(R.subtract(d, bb.emit(R.multiply(z, i64(c["q_ln2"])))))
    r = bb.emit(R.left_shift(r, i64(io.SOFTMAX_TABLE_BITS)))
    idx = bb.emit(R.right_shift(bb.emit(R.multiply(r, i64(c["idx"][0]))), i64(c["idx"][1])))
    e = bb.emit(R.take(const(c["table"], "int64"), idx, axis=0))
    return bb.emit(R.right_shift(e, z))


def emit_bit_length(bb, n, max_bits: int):
    """Bits of int64 0 <= n < 2**max_bits, by comparisons (intmath.bit_length)."""
    bits = bb.emit(R.full_like(n, const(0, "int64")))
    for i in range(max_bits):
        bits = bb.emit(R.add(bits, bb.emit(R.astype(bb.emit(R.greater_equal(n, const(1 << i, "int64"))), "int64"))))
    return bits


def emit_log_softmax(bb, x, scale: float):
    """Integer log-softmax over the last axis -> int64 in the input's units (intmath.ilog_softmax)."""
    from compiler.intmath import integer_ops as io

    c = io.log_softmax_constants(scale)
    i64 = lambda v: const(v, "int64")  # noqa: E731
    x = _i64(bb, x)
    d = bb.emit(R.subtract(bb.emit(R.max(x, axis=[-1], keepdims=True)), x))
    e = emit_exp_q15(bb, d, c["exp"])
    s = bb.emit(R.left_shift(bb.emit(R.sum(e, axis=[-1], keepdims=True)), i64(io.LOG2_FRAC_BITS)))
    bits = emit_bit_length(bb, s, io.LOG_SUM_BITS)
    idx = bb.emit(R.right_shift(s, bb.emit(R.subtract(bits, i64(1 + io.LOG2_TABLE_BITS)))))
    idx = bb.emit(R.subtract(idx, i64(1 << io.LOG2_TABLE_BITS)))
    log2q = bb.emit(R.left_shift(bb.emit(R.subtract(bits, i64(32))), i64(io.LOG2_FRAC_BITS)))
    log2q = bb.emit(R.add(log2q, bb.emit(R.take(const(c["log2"], "int64"), idx, axis=0))))
    lse = bb.emit(R.right_shift(bb.emit(R.add(bb.emit(R.multiply(log2q, i64(c["m0"]))), i64(1 << (c["sh"] - 1)))),
                                i64(c["sh"])))
    return bb.emit(R.subtract(bb.emit(R.negative(d)), lse))


def emit_mul(bb, a, za: int, b, zb: int, shift: int):
    """int64 (a - za)(b - zb) >> shift, rounded half up (intmath.imul)."""
    a, b = _i64(bb, a), _i64(bb, b)
    if za:
        a = bb.emit(R.subtract(a, const(za, "int64")))
    if zb:
        b = bb.emit(R.subtract(b, const(zb, "int64")))
    v = bb.emit(R.multiply(a, b))
    if shift:
        v = bb.emit(R.right_shift(bb.emit(R.add(v, const(1 << (shift - 1), "int64"))), const(shift, "int64")))
    return v


def emit_layernorm(bb, x, c: dict, out_dtype: str):
    """Integer LayerNorm over the last axis (constants from intmath.layernorm_constants)."""
    from compiler.intmath import integer_ops as io

    x = _i64(bb, x)
    h = tensor_info(x)[1][-1]
    hx = bb.emit(R.multiply(x, const(h, "int64")))
    y = bb.emit(R.subtract(hx, bb.emit(R.sum(x, axis=[-1], keepdims=True))))
    if c["shift"] > 0:
        y = bb.emit(R.right_shift(y, const(c["shift"], "int64")))
    elif c["shift"] < 0:
        y = bb.emit(R.left_shift(y, const(-c["shift"], "int64")))
    n = bb.emit(R.floor_divide(bb.emit(R.sum(bb.emit(R.multiply(y, y)), axis=[-1], keepdims=True)),
                               const(h, "int64")))
    n = bb.emit(R.add(n, const(c["eps"], "int64")))
    one = const(1, "int64")
    bits = emit_bit_length(bb, n, io.LN_SQRT_MAX_BITS)
    e = bb.emit(R.right_shift(bb.emit(R.add(bits, one)), one))
    r = bb.emit(R.left_shift(bb.emit(R.full_like(n, one)), e))
    for _ in range(io.LN_SQRT_ITERS):
        nr = bb.emit(R.right_shift(bb.emit(R.add(r, bb.emit(R.floor_divide(n, r)))), one))
        r = bb.emit(R.maximum(bb.emit(R.minimum(r, nr)), one))
    recip = bb.emit(R.floor_divide(bb.emit(R.left_shift(bb.emit(R.full_like(n, one)),
                                                         bb.emit(R.add(e, const(io.LN_RECIP_BITS, "int64"))))), r))
    u = bb.emit(R.right_shift(bb.emit(R.multiply(y, recip)),
                              bb.emit(R.add(e, const(io.LN_RECIP_BITS - io.LN_FRAC_BITS, "int64")))))
    sh = c["sh"]
    v = bb.emit(R.add(bb.emit(R.multiply(u, const(c["m0"], "int64"))),
                      const(c["bias"] + (np.int64(1) << (sh - 1)), "int64")))
    v = bb.emit(R.right_shift(v, const(sh, "int64")))
    if c["zp"]:
        v = bb.emit(R.add(v, const(c["zp"], "int64")))
    info = np.iinfo(out_dtype)
    return bb.emit(R.astype(bb.emit(R.clip(v, int(info.min), int(info.max))), out_dtype))


def emit_rescale(bb, x, zp: int, multiplier: float):
    """int64 (x - zp) * multiplier, rounded half up (intmath.rescale)."""
    from compiler.intmath.fixed_point import quantize_multiplier

    x = _i64(bb, x)
    if zp:
        x = bb.emit(R.subtract(x, const(zp, "int64")))
    if multiplier == 1.0:
        return x
    m0, sh = quantize_multiplier(float(multiplier))
    v = bb.emit(R.add(bb.emit(R.multiply(x, const(m0, "int64"))), const(1 << (sh - 1), "int64")))
    return bb.emit(R.right_shift(v, const(sh, "int64")))


def emit_lookup(bb, x, table: np.ndarray, offset: int, out_dtype: str):
    """table[x + offset] (intmath.lookup)."""
    idx = bb.emit(R.add(_i64(bb, x), const(offset, "int64")))
    return bb.emit(R.take(const(table, out_dtype), idx, axis=0))
