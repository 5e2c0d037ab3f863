"""The project's VNNI intrinsics, tensorized into a minimal packed GEMM and checked against NumPy.

Expects: an AVX512-VNNI host for the 512-bit case (skipped otherwise; this CPU also runs the 256-bit AVX-VNNI form).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from compiler.tvm_compat import TensorIntrin, build_tir
from schedules.intrinsics.x86_vnni import AVXVNNI_8x4, VNNI_16x4
from tests.helpers.packed_gemm import pack, tensorized_gemm


def _host_has(flags) -> bool:
    """By /proc/cpuinfo: LLVM's name for this CPU ("rocketlake") under-reports it (no AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            have = set(next(ln for ln in f if ln.startswith("flags")).split())
    except (OSError, StopIteration):
        return False
    return set(flags) <= have


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
    mod = tensorized_gemm(m, k, n, intrin, "uint8", "int8")
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})
    lib = build_tir(mod, target)
    reg = "zmm" if lanes == 16 else "ymm"
    assert any("vpdpbusd" in ln and reg in ln for ln in lib.inspect_source("asm").splitlines())

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    a[0], w[:, 0] = 255, -128  # extremes
    packed = pack(w, lanes, 4)
    dev = tvm.cpu()
    c = tvm.runtime.tensor(np.zeros((m, n), np.int32), dev)
    lib(tvm.runtime.tensor(a, dev), tvm.runtime.tensor(packed, dev), c)
    np.testing.assert_array_equal(c.numpy(), a.astype(np.int32) @ w.astype(np.int32))
