"""PairRowRequantize (compiler/passes/pair_row_requantize.py): a requantization left in the graph
(``int64(x) * m + r >> s``, an int64 tail, a narrowing cast) becomes the int32 chain around the mulhi kernel
(Before/Expected); built as the library builds it (legalize, row groups, FuseOps, default schedules), it equals
the int64 chain bit for bit at the input type's extremes and at random values, for int8 / int16 / int32 inputs,
scalar and per-column constants, a zero point found back in r; chains that do not qualify and other targets are
left alone."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler import tvm_compat as C
from compiler.build import fuse_kernels
from compiler.passes.default_schedule import apply_default_schedules
from compiler.passes.pair_row_requantize import PairRowRequantize, find_row_chains, value_bound
from schedules.gemm_epilogue import Epilogue, EpilogueStep
from schedules.int8_matmul import emit_int8_batch_matmul, emit_int8_matmul, select_kernel
from schedules.intrinsics.mulhi import mulhi_primfunc
from targets import resolve_target

R = relax.op
ROWS, N = 5, 48


@pytest.fixture(scope="module")
def x86():
    return resolve_target("x86-avx512-vnni").tvm_target()


def _c(v, dtype):
    return C.const(np.asarray(v, dtype), dtype)


def _chain(in_dtype, m, r, s, zero=None, clip=(-128, 127), out="int8", extra_user=False, row_shift=False):
    """main(x) = astype(clip(((int64(x) * m + r) >> s) [+ zero], clip), out); ``extra_user``: the product is
    also returned (read twice); ``row_shift``: s is a (ROWS, 1) constant (per row, not per column)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", C.tensor_type((ROWS, N), in_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(R.astype(x, "int64"))
            p = bb.emit(R.multiply(a, _c(m, "int64")))
            y = bb.emit(R.add(p, _c(r, "int64")))
            y = bb.emit(R.right_shift(y, _c(np.full((ROWS, 1), s) if row_shift else s, "int64")))
            if zero is not None:
                y = bb.emit(R.add(y, _c(zero, "int64")))
            y = bb.emit_output(R.astype(bb.emit(R.clip(y, *clip)), out))
            if extra_user:
                y = bb.emit_output(relax.Tuple([y, bb.emit_output(p)]))
        bb.emit_func_output(y)
    return bb.get()


def _reference(x, m, r, s, zero=None, clip=(-128, 127), out="int8"):
    y = (x.astype(np.int64) * np.asarray(m, np.int64) + np.asarray(r, np.int64)) >> np.asarray(s, np.int64)
    if zero is not None:
        y = y + zero
    return np.clip(y, *clip).astype(out)


