"""GEMM kernels with a fused epilogue (schedules/gemm_epilogue.py through int8_matmul.emit_int8_matmul): bit-exact
against NumPy (the int32 matmul, then the chain) on every x86 kernel this host runs and on awkward shapes (rows
and lanes padded, K off the k group, N = 1); the output is written unpadded in the epilogue's type; the VNNI
kernel keeps its tensorized register tile; every ARM preset builds it (the numerics of the ARM kernels run on the
emulated board in test_arm_dot.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from schedules.gemm_epilogue import Epilogue, EpilogueStep as S, pair_requantize
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


def _requant_chain(n, rng, shifts, r, zp=-3, out="int16", m=None):
    """int64(acc) * m + r >> s + zp, clip, astype: a requantization as integerize emits it."""
    info = np.iinfo(out)
    epi = Epilogue((S("astype", "int64"), S("multiply", "int64", "vector", "int32"),
                    S("add", "int64", "vector", "int64"), S("right_shift", "int64", "vector", "int64"),
                    S("add", "int64", "scalar", "int64"), S("clip", "int64", attrs=(int(info.min), int(info.max))),
                    S("astype", out)))
    m = rng.integers(1 << 30, 1 << 31, n) if m is None else m
    return epi, (m.astype(np.int32), np.asarray(r, np.int64), np.asarray(shifts, np.int64), np.array([zp], np.int64))


def _accumulators(w, rng):
    """a @ w for random int8 rows and, for every column, the two rows that take it to its extremes (-128 against
    its positive weights and 127 against its negative ones, and the other way round: within 128 * sum |w|)."""
    extremes = [np.where(w[:, j] >= 0, v, -1 - v) for j in range(w.shape[1]) for v in (127, -128)]
    a = np.concatenate([_rand_int8(rng, (40, w.shape[0])), np.array(extremes, np.int8)])
    return a.astype(np.int32) @ w.astype(np.int32)


PAIRED = {  # name: (shifts, rounding) for 64 columns; whether the rewrite applies
    "shifts_30_to_35_rounding_half": (lambda s: (s, np.left_shift(1, s - 1)), True),  # FFN1 / Q, K, V in MiniLM
    "shift_40_rounding_and_zero_point": (lambda s: (s * 0 + 40, (1 << 39) + (5 << 40)), True),
    # r has 9 trailing zero bits: a pre-shift of 23 would make it a multiple of 2**32, more than |acc| leaves room for
    "rounding_needs_a_longer_pre_shift_than_the_bound_allows": (lambda s: (s * 0 + 39, np.full(64, 1883420411392)),
                                                                False),
}


@pytest.mark.parametrize("case", list(PAIRED))
def test_pair_requantize_equals_the_int64_chain(case):
    """pair_requantize (int32 with mulhi) against the chain it replaces, in NumPy, on accumulators up to the bound
    it is told; a dead column (m = 0) among live ones; chains it cannot take stay as they were."""
    rng = np.random.default_rng(7)
    w = _rand_int8(rng, (384, 64))
    make, applies = PAIRED[case]
    shifts, r = make(rng.integers(30, 36, 64))
    m = rng.integers(1 << 30, 1 << 31, 64)
    m[5] = 0
    epi, ops = _requant_chain(64, rng, shifts, np.where(m == 0, 1, r) if case.startswith("shifts") else r, m=m)
    if case.startswith("shifts"):
        ops = (ops[0], ops[1], np.where(m == 0, 1, ops[2]), ops[3])  # quantize_multiplier(0): (0, shift 1)
    paired, paired_ops = pair_requantize(epi, ops, 128 * np.abs(w.astype(np.int64)).sum(axis=0))
    assert ("mulhi" in [s.op for s in paired.steps]) == applies
    assert all(s.dtype != "int64" for s in paired.steps) == applies
    acc = _accumulators(w, rng)
    np.testing.assert_array_equal(apply_epilogue(paired, paired_ops, acc), apply_epilogue(epi, ops, acc))
    if applies:  # told no bound (|acc| up to 2**31), shifts under 33 leave no room for the pre-shift
        unbounded = pair_requantize(epi, ops)[0]
        assert (unbounded == epi) == case.startswith("shifts")


def test_pair_requantize_second_stage_and_helpers_chains():
    """The helpers' chains (a scalar multiplier and shift, int8 / int16, bias and column sums first) and a second
    requantization of the int16 result: each qualifying one rewritten, all equal to the int64 chains."""
    rng = np.random.default_rng(3)
    w = _rand_int8(rng, (96, 32))
    bound = 128 * np.abs(w.astype(np.int64)).sum(axis=0)
    acc = _accumulators(w, rng)
    for opts in ({}, {"out": "int16"}, {"per_channel": False}, {"lookup": True}):
        epi, ops = requantize(32, rng, **opts)
        paired, paired_ops = pair_requantize(epi, ops, bound)
        assert "mulhi" in [s.op for s in paired.steps]
        np.testing.assert_array_equal(apply_epilogue(paired, paired_ops, acc), apply_epilogue(epi, ops, acc))
    first, first_ops = _requant_chain(32, rng, np.full(32, 36), np.full(32, 1 << 35))
    second = (S("astype", "int64"), S("multiply", "int64", "scalar", "int64"), S("add", "int64", "scalar", "int64"),
              S("right_shift", "int64", "scalar", "int64"), S("clip", "int64", attrs=(-128, 127)), S("astype", "int8"))
    epi = Epilogue(first.steps + second)
    ops = first_ops + (np.array([1518500250]), np.array([(1 << 37) - (7 << 38)]), np.array([38]))
    paired, paired_ops = pair_requantize(epi, ops, bound)
    assert [s.op for s in paired.steps].count("mulhi") == 2
    np.testing.assert_array_equal(apply_epilogue(paired, paired_ops, acc), apply_epilogue(epi, ops, acc))


@pytest.mark.parametrize("target", TARGETS[:-1])  # the x86 kernels (pair_mulhi)
def test_paired_epilogue_kernel_bit_exact(target):
    """The rewritten chain in a fused GEMM kernel against NumPy's int64 chain (the model's case: int16 output,
    per-column shifts 30 to 35, a pre-shift where the shift is under 33)."""
    rng = np.random.default_rng(11)
    a, w = _rand_int8(rng, (37, 384)), _rand_int8(rng, (384, 64))
    a[0] = np.where(w[:, 0] >= 0, 127, -128)
    shifts = rng.integers(30, 36, 64)
    epi, ops = _requant_chain(64, rng, shifts, np.left_shift(1, shifts - 1))
    paired, paired_ops = pair_requantize(epi, ops, 128 * np.abs(w.astype(np.int64)).sum(axis=0))
    assert select_kernel(target).pair_mulhi and "left_shift" in [s.op for s in paired.steps]
    want = apply_epilogue(epi, ops, a.astype(np.int32) @ w.astype(np.int32))
    got, _ = _build_and_run(lambda bb, x: emit_int8_matmul(bb, x, w, target, paired, paired_ops), {"a": a}, target)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shift,applies", [(29, True), (28, False)])
def test_pair_requantize_at_the_edge_of_the_pre_shift(shift, applies):
    """|acc| up to 2**27 - 1 leaves room for a pre-shift of 4 (x << 4 < 2**31): shift 29 (t = 4) is rewritten and
    exact at +-bound, shift 28 (t = 5 would overflow int32) is left as it was. Negative rounding constants (a zero
    point folded in), a dead column with a large constant, a zero point near the tail's limit."""
    n, bound = 8, (1 << 27) - 1
    rng = np.random.default_rng(5)
    m = rng.integers(1 << 30, 1 << 31, n)
    m[3] = 0
    r = np.left_shift(1, shift - 1) - np.arange(n) * np.left_shift(1, shift)  # 2**(s-1) - z 2**s, z = 0..7
    r[3] = 1 << 40  # dead column: the constant r >> s
    epi, ops = _requant_chain(n, rng, np.full(n, shift), r, zp=(1 << 29) - 5, out="int32", m=m)
    paired, paired_ops = pair_requantize(epi, ops, np.full(n, bound))
    assert ("mulhi" in [s.op for s in paired.steps]) == applies
    if applies:
        assert paired.steps[0].op == "left_shift" and int(np.max(paired_ops[0])) == 4
    acc = np.concatenate([rng.integers(-bound, bound + 1, (64, n)), np.full((1, n), bound), np.full((1, n), -bound),
                          np.full((1, n), 1 - bound)]).astype(np.int32)
    np.testing.assert_array_equal(apply_epilogue(paired, paired_ops, acc), apply_epilogue(epi, ops, acc))


