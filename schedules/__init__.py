"""Schedules for the int8 kernels: project-owned tensor intrinsics, deterministic default schedules, tuning.

- ``intrinsics/x86_vnni.py``: AVX512-VNNI (zmm) and AVX-VNNI (ymm) ``vpdpbusd`` u8 x s8 -> s32 intrinsics.
- ``intrinsics/x86_avx2.py``: AVX2 ``vpmaddwd`` s16 x s16 -> s32 intrinsic (exact int8 products).
- ``intrinsics/arm_dot.py``: aarch64 ``sdot`` / ``udot`` (+dotprod), ``smmla`` (+i8mm, 2x8 . 8x2 blocks) and
  plain-NEON ``smull`` + ``sadalp`` (exact, for CPUs without dot product: Cortex-A72 / Raspberry Pi 4).
- ``intrinsics/dot.py``: ``DotIntrin`` and the descriptions the ISA files share (dot, word, mmla).
- ``int8_matmul.py``: ``pack_weight``, ``emit_int8_matmul`` (constant weight), ``emit_int8_batch_matmul``
  (both operands at run time): bit-exact int32 results, kernels chosen by target features via ``INTRINSICS``
  (x86: AVX512-VNNI, AVX-VNNI, AVX2; aarch64: I8MM, dotprod, NEON; else a generic vectorized kernel).
- ``bench_gemm.py``: ``python -m schedules.bench_gemm`` prints GEMM speed against the measured VNNI peak.
- ``tune.py``: MetaSchedule + XGBoost over a model's kernels (GEMM tiles through the schedule above; fused
  integer kernels through MetaSchedule's rules); ``apply_database`` puts the best records into a build.
- ``database.py``: the tuning database, one folder per exact target, resumable.
"""