def test_before_expected(x86):
    """int16 x, per-column m, s = 20, r = 2**19: pre-shift t = 13 makes r << 13 = 2**32, so r' = 1, s' = 1."""
    m = np.arange(N, dtype=np.int64) * 1000 + (1 << 30)
    before = _chain("int16", m, 1 << 19, 20, zero=-16)
    after = PairRowRequantize(x86)(before)

    bb = relax.BlockBuilder()
    mulhi = bb.add_func(mulhi_primfunc((ROWS, N), True), "intformer_mulhi_col")
    x = relax.Var("x", C.tensor_type((ROWS, N), "int16"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.astype(x, "int32"))
            y = bb.emit(R.left_shift(y, _c(13, "int32")))
            y = bb.emit(relax.call_tir(mulhi, [y, _c(m, "int32")], C.tensor_type((ROWS, N), "int32")))
            y = bb.emit(R.add(y, _c(1, "int32")))  # r' and s' scalars, as r and s were given
            y = bb.emit(R.right_shift(y, _c(1, "int32")))
            y = bb.emit(R.add(y, _c(-16, "int32")))
            y = bb.emit_output(R.astype(bb.emit(R.clip(y, -128, 127)), "int8"))
        bb.emit_func_output(y)
    tvm.ir.assert_structural_equal(after, bb.get())


CASES = {  # name: (input dtype, m, r, s, zero point, clip, output dtype)
    "int8 scalar, pre-shift": ("int8", 1_234_567_891, 1 << 21, 22, 3, (-128, 127), "int8"),
    "int16 per column, s < 32": ("int16", "columns", "half", "columns", -16, (-128, 127), "int8"),
    "int32 GELU-like, s = 49": ("int32", 2_083_675_975, 1 << 48, 49, None, (-32768, 32767), "int16"),
    # r = 2**40 + 3000 * m (a zero point folded in): no pre-shift makes r a multiple of 2**32; z = 3000 does
    "int16 zero point in r": ("int16", 1_800_000_001, (1 << 40) + 3000 * 1_800_000_001, 41, None,
                              (-32768, 32767), "int16"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bit_exact_as_built(x86, name):
    host = resolve_target("host").tvm_target()
    if not select_kernel(host).pair_mulhi:
        pytest.skip(f"the host's GEMM kernel ({select_kernel(host).isa}) keeps int64 requantizations (not x86)")
    in_dtype, m, r, s, zero, clip, out = CASES[name]
    rng = np.random.default_rng(3)
    if m == "columns":
        m = rng.integers(1 << 28, 1 << 31, N)
        s = rng.integers(18, 31, N)
    if r == "half":
        r = np.left_shift(np.int64(1), np.asarray(s, np.int64) - 1)
    mod = _chain(in_dtype, m, r, s, zero, clip, out)
    paired = PairRowRequantize(x86)
    new = paired(mod)
    assert paired.paired == 1 and "relax.multiply" not in _ops(new)
    info = np.iinfo(in_dtype)
    x = rng.integers(info.min, int(info.max) + 1, (ROWS, N), dtype=np.int64).astype(in_dtype)
    x[0], x[1], x[2, :N // 2], x[2, N // 2:] = info.min, info.max, -1, 1  # every column at both extremes
    want = _reference(x, m, r, s, zero, clip, out)
    built = apply_default_schedules(fuse_kernels(PairRowRequantize(host)(mod), host), host)
    kernels = [f for f in built.functions.values() if isinstance(f, C.PrimFunc)]
    assert len(kernels) == 1 and "intformer_mulhi" in kernels[0].script()
    assert 'T.Cast("int64"' not in kernels[0].script()  # the whole chain in int32 lanes
    vm = relax.VirtualMachine(tvm.compile(built, host), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), want)


def _ops(mod) -> set:
    found = set()
    relax.analysis.post_order_visit(mod["main"], lambda e: found.add(e.op.name) if isinstance(e, relax.Call) and
                                    isinstance(e.op, tvm.ir.Op) else None)
    return found


def test_chains_that_do_not_qualify_are_left_alone(x86):
    cases = {
        "int32 input, s < 32": _chain("int32", 1 << 30, 1 << 19, 20),  # no room for a pre-shift
        "product read twice": _chain("int16", 1 << 30, 1 << 19, 20, extra_user=True),
        "per-row shift": _chain("int16", 1 << 30, 1 << 19, 20, row_shift=True),
        "negative multiplier": _chain("int16", -(1 << 30), 1 << 19, 20),
    }
    for name, mod in cases.items():
        assert not find_row_chains(mod["main"]), name
        assert C.structural_equal(PairRowRequantize(x86)(mod), mod), name


def test_arm_keeps_int64():
    mod = _chain("int16", 1 << 30, 1 << 19, 20)
    assert find_row_chains(mod["main"])  # it qualifies; only the target decides
    for target in ("rpi5", "armv7"):
        assert C.structural_equal(PairRowRequantize(resolve_target(target).tvm_target())(mod), mod)


def test_value_bound_of_the_attention_scores(x86):
    """Scores q @ k (int8, K = 32, N padded to 16 lanes and sliced) less the zero point's term (-8 * colsum(k)):
    |x| <= 32 * 128 * 128 + 32 * 128 * 8; a GEMM with a requantize epilogue, or a value of unknown origin,
    gets its type's range."""
    bb = relax.BlockBuilder()
    q = relax.Var("q", C.tensor_type((12, 10, 32), "int8"))
    k = relax.Var("k", C.tensor_type((12, 32, 10), "int8"))
    u = relax.Var("u", C.tensor_type((10, 32), "int32"))
    with bb.function("main", [q, k, u]):
        with bb.dataflow():
            scores = emit_int8_batch_matmul(bb, q, k, x86)  # (12, 10, 16) sliced to (12, 10, 10)
            col = bb.emit(R.multiply(bb.emit(R.sum(bb.emit(R.astype(k, "int32")), axis=[-2], keepdims=True)),
                                     _c(-8, "int32")))
            x = bb.emit(R.subtract(scores, col))
            w = np.ones((32, 8), np.int8)
            plain = emit_int8_matmul(bb, bb.emit(R.astype(u, "int8")), w, x86)
            requant = Epilogue((EpilogueStep("right_shift", "int32", "scalar", "int32"),))
            fused = emit_int8_matmul(bb, bb.emit(R.astype(u, "int8")), w, x86, requant, (np.array([3], np.int32),))
            y = bb.emit_output(relax.Tuple([x, plain, fused, bb.emit(R.add(u, u))]))
        bb.emit_func_output(y)
    mod = bb.get()
    values = {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}
    x, plain, fused, uu = values[mod["main"].body.body].fields
    assert value_bound(x, values, mod) == 32 * 128 * 128 + 32 * 128 * 8
    assert value_bound(plain, values, mod) == 32 * 128 * 128
    assert value_bound(fused, values, mod) == 1 << 31  # the epilogue's result: its type's range
    assert value_bound(uu, values, mod) == 1 << 31  # u + u may wrap


def test_a_bounded_int32_input_pairs_bit_exact(x86):
    """x = 4 * int32(an int16 value): |x| <= 2**17 leaves room for the pre-shift s = 20 needs (13 bits), which an
    int32 of unknown origin does not (test_chains_that_do_not_qualify_are_left_alone)."""
    host = resolve_target("host").tvm_target()
    if not select_kernel(host).pair_mulhi:
        pytest.skip(f"the host's GEMM kernel ({select_kernel(host).isa}) keeps int64 requantizations (not x86)")
    m, r, s = 1_500_000_017, 1 << 19, 20
    bb = relax.BlockBuilder()
    v = relax.Var("v", C.tensor_type((ROWS, N), "int16"))
    with bb.function("main", [v]):
        with bb.dataflow():
            x = bb.emit(R.multiply(bb.emit(R.astype(v, "int32")), _c(4, "int32")))
            y = bb.emit(R.right_shift(bb.emit(R.add(bb.emit(R.multiply(bb.emit(R.astype(x, "int64")),
                                                                       _c(m, "int64"))), _c(r, "int64"))),
                                      _c(s, "int64")))
            y = bb.emit_output(R.astype(bb.emit(R.clip(y, -32768, 32767)), "int16"))
        bb.emit_func_output(y)
    mod = bb.get()
    assert len(find_row_chains(mod["main"], mod)) == 1 and not find_row_chains(mod["main"])  # the bound decides
    built = apply_default_schedules(fuse_kernels(PairRowRequantize(host)(mod), host), host)
    vm = relax.VirtualMachine(tvm.compile(built, host), tvm.cpu())
    vals = np.random.default_rng(5).integers(-32768, 32768, (ROWS, N)).astype(np.int16)
    vals[0], vals[1] = -32768, 32767
    want = np.clip((vals.astype(np.int64) * 4 * m + r) >> s, -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(vals)).numpy(), want)


def test_value_bound_of_unsigned_values_and_a_type_minimum():
    """uint16(int8 -1) is 65535 (an unsigned value's bound is its type's range, whatever made it); a constant
    holding its type's minimum (-32768 in int16) bounds a product by 32768, not by NumPy's |-32768| = -32768."""
    bb = relax.BlockBuilder()
    v = relax.Var("v", C.tensor_type((ROWS, N), "int8"))
    with bb.function("main", [v]):
        with bb.dataflow():
            u = bb.emit(R.astype(bb.emit(R.astype(v, "uint16")), "int32"))
            c = np.ones(N, np.int16)
            c[0] = -32768
            p = bb.emit(R.astype(bb.emit(R.multiply(bb.emit(R.astype(v, "int16")), _c(c, "int16"))), "int32"))
            y = bb.emit_output(relax.Tuple([u, p]))
        bb.emit_func_output(y)
    mod = bb.get()
    values = {b.var: b.value for block in mod["main"].body.blocks for b in block.bindings}
    u, p = values[mod["main"].body.body].fields
    assert value_bound(u, values, mod) == 1 << 16
    assert value_bound(p, values, mod) == 1 << 15  # 128 * 32768, capped at int16's range by the product's type
