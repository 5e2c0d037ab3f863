"""x86 VNNI dot-product tensor intrinsics owned by intformer (vpdpbusd: u8 x s8 -> s32).

Expects: nothing at import time but TVM; registering is idempotent (``override=True``).
Guarantees: after import, these TensorIntrins are registered under project names:

- ``VNNI_16x4`` ("intformer_vnni_16x4"): 512-bit ``vpdpbusd`` on zmm (AVX512-VNNI), 16 int32 lanes x 4 bytes.
- ``AVXVNNI_8x4`` ("intformer_avxvnni_8x4"): 256-bit ``vpdpbusd`` on ymm (AVX-VNNI or AVX512-VNNI+VL),
  8 int32 lanes x 4 bytes.
- each also as ``<name>_local`` (``DotIntrin.local_name``): the accumulator in "local" scope (epilogue-fused GEMM);
- each also as ``<name>_w32`` (``DotIntrin.word_name``, description ``dot.word_desc``): the weight block given
  as ``lanes`` int32 words, byte k (little-endian) of word i being B[i, k], i.e.
  ``C[i] += sum_k int32(A[k]) * int32(int8(B32[i] >> 8k))``: for weights packed at run time with int32 vector
  shifts and ors (a byte transpose that vectorizes), see int8_matmul's batch kernel.

Both compute, for a block of ``lanes`` outputs::

    C[i] += sum_{k<4} int32(A[k]) * int32(B[i, k])     A: uint8[4], B: int8[lanes, 4] (contiguous), C: int32[lanes]

The weight block B must be contiguous ``lanes x 4`` bytes: tensorize only a compute written over a packed weight
layout such as (N/lanes, K/4, lanes, 4) (a row-major (K, N) or (N, K) weight gives wrong results silently).

Why not TVM's stock ``dot_16x4_vnni``: it passes ``<16 x i32>`` operands to ``llvm.x86.avx512.vpdpbusd.512``,
which the LLVM bundled with TVM 0.27 declares with ``<64 x i8>`` operands, so every build fails LLVM verification.
The implementations below reinterpret the broadcast activation word and the weight block as int8 vectors.
"""

from __future__ import annotations

from compiler.tvm_compat import TensorIntrin, tir_script as T
from schedules.intrinsics.dot import DotIntrin, dot_desc, register_dot, word_desc


def _impl(lanes: int, llvm_intrinsic: str, c_scope: str = "global"):
    i32xl = f"int32x{lanes}"
    i8xl4 = f"int8x{lanes * 4}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope=c_scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # One expression, no named temporaries (s_tir would turn those into 1-element buffers).
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic),
                C.vload([0], dtype=i32xl),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes), dtype=i8xl4),
                B.vload([0, 0], dtype=i8xl4),
                dtype=i32xl,
            )

    return impl


def _impl_w32(lanes: int, llvm_intrinsic: str):
    i32xl = f"int32x{lanes}"
    i8xl4 = f"int8x{lanes * 4}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes,), "int32", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrinsic),
                C.vload([0], dtype=i32xl),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes), dtype=i8xl4),
                T.reinterpret(B.vload([0], dtype=i32xl), dtype=i8xl4),
                dtype=i32xl,
            )

    return impl


def _register(name: str, lanes: int, llvm_intrinsic: str) -> DotIntrin:
    intrin = DotIntrin(name=name, lanes=lanes, k=4, vector_bits=lanes * 32)
    register_dot(intrin, lambda scope: dot_desc(lanes, 4, "uint8", "int8", scope),
                 lambda scope: _impl(lanes, llvm_intrinsic, scope))
    TensorIntrin.register(intrin.word_name, word_desc(lanes, 4, "uint8"), _impl_w32(lanes, llvm_intrinsic),
                          override=True)
    return intrin


VNNI_16x4 = _register("intformer_vnni_16x4", 16, "llvm.x86.avx512.vpdpbusd.512")
AVXVNNI_8x4 = _register("intformer_avxvnni_8x4", 8, "llvm.x86.avx512.vpdpbusd.256")

__all__ = ["DotIntrin", "VNNI_16x4", "AVXVNNI_8x4"]
