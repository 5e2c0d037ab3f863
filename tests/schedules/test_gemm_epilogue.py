"""GEMM kernels with a fused epilogue (schedules/gemm_epilogue.py through int8_matmul.emit_int8_matmul): bit-exact
against NumPy (the int32 matmul, then the chain) on every x86 kernel this host runs and on awkward shapes (rows
and lanes padded, K off the k group, N = 1); the output is written unpadded in the epilogue's type; the VNNI
kernel keeps its tensorized register tile; every ARM preset builds it (the numerics of the ARM kernels run on the
emulated board in test_arm_dot.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from schedules.gemm_epilogue import Epilogue, EpilogueStep as S
from schedules.int8_matmul import emit_int8_matmul, gemm_primfunc, select_kernel
from targets import resolve_target
from tests.helpers.gemm_epilogue import apply_epilogue, requantize
from tests.schedules.test_int8_matmul import TARGETS, VNNI, _asm_of, _build_and_run, _rand_int8, needs_vnni

SHAPES = [((3, 5, 30), 20), ((1, 100, 384), 384), ((2, 7, 40), 1)]
CHAINS = {  # name: requantize options
    "int8_per_channel": {},
    "int16_scalar_no_bias": {"out": "int16", "per_channel": False, "bias": False},
    "lookup": {"lookup": True},
    "int16_lookup": {"out": "int16", "lookup": True},
    "int16_row_shift": {"out": "int16", "rows": True},  # per-token scales: a per-row operand
}


def _case(a_shape, n, chain, seed):
    rng = np.random.default_rng(seed)
    a, w = _rand_int8(rng, a_shape), _rand_int8(rng, (a_shape[-1], n))
    a.reshape(-1, a_shape[-1])[0, :] = -128
    w[:, 0] = -128
    opts = dict(CHAINS[chain])
    if opts.get("rows"):
        opts["rows"] = int(np.prod(a_shape[:-1]))
    epi, ops = requantize(n, rng, **opts)
    acc = a.reshape(-1, a_shape[-1]).astype(np.int32) @ w.astype(np.int32)
    return a, w, epi, ops, apply_epilogue(epi, ops, acc).reshape(*a_shape[:-1], n)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("a_shape,n", SHAPES)
@pytest.mark.parametrize("chain", list(CHAINS))
def test_fused_epilogue_bit_exact(target, a_shape, n, chain):
    a, w, epi, ops, want = _case(a_shape, n, chain, sum(a_shape) + n)
    got, _ = _build_and_run(lambda bb, x: emit_int8_matmul(bb, x, w, target, epi, ops), {"a": a}, target)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_take_modes_and_swapped_operands():
    """clip / wrap lookups index out of the table's range; ``c - x`` and ``c >> x``-style swapped operands."""
    rng = np.random.default_rng(3)
    a, w = _rand_int8(rng, (9, 24)), _rand_int8(rng, (24, 16))
    table = rng.integers(-100, 100, 50).astype(np.int32)
    for mode in ("clip", "wrap"):
        epi = Epilogue((S("subtract", "int32", "vector", "int32", swap=True),
                        S("floor_divide", "int32", "scalar", "int32"),
                        S("take", "int32", "table", "int32", attrs=(mode,), table_size=50),
                        S("maximum", "int32", "scalar", "int32"), S("astype", "int16")))
        ops = (rng.integers(-10, 10, 16).astype(np.int32), np.array([97], np.int32), table, np.array([-7], np.int32))
        want = apply_epilogue(epi, ops, a.astype(np.int32) @ w.astype(np.int32))
        target = TARGETS[-2].values[0]  # AVX2: any x86-64 host
        def emit(bb, x, target=target, epi=epi, ops=ops):
            return emit_int8_matmul(bb, x, w, target, epi, ops)

        got, _ = _build_and_run(emit, {"a": a}, target)
        np.testing.assert_array_equal(got, want)


@needs_vnni
def test_vnni_fused_kernel_keeps_its_register_tile():
    a, w, epi, ops, want = _case((1, 128, 384), 384, "lookup", 5)
    got, ex = _build_and_run(lambda bb, x: emit_int8_matmul(bb, x, w, VNNI, epi, ops), {"a": a}, VNNI)
    np.testing.assert_array_equal(got, want)
    zmm = [ln for ln in _asm_of(ex).splitlines() if "vpdpbusd" in ln and "zmm" in ln]
    assert len(zmm) >= 16, "the tensorized register tile did not survive the epilogue"


@pytest.mark.parametrize("preset", ["rpi4", "rpi5", "graviton3"])
def test_arm_kernels_with_epilogue_build(preset):
    target = resolve_target(preset).tvm_target()
    kern = select_kernel(target)
    for epi, _ in (requantize(48, np.random.default_rng(0), lookup=True),
                   requantize(48, np.random.default_rng(0), out="int16", rows=37)):
        func = gemm_primfunc(37, 72, 48, kern, epi)
        assert func.attrs["tir.is_scheduled"] and int(func.attrs["op_pattern"]) == 8
        names = [p.name for p in func.params]
        assert names[-1] == "y" and tuple(func.params[-1].shape) == (37, 48)
        tvm.compile(tvm.IRModule({"main": func}), target)


def test_vnni_folds_leading_int32_adds_into_the_bias():
    """VNNI starts each accumulator from a per-column bias: the chain's leading int32 subtract / add join it (the
    kernel keeps the rest); the result stays exact (test_fused_epilogue_bit_exact runs the folded kernels)."""
    from tvm import relax

    from compiler.tvm_compat import tensor_type
    from schedules.gemm_epilogue import EPILOGUE_ATTR

    rng = np.random.default_rng(0)
    w = _rand_int8(rng, (32, 16))
    epi, ops = requantize(16, rng)
    bb = relax.BlockBuilder()
    x = relax.Var("a", tensor_type((8, 32), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(emit_int8_matmul(bb, x, w, VNNI, epi, ops))
        bb.emit_func_output(out)
    kernels = [f for gv, f in bb.get().functions.items() if gv.name_hint.startswith("intformer_qgemm")]
    kept = Epilogue.from_json(str(kernels[0].attrs[EPILOGUE_ATTR])).steps
    assert [s.op for s in epi.steps[:3]] == ["subtract", "add", "astype"] and kept == epi.steps[2:]
