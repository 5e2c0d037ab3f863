"""AArch64 int8 dot-product tensor intrinsics owned by intformer (NEON, +dotprod, +i8mm).

Expects: nothing at import time but TVM; registering is idempotent (``override=True``). The code they generate runs
only on aarch64 (``mtriple`` aarch64-*), and SDOT/UDOT/SMMLA need the matching LLVM feature (``+dotprod``,
``+i8mm``); schedules/int8_matmul.py selects them by target features.
Guarantees: after import, these TensorIntrins are registered under project names (descriptions in ``dot.py``):

- ``SDOT_4x4`` ("intformer_arm_sdot_4x4"): ``sdot v.4s, v.16b, v.16b`` (``llvm.aarch64.neon.sdot``), s8 x s8,
  4 int32 lanes x 4 products: ``C[i] += sum_{j<4} A[j] * B[i, j]``, A int8[4] broadcast, B int8[4, 4] contiguous.
- ``UDOT_4x4`` ("intformer_arm_udot_4x4"): the same for u8 x u8 (``udot``; int32 accumulators, wrapping).
- ``SMMLA_2x2x8`` ("intformer_arm_smmla_2x2x8"): ``smmla v.4s, v.16b, v.16b`` (``llvm.aarch64.neon.smmla``):
  ``C[i, j] += sum_{l<8} A[i, l] * B[j, l]`` for a 2x8 activation block A (two rows, 8 consecutive k each,
  contiguous), a 2x8 weight block B (two output columns) and a 2x2 int32 block C, all contiguous; C in "local"
  scope (the tile's accumulators, unpacked into the row-major output after the k loop).
- ``NEON_4x2`` ("intformer_arm_neon_smull_4x2"): plain NEON (Cortex-A72 / Raspberry Pi 4, no dot product):
  ``smull v.8h, v.8b, v.8b`` (8 exact int8 products in int16: |-128 * -128| < 2^15) then ``sadalp v.4s, v.8h``
  (adjacent products summed into the int32 accumulators): ``C[i] += sum_{j<2} A[j] * B[i, j]``, A int8[2]
  broadcast, B int8[4, 2] contiguous. Bit-exact (no saturating or wrapping int16 sum, unlike smull + smlal).
- SDOT, UDOT and NEON also as ``DotIntrin.local_name`` (the accumulator in "local" scope, epilogue-fused GEMM)
  and as ``DotIntrin.word_name`` (``<name>_w32`` / ``_w16``): the weight block as 4 words of
  ``8 k`` bits (weights packed at run time, the batch kernel).

Why not TVM's stock arm_cpu intrinsics: they were never checked against the LLVM inside this wheel (the stock x86
one breaks there) and their descriptions assume a weight layout the project does not use; these are written for
the packed layouts of schedules/int8_matmul.py and checked on the emulated board (tests/schedules/test_arm_dot.py).
The operand types follow LLVM 22's declarations: sdot/udot/smmla ``<4 x i32> (<4 x i32>, <16 x i8>, <16 x i8>)``,
smull ``<8 x i16> (<8 x i8>, <8 x i8>)``, saddlp ``<4 x i32> (<8 x i16>)`` (LLVM folds ``acc + saddlp`` into sadalp).
"""

from __future__ import annotations

from compiler.tvm_compat import TensorIntrin, tir_script as T
from schedules.intrinsics.dot import DotIntrin, dot_desc, mmla_desc, register_dot, word_desc

LANES = 4  # int32 accumulators per 128-bit register
ACC_SCOPE = "local"  # smmla's 2x2 block: a tile's accumulator, kept in a register (not an output row)


def _llvm(name: str, dtype: str, *args):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)


def _dot_instr(name: str):
    """acc (int32x4), a, b (int8x16 / uint8x16) -> sdot / udot."""
    return lambda acc, a, b: _llvm(name, "int32x4", acc, a, b)


def _smull_sadalp(acc, a, b):
    """acc (int32x4) + pairwise sums of the 8 int16 products a (int8x8) * b (int8x8)."""
    return acc + _llvm("llvm.aarch64.neon.saddlp", "int32x4", _llvm("llvm.aarch64.neon.smull", "int16x8", a, b))