def test_pair_requantize_refuses_what_int32_cannot_hold():
    """A rounding constant of -2**63, a clip entirely below int32's range, a zero point whose int32 sum could wrap, an
    unsigned cast before a second requantization (a negative value becomes a large one): each is left as it was
    (the last one checked by value: with the clip's bound kept through the cast it was rewritten and wrong)."""
    i64 = "int64"
    head = (S("astype", i64), S("multiply", i64, "scalar", i64), S("add", i64, "scalar", i64),
            S("right_shift", i64, "scalar", i64))
    ops = (np.array([1 << 30]), np.array([-(1 << 63)]), np.array([24]))
    epi = Epilogue(head + (S("clip", i64, attrs=(-32768, 32767)), S("astype", "int16")))
    assert pair_requantize(epi, ops, 1000)[0] == epi
    epi = Epilogue(head + (S("clip", i64, attrs=(-(1 << 40), -(1 << 35))), S("astype", "int32")))
    assert pair_requantize(epi, (ops[0], np.array([1 << 23]), ops[2]), 1000)[0] == epi
    big_zero_point = Epilogue(head + (S("add", i64, "scalar", i64), S("clip", i64, attrs=(-(1 << 31), (1 << 31) - 1)),
                                      S("astype", "int32")))  # an int32 sum would wrap where int64 saturates
    big_ops = (np.array([(1 << 31) - 1]), np.array([0]), np.array([32]), np.array([(1 << 30) + 5]))
    assert pair_requantize(big_zero_point, big_ops)[0] == big_zero_point
    unsigned = Epilogue((S("clip", "int32", attrs=(-100, 100)), S("astype", "uint8"), S("astype", "int32"))
                        + head + (S("astype", "int32"),))
    paired, paired_ops = pair_requantize(unsigned, (np.array([1 << 30]), np.array([0]), np.array([8])), 1000)
    acc = np.array([[-1, 0, 100, -100]], np.int32)
    np.testing.assert_array_equal(apply_epilogue(paired, paired_ops, acc),
                                  apply_epilogue(unsigned, (np.array([1 << 30]), np.array([0]), np.array([8])), acc))


