"""mulhi (schedules/intrinsics/mulhi.py): the high word of an int32 x int32 product, bit-exact against NumPy at
vector widths 16, 8 and 4 (the pair form) and 3 and 1 (the 64-bit formula), on the operands' extremes; on
AVX-512 the pair form is vpmuldq and one permute, no 64-bit lanes narrowed back; a kernel using it prints as
TVMScript that parses back (compiler/passes/share_buckets.py reads kernels so)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import schedules.intrinsics.mulhi  # noqa: F401  (registers the op TVMScript calls T.intformer_mulhi)
from compiler.tvm_compat import build_tir, make_target, parse_prim_func, structural_equal
from schedules.gemm_epilogue import Epilogue, EpilogueStep as S
from schedules.int8_matmul import gemm_primfunc, select_kernel
from tests.schedules.test_int8_matmul import _target

N = 96


def _build(lanes: int, target):
    """y = mulhi(x, m) over N values, the loop split into vectors of ``lanes`` (1: a scalar loop)."""
    loop = f"T.vectorized({lanes})" if lanes > 1 else "range(1)"
    func = parse_prim_func(f"""
@T.prim_func
def f(x: T.Buffer(({N},), "int32"), m: T.Buffer(({N},), "int32"), y: T.Buffer(({N},), "int32")):
    T.func_attr({{"tirx.noalias": True}})
    for o in range({N // lanes}):
        for i in {loop}:
            y[o * {lanes} + i] = T.intformer_mulhi(x[o * {lanes} + i], m[o * {lanes} + i])
""")
    return func, build_tir(func, target)


def _operands():
    rng = np.random.default_rng(0)
    x = rng.integers(-2**31, 2**31, N, dtype=np.int64).astype(np.int32)
    m = rng.integers(-2**31, 2**31, N, dtype=np.int64).astype(np.int32)
    edges = [-2**31, 2**31 - 1, 0, -1, 1]
    x[:25] = np.repeat(edges, 5)
    m[:25] = np.tile(edges, 5)
    return x, m


@pytest.mark.parametrize("lanes", [16, 8, 4, 3, 1])
def test_mulhi_bit_exact_at_every_width(lanes):
    host = make_target({"kind": "llvm"})
    _, lib = _build(lanes, host)
    x, m = _operands()
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(N, np.int32), dev)
    lib(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(m, dev), out)
    want = ((x.astype(np.int64) * m.astype(np.int64)) >> 32).astype(np.int32)
    np.testing.assert_array_equal(out.numpy(), want)


def test_pair_form_in_a_gemm_epilogue():
    """A VNNI GEMM (36 x 384 x 384, the rows-free 4 x 64 tile of a ranged MiniLM) whose int16 requantize epilogue
    runs on mulhi, compiled for an AVX-512 CPU (assembly only: any
    x86 host): the even and odd products and one permute per 16 outputs, no 64-bit lanes narrowed and joined
    back (the 64-bit formula there compiles to vpmovzxdq / vpmuldq / vpsrlq / vpmovqd / vinserti64x4)."""
    target = _target("znver4")
    kern = select_kernel(target)
    epi = Epilogue((S("mulhi", "int32", "vector", "int32"), S("add", "int32", "vector", "int32"),
                    S("right_shift", "int32", "vector", "int32"), S("add", "int32", "scalar", "int32"),
                    S("clip", "int32", attrs=(-32768, 32767)), S("astype", "int16")))
    func = gemm_primfunc(36, 384, 384, kern, epi, rows_free=True)
    asm = build_tir(func.with_attrs({"tir.is_scheduled": True}), target).inspect_source("asm")
    assert "vpdpbusd" in asm and "vpmuldq" in asm and "vpermt2d" in asm
    assert "vpmovqd" not in asm and "vinserti64x4" not in asm


def test_tvmscript_round_trip():
    func, _ = _build(16, make_target({"kind": "llvm"}))
    assert "intformer_mulhi" in func.script()
    assert structural_equal(parse_prim_func(func.script()), func, map_free_vars=True)

