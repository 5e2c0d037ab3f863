"""PropagateScales: elementwise islands become exact tables, scalar multiplies fold into scales, and the
compiled result stays within half an output step (+ float rounding) of the float function."""

import math

import numpy as np
import pytest
import tvm
from hypothesis import given, settings, strategies as st
from tvm import relax

from compiler.passes.op_report import list_ops
from compiler.passes.propagate_scales import PropagateScales
from compiler.tvm_compat import const, dead_code_elimination, tensor_type

R = relax.op
TABLE_MAX_ERROR_STEPS = 1  # round-to-nearest of the exact function, plus float32 rounding at ties

_erf = np.vectorize(math.erf)
FUNCS = {
    "gelu": (lambda x: R.nn.gelu(x), lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2)))),
    "gelu_tanh": (lambda x: R.nn.gelu_tanh(x),
                  lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))),
    "sigmoid": (lambda x: R.sigmoid(x), lambda v: 1 / (1 + np.exp(-v))),
    "relu_scaled": (lambda x: R.multiply(R.nn.relu(x), relax.const(0.5, "float32")), lambda v: 0.5 * np.maximum(v, 0)),
    "relu": (lambda x: R.nn.relu(x), lambda v: np.maximum(v, 0)),
    "shifted_relu": (lambda x: R.nn.relu(R.add(x, relax.const(0.25, "float32"))), lambda v: np.maximum(v + 0.25, 0)),
}


