"""``mulhi(x, m)``: the high 32 bits of the 64-bit product of two int32 values, floor((x * m) / 2**32), as one TIR
op that the vectorizer widens like an arithmetic op.

Written as ``int32((int64(x) * int64(m)) >> 32)``, LLVM widens each vector to 64-bit lanes, multiplies, shifts
and narrows them back: on x86 ten instructions per 16 lanes (vextracti64x4, two vpmovzxdq, two vpmuldq, two
vpsrlq, two vpmovqd, vinserti64x4). The expansion here works on the int32 vector as 64-bit lanes holding two
values each: vpmuldq on the even values, on the odd ones shifted down, and one permute taking the high halves
(vpmuldq x2, vpsrlq x2, vpermt2d on AVX-512): bit for bit the same values.

Expects: int32 operands (scalars or vectors of equal lanes) on a little-endian target (x86, AArch64: lane 2i is
the low half of 64-bit lane i). Guarantees: after import, ``mulhi`` builds the op's calls; the LLVM build expands
a call of an even number of lanes (4 or more) into the pair form, any other into the 64-bit formula;
``mulhi_primfunc`` is the op as an elementwise kernel (compiler/passes/pair_row_requantize.py calls it).
"""

from __future__ import annotations

from compiler.tvm_compat import expr_lanes, register_vector_op, tirx

_LOW_HALF_MASK = -(1 << 32)  # int64 with the high 32 bits set


def _wide_formula(x, m, lanes: int):
    i64, i32 = ("int64", "int32") if lanes == 1 else (f"int64x{lanes}", f"int32x{lanes}")
    c32 = tirx.const(32, "int64") if lanes == 1 else tirx.Broadcast(tirx.const(32, "int64"), lanes)
    return tirx.Cast(i32, (tirx.Cast(i64, x) * tirx.Cast(i64, m)) >> c32)


def _lower(call):
    x, m = call.args
    lanes = expr_lanes(x)
    if lanes < 4 or lanes % 2:
        return _wide_formula(x, m, lanes)
    half = lanes // 2

    def splat(value, dtype):
        return tirx.Broadcast(tirx.const(value, dtype), half)

    a, b = tirx.reinterpret(f"int64x{half}", x), tirx.reinterpret(f"int64x{half}", m)
    c32 = splat(32, "int64")
    even = ((a << c32) >> c32) * ((b << c32) >> c32)  # sign-extended low halves: vpmuldq
    odd = (a >> c32) * (b >> c32)  # the high halves, sign-extended: vpmuldq
    low = tirx.reinterpret(f"uint64x{half}", even) >> splat(32, "uint64")  # even results' high words, moved low
    high = tirx.reinterpret(f"uint64x{half}", odd & splat(_LOW_HALF_MASK, "int64"))  # odd results' high words
    return tirx.reinterpret(f"int32x{lanes}", low | high)


OP = register_vector_op("intformer_mulhi", _lower)


def mulhi(x, m):
    """The op's call on two int32 expressions."""
    return tirx.call_intrin("int32", OP, x, m)


def mulhi_primfunc(shape: tuple, vector: bool):
    """The elementwise kernel ``y = mulhi(x, m)`` over int32 ``x`` of static ``shape``: ``m`` a vector along the last
    axis (shape (shape[-1],)) or a scalar (shape ()); marked broadcast (op_pattern 1) so the build groups it with
    its neighbours like any elementwise op."""
    from tvm import te

    shape = tuple(tirx.const(int(d), "int64") for d in shape)  # int64 extents, as LegalizeOps' kernels
    x = te.placeholder(shape, "int32", name="x")
    m = te.placeholder((shape[-1],) if vector else (), "int32", name="m")
    y = te.compute(shape, lambda *i: mulhi(x(*i), m(i[-1]) if vector else m()), name="T_mulhi")
    return te.create_prim_func([x, m, y]).with_attr("op_pattern", 1).without_attr("global_symbol")


__all__ = ["OP", "mulhi", "mulhi_primfunc"]