@pytest.mark.parametrize("m", [2094456386, 1518500251, 1073741824 + 6])  # even, odd, a multiple of 2
def test_pair_requantize_finds_the_folded_zero_point(m):
    """A second requantization of int16 codes with their zero point z16 folded into the rounding constant (r =
    2**(s-1) - z16 m + z8 2**s, as integerize emits it: r has few trailing zeros): the rewrite finds z16 back
    (x + z16, then mulhi), equal to the int64 chain on every int16 code."""
    i64, s, z16, z8 = "int64", 39, -1234, 3
    epi = Epilogue((S("astype", "int16"), S("astype", i64), S("multiply", i64, "scalar", i64),
                    S("add", i64, "scalar", i64), S("right_shift", i64, "scalar", i64),
                    S("clip", i64, attrs=(-128, 127)), S("astype", "int8")))
    r = (1 << (s - 1)) - z16 * m + z8 * (1 << s)
    ops = (np.array([m]), np.array([r]), np.array([s]))
    paired, paired_ops = pair_requantize(epi, ops)
    assert [st.op for st in paired.steps][:4] == ["astype", "astype", "add", "mulhi"]
    assert int(paired_ops[0][0]) == -z16  # x - z16
    codes = np.arange(-32768, 32768, dtype=np.int32).reshape(-1, 1)
    np.testing.assert_array_equal(apply_epilogue(paired, paired_ops, codes), apply_epilogue(epi, ops, codes))