def _build(name, dtype, s_in, z_in, s_out, z_out):
    bb = relax.BlockBuilder()
    x = relax.Var("x", tensor_type((4, 64), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            f = bb.emit(R.dequantize(x, const(s_in, "float32"), const(z_in, dtype), axis=-1, out_dtype="float32"))
            g = bb.emit(FUNCS[name][0](f))
            q = bb.emit_output(R.quantize(g, const(s_out, "float32"), const(z_out, "int8"), axis=-1,
                                          out_dtype="int8"))
        bb.emit_func_output(q)
    mod = dead_code_elimination()(PropagateScales()(bb.get()))
    return mod


@pytest.mark.parametrize("name", list(FUNCS))
@settings(max_examples=4, deadline=None)
@given(dtype=st.sampled_from(["int8", "int16"]), seed=st.integers(0, 2 ** 31))
def test_island_becomes_a_table_or_arithmetic(name, dtype, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    s_in = float(rng.uniform(4, 12) / (info.max - info.min))
    z_in = int(rng.integers(info.min // 4, info.max // 4))
    s_out, z_out = 0.03, -20
    mod = _build(name, dtype, s_in, z_in, s_out, z_out)
    ops = {o.op for o in list_ops(mod)}
    if "relu" in name or "gelu" in name:  # c * relu(x): a max on the codes; GELU: intmath.igelu; no table
        assert "relax.maximum" in ops and "relax.take" not in ops, ops
        assert ops <= {"relax.add", "relax.subtract", "relax.astype", "relax.maximum", "relax.multiply",
                       "relax.right_shift", "relax.clip", "relax.minimum", "relax.left_shift", "relax.negative"}, ops
    else:
        assert ops <= {"relax.add", "relax.astype", "relax.take"}, ops  # a lookup, nothing in float
    ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = rng.integers(info.min, info.max + 1, size=(4, 64)).astype(dtype)
    got = vm["main"](tvm.runtime.tensor(x)).numpy().astype(np.int64)
    real = (x.astype(np.float64) - z_in) * np.float32(s_in)
    want = np.clip(np.round(FUNCS[name][1](real) / s_out) + z_out, -128, 127)
    assert np.max(np.abs(got - want)) <= TABLE_MAX_ERROR_STEPS


SSRU_MAX_ERROR_STEPS = 2  # sigmoid table (int16) and the products' rounding, then one output rounding


def _ssru_cell(s, z):
    """c = f * c_prev + (1 - f) * wx with f = sigmoid(fx); out = quantize(relu(c)): the SSRU of Marian's decoder."""
    bb = relax.BlockBuilder()
    xs = [relax.Var(n, tensor_type((2, 3, 16), "int8")) for n in ("fx", "c_prev", "wx")]
    with bb.function("main", xs):
        with bb.dataflow():
            fx, cp, wx = (bb.emit(R.dequantize(v, const(s[i], "float32"), const(z[i], "int8"), axis=-1,
                                               out_dtype="float32")) for i, v in enumerate(xs))
            f = bb.emit(R.sigmoid(fx))
            c = bb.emit(R.add(bb.emit(R.multiply(f, cp)),
                              bb.emit(R.multiply(bb.emit(R.subtract(const(1.0, "float32"), f)), wx))))
            q = bb.emit_output(R.quantize(bb.emit(R.nn.relu(c)), const(s[3], "float32"), const(z[3], "int8"),
                                          axis=-1, out_dtype="int8"))
        bb.emit_func_output(q)
    return dead_code_elimination()(PropagateScales()(bb.get()))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2 ** 31))
def test_ssru_cell_is_integer_bit_exact_and_close(seed):
    from compiler.intmath.interpreter import Interpreter

    rng = np.random.default_rng(seed)
    s = [float(v) for v in rng.uniform(0.01, 0.05, 4)]
    z = [int(v) for v in rng.integers(-20, 20, 4)]
    mod = _ssru_cell(s, z)
    assert not any(o.computes_in_float or o.op == "relax.dequantize" for o in list_ops(mod))
    vm = relax.VirtualMachine(tvm.compile(mod, tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    xs = [rng.integers(-128, 128, size=(2, 3, 16)).astype(np.int8) for _ in range(3)]
    got = vm["main"](*[tvm.runtime.tensor(x) for x in xs]).numpy()
    assert np.array_equal(got, Interpreter(mod)(*xs)[0])
    fx, cp, wx = ((x.astype(np.float64) - z[i]) * np.float32(s[i]) for i, x in enumerate(xs))
    f = 1 / (1 + np.exp(-fx))
    want = np.clip(np.round(np.maximum(f * cp + (1 - f) * wx, 0) / s[3]) + z[3], -128, 127)
    assert np.max(np.abs(got.astype(np.int64) - want)) <= SSRU_MAX_ERROR_STEPS


def test_smoothed_relu_is_a_max_and_a_per_channel_requantization():
    """relu(x) * v (a smoothing vector folded after an FFN's ReLU) -> quantize: no table, within one step."""
    rng = np.random.default_rng(3)
    s_in, z_in, s_out, z_out = 6.0 / 65535, -300, 0.02, -7
    vec = rng.uniform(0.5, 2.0, size=64).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", tensor_type((4, 64), "int16"))
    with bb.function("main", [x]):
        with bb.dataflow():
            f = bb.emit(R.dequantize(x, const(s_in, "float32"), const(z_in, "int16"), axis=-1, out_dtype="float32"))
            g = bb.emit(R.multiply(bb.emit(R.nn.relu(f)), relax.const(vec)))
            q = bb.emit_output(R.quantize(g, const(s_out, "float32"), const(z_out, "int8"), axis=-1,
                                          out_dtype="int8"))
        bb.emit_func_output(q)
    mod = dead_code_elimination()(PropagateScales()(bb.get()))
    ops = {o.op for o in list_ops(mod)}
    assert "relax.maximum" in ops and "relax.take" not in ops and "relax.quantize" not in ops, ops
    ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    xv = rng.integers(-32768, 32768, size=(4, 64)).astype(np.int16)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv)).numpy().astype(np.int64)
    real = np.maximum((xv.astype(np.float64) - z_in) * np.float32(s_in), 0) * vec
    want = np.clip(np.round(real / s_out) + z_out, -128, 127)
    assert np.max(np.abs(got - want)) <= TABLE_MAX_ERROR_STEPS


@pytest.mark.parametrize("scale", [3e-4, 0.02])
def test_softmax_quantized_by_its_consumer_is_one_integer_softmax(scale):
    """dequantize(int32 scores) -> softmax -> quantize(int8): the consumer's codes come straight from the row
    sums (intmath.isoftmax with its scale), bit-exact, the fine form gone, within one step of the float."""
    from compiler.intmath import integer_ops as io

    rng = np.random.default_rng(5)
    s_out, z_out = 0.7 / 255, -128
    bb = relax.BlockBuilder()
    x = relax.Var("x", tensor_type((3, 2, 40), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            f = bb.emit(R.dequantize(x, const(scale, "float32"), const(0, "int32"), axis=-1, out_dtype="float32"))
            p = bb.emit(R.nn.softmax(f, axis=-1))
            q = bb.emit_output(R.quantize(p, const(s_out, "float32"), const(z_out, "int8"), axis=-1,
                                          out_dtype="int8"))
        bb.emit_func_output(q)
    mod = dead_code_elimination()(PropagateScales()(bb.get()))
    ops = [o.op for o in list_ops(mod)]
    assert "relax.nn.softmax" not in ops and "relax.quantize" not in ops and ops.count("relax.sum") == 1, ops
    ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    xv = rng.integers(-int(4 / scale), int(4 / scale), size=(3, 2, 40)).astype(np.int32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv)).numpy()
    ref = io.isoftmax(xv, np.float32(scale), out_scale=np.float32(s_out), out_zp=z_out, out_dtype="int8")
    assert np.array_equal(got, ref)
    real = xv.astype(np.float64) * scale
    pf = np.exp(real - real.max(-1, keepdims=True))
    pf /= pf.sum(-1, keepdims=True)
    want = np.clip(np.round(pf / s_out) + z_out, -128, 127)
    assert np.max(np.abs(got.astype(np.int64) - want)) <= 1


@pytest.mark.parametrize("mask_value", [-10000.0, -3.4e38])
def test_masked_softmax_stays_in_int32_and_masked_keys_vanish(mask_value):
    """int16 scores + where(mask, big negative, 0) -> softmax -> int8: the add is int32 (the mask saturated where
    it cannot overflow), no int64 anywhere in the softmax, masked keys get probability 0, the rest within a step."""
    rng = np.random.default_rng(7)
    s_in, s_out, z_out = 12.0 / 65535, 1 / 255, -128
    bb = relax.BlockBuilder()
    x = relax.Var("x", tensor_type((2, 3, 16), "int16"))
    keep = relax.Var("keep", tensor_type((2, 1, 16), "bool"))
    with bb.function("main", [x, keep]):
        with bb.dataflow():
            f = bb.emit(R.dequantize(x, const(s_in, "float32"), const(0, "int16"), axis=-1, out_dtype="float32"))
            m = bb.emit(R.where(keep, relax.const(0.0, "float32"), relax.const(mask_value, "float32")))
            p = bb.emit(R.nn.softmax(bb.emit(R.add(f, m)), axis=-1))
            q = bb.emit_output(R.quantize(p, const(s_out, "float32"), const(z_out, "int8"), axis=-1,
                                          out_dtype="int8"))
        bb.emit_func_output(q)
    mod = dead_code_elimination()(PropagateScales()(bb.get()))
    wide = [o for o in list_ops(mod) if o.op in ("relax.where", "relax.max", "relax.subtract") and o.output == "int64"]
    assert not wide, wide  # the mask, the row max and the differences: int32 (only per-row sums go to int64)
    ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    xv = rng.integers(-32768, 32768, size=(2, 3, 16)).astype(np.int16)
    kv = rng.random((2, 1, 16)) < 0.7
    kv[:, :, 0] = True
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(kv)).numpy()
    real = np.where(kv, xv.astype(np.float64) * np.float32(s_in), -np.inf)
    pf = np.exp(real - real.max(-1, keepdims=True))
    pf /= pf.sum(-1, keepdims=True)
    want = np.clip(np.round(pf / s_out) + z_out, -128, 127)
    assert np.all(got[np.broadcast_to(~kv, got.shape)] == z_out)
    assert np.max(np.abs(got.astype(np.int64) - want)) <= 1
