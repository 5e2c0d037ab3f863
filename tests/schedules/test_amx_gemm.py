"""The AMX GEMM (schedules/amx_gemm.py): what it compiles to on any x86 host (tile instructions, a vectorized
epilogue), and, on a host with AMX-INT8, that it equals NumPy bit for bit where blocks are partial (M off 32,
K off 64, a last N panel narrower than 32, several panels and blocks). The shapes every kernel shares run in
test_int8_matmul.py and test_gemm_epilogue.py (their "amx" cases)."""

from __future__ import annotations

import numpy as np
import pytest

from schedules import amx_gemm
from schedules.int8_matmul import INTRINSICS, emit_int8_matmul, gemm_args, gemm_primfunc, select_kernel
from targets import resolve_target
from tests.helpers.gemm_epilogue import apply_epilogue, requantize
from tests.schedules.test_int8_matmul import AMX, _asm_of, _build_and_run, _rand_int8, needs_amx


def test_amx_preset_and_host_choose_the_tile_kernel():
    assert select_kernel(resolve_target("x86-amx").tvm_target()) is INTRINSICS["amx"]
    assert select_kernel(resolve_target("x86-avx512-vnni").tvm_target()).isa == "avx512vnni"
    host = resolve_target("host")
    assert (select_kernel(host.tvm_target()).isa == "amx") == ("amx_int8" in host.isa)


def test_weights_are_padded_to_whole_tiles():
    w = np.ones((70, 40), np.int8)
    (packed,) = gemm_args(w, INTRINSICS["amx"])
    assert packed.shape == (64 // 16, 128 // 4, 16, 4)  # N 40 -> 64 (two panels), K 70 -> 128 (two k steps)
    assert packed.reshape(4, 32, 64)[:, 70 // 4 + 1:].sum() == 0 and packed[3].sum() == 0


@pytest.mark.parametrize("rows", [0, 64])  # 64: the row-scaled chain (a per-row operand)
def test_kernel_compiles_to_tile_instructions_and_a_vector_epilogue(rows):
    rng = np.random.default_rng(0)
    a, w = _rand_int8(rng, (64, 128)), _rand_int8(rng, (128, 64))
    epi, ops = requantize(64, rng, out="int16", rows=rows) if rows else requantize(64, rng)
    func = gemm_primfunc(64, 128, 64, INTRINSICS["amx"], epi)
    assert func.attrs["tir.is_scheduled"] and int(func.attrs["op_pattern"]) == 8
    assert tuple(func.params[-1].shape) == (64, 64) and func.params[-1].dtype == epi.out_dtype
    import tvm
    from tvm import relax

    from compiler.tvm_compat import tensor_type

    bb = relax.BlockBuilder()
    x = relax.Var("a", tensor_type(a.shape, "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(emit_int8_matmul(bb, x, w, AMX, epi, ops))
        bb.emit_func_output(out)
    asm = _asm_of(tvm.compile(bb.get(), AMX))
    for instr in ("ldtilecfg", "tileloadd", "tdpbssd", "tilestored", "tilerelease"):
        assert instr in asm, instr
    assert any("zmm" in ln and "vpmul" in ln for ln in asm.splitlines()), "the epilogue is not vectorized"


@needs_amx
@pytest.mark.parametrize("m,k,n", [(33, 70, 40), (100, 192, 96), (8, 512, 48), (64, 64, 16)])
@pytest.mark.parametrize("fused", [False, True, "rows"])
def test_partial_blocks_bit_exact(m, k, n, fused):
    rng = np.random.default_rng(m + k + n)
    a, w = _rand_int8(rng, (m, k)), _rand_int8(rng, (k, n))
    a[0, :], w[:, -1] = -128, -128  # extremes: s8 x s8 has no offset to saturate, but check anyway
    acc = a.astype(np.int32) @ w.astype(np.int32)
    if fused:
        epi, ops = requantize(n, rng, out="int16", rows=m) if fused == "rows" else requantize(n, rng)
        got, _ = _build_and_run(lambda bb, x: emit_int8_matmul(bb, x, w, AMX, epi, ops), {"a": a}, AMX)
        np.testing.assert_array_equal(got, apply_epilogue(epi, ops, acc))
    else:
        got, _ = _build_and_run(lambda bb, x: emit_int8_matmul(bb, x, w, AMX), {"a": a}, AMX)
        np.testing.assert_array_equal(got, acc)


@needs_amx
@pytest.mark.parametrize("bt,m,k,n", [(12, 128, 64, 128), (12, 128, 128, 64), (3, 100, 100, 100), (2, 7, 13, 40)])
def test_batch_bit_exact(bt, m, k, n):
    """Attention-like products, both operands at run time; partial blocks are written unpadded."""
    from schedules.int8_matmul import emit_int8_batch_matmul

    rng = np.random.default_rng(bt + m + k + n)
    a, b = _rand_int8(rng, (1, bt, m, k)), _rand_int8(rng, (1, bt, k, n))
    a[0, 0, 0, :], b[0, -1, :, -1] = -128, -128
    got, ex = _build_and_run(lambda bb, x, y: emit_int8_batch_matmul(bb, x, y, AMX), {"a": a, "b": b}, AMX)
    np.testing.assert_array_equal(got, np.matmul(a.astype(np.int32), b.astype(np.int32)))
    assert "tdpbssd" in _asm_of(ex)


def test_padded_shape():
    assert amx_gemm.padded_shape(33, 70, 40) == (64, 128, 64)
    assert amx_gemm.padded_shape(128, 768, 3072) == (128, 768, 3072)
