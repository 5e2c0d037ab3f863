"""The project's VNNI intrinsics, tensorized into a minimal packed GEMM and checked against NumPy.

Expects: an AVX512-VNNI host for the 512-bit case (skipped otherwise; this CPU also runs the 256-bit AVX-VNNI form).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from compiler.tvm_compat import Schedule, TensorIntrin, tir_script as T
from schedules.intrinsics.x86_vnni import AVXVNNI_8x4, VNNI_16x4


def _host_has(flags) -> bool:
    """By /proc/cpuinfo: LLVM's name for this CPU ("rocketlake") under-reports it (no AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            have = set(next(ln for ln in f if ln.startswith("flags")).split())
    except (OSError, StopIteration):
        return False
    return set(flags) <= have


def _packed_gemm(m: int, k: int, n: int, lanes: int):
    @T.prim_func(s_tir=True)
    def gemm(a: T.Buffer((m, k), "uint8"), w: T.Buffer((n // lanes, k // 4, lanes, 4), "int8"),
             c: T.Buffer((m, n), "int32")):
        for i, j, r in T.grid(m, n, k):
            with T.sblock("c"):
                vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                with T.init():
                    c[vi, vj] = 0
                c[vi, vj] = c[vi, vj] + T.Cast("int32", a[vi, vr]) * T.Cast(
                    "int32", w[vj // lanes, vr // 4, vj % lanes, vr % 4])

    return gemm


@pytest.mark.parametrize(
    "intrin,mcpu,features",
    [(VNNI_16x4, "rocketlake", ["avx512_vnni"]), (AVXVNNI_8x4, "alderlake", ["avx_vnni"])],
    ids=["zmm", "ymm"],
)
def test_intrinsic_matches_numpy(intrin, mcpu, features):
    if not _host_has(features):
        pytest.skip(f"host lacks {features}")
    assert TensorIntrin.get(intrin.name) is not None
    m, k, n, lanes = 5, 32, 2 * intrin.lanes, intrin.lanes
    s = Schedule(_packed_gemm(m, k, n, lanes))
    blk = s.get_sblock("c")
    i, j, r = s.get_loops(blk)
    jo, ji = s.split(j, [None, lanes])
    ro, ri = s.split(r, [None, 4])
    s.reorder(i, jo, ro, ji, ri)
    s.decompose_reduction(blk, ro)
    s.tensorize(ji, intrin.name)
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})
    lib = tvm.tirx.build(s.mod, target)
    reg = "zmm" if lanes == 16 else "ymm"
    assert any("vpdpbusd" in ln and reg in ln for ln in lib.inspect_source("asm").splitlines())

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    a[0], w[:, 0] = 255, -128  # extremes
    packed = np.ascontiguousarray(w.reshape(k // 4, 4, n // lanes, lanes).transpose(2, 0, 3, 1))
    dev = tvm.cpu()
    c = tvm.runtime.tensor(np.zeros((m, n), np.int32), dev)
    lib(tvm.runtime.tensor(a, dev), tvm.runtime.tensor(packed, dev), c)
    np.testing.assert_array_equal(c.numpy(), a.astype(np.int32) @ w.astype(np.int32))