def _broadcast(A, k: int, a_dtype: str):
    """The k activation bytes A[0:k] repeated in every int32 lane: a 128-bit (or 64-bit, k = 2) byte vector."""
    group = f"int{8 * k}"  # one lane's k bytes as one scalar
    return T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], f"{a_dtype}x{k}"), dtype=group), LANES),
                         dtype=f"{a_dtype}x{LANES * k}")


def _dot_impl(k: int, a_dtype: str, instr, c_scope: str = "global"):
    """C (int32x4) = instr(C, A broadcast to every lane, B); B a contiguous (4, k) block."""

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((k,), a_dtype, offset_factor=1),
        B: T.Buffer((LANES, k), a_dtype, offset_factor=1),
        C: T.Buffer((LANES,), "int32", offset_factor=1, scope=c_scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:k], B[0:LANES, 0:k])
            T.writes(C[0:LANES])
            # One expression, no named temporaries (s_tir would turn those into 1-element buffers).
            C[T.ramp(T.int32(0), 1, LANES)] = instr(C.vload([0], dtype="int32x4"), _broadcast(A, k, a_dtype),
                                                    B.vload([0, 0], dtype=f"{a_dtype}x{LANES * k}"))

    return impl


def _word_impl(k: int, a_dtype: str, instr):
    """As _dot_impl, B given as 4 words of 8 k bits (reinterpreted as the byte vector)."""
    word = f"int{8 * k}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((k,), a_dtype, offset_factor=1),
        B: T.Buffer((LANES,), word, offset_factor=1),
        C: T.Buffer((LANES,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:k], B[0:LANES])
            T.writes(C[0:LANES])
            C[T.ramp(T.int32(0), 1, LANES)] = instr(
                C.vload([0], dtype="int32x4"), _broadcast(A, k, a_dtype),
                T.reinterpret(B.vload([0], dtype=f"{word}x{LANES}"), dtype=f"{a_dtype}x{LANES * k}"))

    return impl


def _smmla_impl():
    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2, 8), "int8", offset_factor=1),
        B: T.Buffer((2, 8), "int8", offset_factor=1),
        C: T.Buffer((2, 2), "int32", offset_factor=1, scope=ACC_SCOPE),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            C[0, T.ramp(T.int32(0), 1, 4)] = _llvm(  # the 2x2 block as one int32x4 (row-major, contiguous)
                "llvm.aarch64.neon.smmla", "int32x4", C.vload([0, 0], dtype="int32x4"),
                A.vload([0, 0], dtype="int8x16"), B.vload([0, 0], dtype="int8x16"))

    return impl


def _register_dot(name: str, k: int, a_dtype: str, instr) -> DotIntrin:
    intrin = DotIntrin(name=name, lanes=LANES, k=k, vector_bits=128)
    register_dot(intrin, lambda scope: dot_desc(LANES, k, a_dtype, a_dtype, scope),
                 lambda scope: _dot_impl(k, a_dtype, instr, scope))  # also as local_name (C "local")
    if a_dtype == "int8":  # the word form reads signed bytes (the top one sign-extends)
        TensorIntrin.register(intrin.word_name, word_desc(LANES, k, a_dtype), _word_impl(k, a_dtype, instr),
                              override=True)
    return intrin


def _register_mmla(name: str) -> DotIntrin:
    TensorIntrin.register(name, mmla_desc(2, 2, 8, ACC_SCOPE), _smmla_impl(), override=True)
    return DotIntrin(name=name, lanes=2, k=8, vector_bits=128)


SDOT_4x4 = _register_dot("intformer_arm_sdot_4x4", 4, "int8", _dot_instr("llvm.aarch64.neon.sdot"))
UDOT_4x4 = _register_dot("intformer_arm_udot_4x4", 4, "uint8", _dot_instr("llvm.aarch64.neon.udot"))
NEON_4x2 = _register_dot("intformer_arm_neon_smull_4x2", 2, "int8", _smull_sadalp)
SMMLA_2x2x8 = _register_mmla("intformer_arm_smmla_2x2x8")

__all__ = ["NEON_4x2", "SDOT_4x4", "SMMLA_2x2x8", "UDOT_4x4"]
