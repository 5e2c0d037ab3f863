"""x86 AVX2 int16 pair dot-product tensor intrinsic owned by intformer (vpmaddwd: s16 x s16 -> s32, exact).

Expects: nothing at import time but TVM; registering is idempotent (``override=True``).
Guarantees: after import, ``PMADDWD_8x2`` ("intformer_avx2_pmaddwd_8x2") is registered: for 8 int32 outputs,

    C[i] += sum_{k<2} int32(A[k]) * int32(B[i, k])     A: int16[2], B: int8[8, 2] (contiguous), C: int32[8]

The weight block stays int8 in memory (sign-extended to int16 in registers, ``vpmovsxbw``), the activation pair is
int16 (one 32-bit broadcast). Products of int8 values fit int16 x int16 -> int32 exactly and vpmaddwd sums pairs
in int32, so the result is bit-exact (unlike ``vpmaddubsw``, whose int16 pair sums saturate).
"""

from __future__ import annotations

from compiler.tvm_compat import tir_script as T
from schedules.intrinsics.dot import DotIntrin, dot_desc, register_dot


def _impl(lanes: int, llvm_intrinsic: str, c_scope: str = "global"):
    i32xl = f"int32x{lanes}"
    i16x2l = f"int16x{lanes * 2}"
    i8x2l = f"int8x{lanes * 2}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), "int16", offset_factor=1),
        B: T.Buffer((lanes, 2), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=c_scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=i32xl) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), lanes),
                              dtype=i16x2l),
                T.Cast(i16x2l, B.vload([0, 0], dtype=i8x2l)),
                dtype=i32xl,
            )

    return impl


def _register(name: str, lanes: int, llvm_intrinsic: str) -> DotIntrin:
    intrin = DotIntrin(name=name, lanes=lanes, k=2, vector_bits=lanes * 32)
    register_dot(intrin, lambda scope: dot_desc(lanes, 2, "int16", "int8", scope),
                 lambda scope: _impl(lanes, llvm_intrinsic, scope))  # also as local_name (C "local")
    return intrin


PMADDWD_8x2 = _register("intformer_avx2_pmaddwd_8x2", 8, "llvm.x86.avx2.pmadd.wd")

__all__ = ["PMADDWD_8x2"]
