"""What every project dot-product intrinsic shares: its record (``DotIntrin``) and its TVMScript descriptions.

Expects: nothing at import time but TVM.
Guarantees: ``dot_desc(lanes, k, a_dtype, b_dtype)`` is the description of "``lanes`` int32 outputs, each summing
``k`` products of a broadcast activation group and a contiguous ``(lanes, k)`` weight block"::

    C[i] += sum_{j<k} int32(A[j]) * int32(B[i, j])     A: a_dtype[k], B: b_dtype[lanes, k], C: int32[lanes]

``word_desc(lanes, k, a_dtype)`` is the same with the weight block given as ``lanes`` words of ``8 k`` bits, byte j
(little-endian) of word i being B[i, j] (weights packed at run time with vector shifts and ors; see the batch
kernel in schedules/int8_matmul.py). ``mmla_desc(rows, cols, k)`` is a small matrix product on contiguous blocks
(ARM ``smmla``): ``C[i, j] += sum_l int32(A[i, l]) * int32(B[j, l])``, C in ``c_scope`` (the accumulator
block of a register tile is "local"). Each ISA file pairs one of these with an
implementation and registers both under a project name (``register_dot``: also as ``DotIntrin.local_name``, the
same instruction accumulating into a "local" C, a register tile whose epilogue is fused into the GEMM).
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.tvm_compat import tir_script as T

WORD_SUFFIX = "_w"  # + word bits: the variant whose weight block is a vector of words (see word_desc)
LOCAL_SUFFIX = "_local"  # the variant whose accumulator C is in "local" scope (a register tile)


@dataclass(frozen=True)
class DotIntrin:
    """A registered dot-product intrinsic: ``lanes`` int32 outputs, each summing ``k`` products per call."""

    name: str
    lanes: int
    k: int
    vector_bits: int

    @property
    def word_name(self) -> str:
        """The variant whose weight block is ``lanes`` words of ``8 k`` bits, byte j of word i being B[i, j]."""
        return f"{self.name}{WORD_SUFFIX}{8 * self.k}"

    @property
    def local_name(self) -> str:
        """The variant whose accumulator block C is in "local" scope: a GEMM tile kept in registers and read by a
        fused epilogue (the tensorize check compares buffer scopes)."""
        return f"{self.name}{LOCAL_SUFFIX}"


def register_dot(intrin: DotIntrin, desc, impl) -> None:
    """Register ``desc(c_scope)`` / ``impl(c_scope)`` under ``intrin.name`` (C "global") and ``intrin.local_name``
    (C "local")."""
    from compiler.tvm_compat import TensorIntrin

    for name, scope in ((intrin.name, "global"), (intrin.local_name, "local")):
        TensorIntrin.register(name, desc(scope), impl(scope), override=True)


def dot_desc(lanes: int, k: int, a_dtype: str, b_dtype: str, c_scope: str = "global"):
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((k,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, k), b_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=c_scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:k], B[0:lanes, 0:k])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for j in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vj = T.axis.remap("SR", [i, j])
                        C[vi] = C[vi] + T.cast(A[vj], "int32") * T.cast(B[vi, vj], "int32")

    return desc


def word_desc(lanes: int, k: int, a_dtype: str):
    w_dtype = f"int{8 * k}"

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((k,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes,), w_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:k], B[0:lanes])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for j in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vj = T.axis.remap("SR", [i, j])
                        C[vi] = C[vi] + T.cast(A[vj], "int32") * T.cast(
                            T.cast(T.shift_right(B[vi], vj * 8), "int8"), "int32")

    return desc


def mmla_desc(rows: int, cols: int, k: int, c_scope: str = "global"):
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((rows, k), "int8", offset_factor=1),
        B: T.Buffer((cols, k), "int8", offset_factor=1),
        C: T.Buffer((rows, cols), "int32", offset_factor=1, scope=c_scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:cols], A[0:rows, 0:k], B[0:cols, 0:k])
            T.writes(C[0:rows, 0:cols])
            for i, j, r in T.grid(rows, cols, k):
                with T.sblock("update"):
                    vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vr], "int32") * T.cast(B[vj, vr], "int32")

    return desc


def packed_word(b, x, rb, col, kg: int, k: int, n: int):
    """The word of kg bytes B[x, kg rb + j, col] (byte j at bits 8j; zero past K or N); the top byte keeps its sign,
    so a shift right then a cast to int8 gives each byte back (``word_desc``). Built with shifts and ors over
    contiguous rows of B: it vectorizes along ``col`` (a byte-level transpose would be a scalarized gather)."""
    word = f"int{8 * kg}"
    terms = []
    for j in range(kg):
        byte = T.Cast(word, b[x, rb * kg + j, col])
        term = T.if_then_else(T.And(rb * kg + j < k, col < n), byte if j == kg - 1 else byte & 255, T.Cast(word, 0))
        terms.append(term if j == 0 else T.shift_left(term, T.Cast(word, 8 * j)))
    out = terms[0]
    for t in terms[1:]:
        out = out | t
    return out


__all__ = ["DotIntrin", "LOCAL_SUFFIX", "WORD_SUFFIX", "dot_desc", "mmla_desc", "packed_word", "register_dot",
           "word_desc"]
