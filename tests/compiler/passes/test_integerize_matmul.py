"""IntegerizeMatmul: structure (an int8 x int8 -> int32 matmul, no float matmul) and bit-exact numerics
against the NumPy reference (compiler.intmath)."""

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.intmath.fixed_point import qmatmul, quantize_multipliers, requantize
from compiler.passes.fold_qdq import FoldQDQ
from compiler.passes.integerize_matmul import OUT_DTYPE, OUT_REFINE, OUTPUT_HEADROOM, IntegerizeMatmul
from compiler.passes.intops import quantize_weight
from compiler.passes.op_report import list_ops
from compiler.tvm_compat import const, dead_code_elimination, tensor_type

R = relax.op
SA, ZA, SB, ZB, SO, ZO = 0.05, -7, 0.02, 0, 0.3, 11


def _dq(bb, x, s, z):
    return bb.emit(R.dequantize(x, const(s, "float32"), const(z, "int8"), axis=-1, out_dtype="float32"))


def _module(b_is_weight: bool, w: np.ndarray, shape_a, shape_b):
    bb = relax.BlockBuilder()
    a = relax.Var("a", tensor_type(shape_a, "int8"))
    params = [a]
    if not b_is_weight:
        b = relax.Var("b", tensor_type(shape_b, "int8"))
        params.append(b)
    with bb.function("main", params):
        with bb.dataflow():
            x = _dq(bb, a, SA, ZA)
            y = relax.const(w) if b_is_weight else _dq(bb, b, SB, ZB)
            mm = bb.emit(R.matmul(x, y))
            q = bb.emit(R.quantize(mm, const(SO, "float32"), const(ZO, "int8"), axis=-1, out_dtype="int8"))
            out = bb.emit_output(_dq(bb, q, SO, ZO))
        bb.emit_func_output(out)
    return bb.get()


def _integerize(mod):
    p = IntegerizeMatmul()
    mod = p(mod)
    mod = dead_code_elimination()(FoldQDQ()(mod))
    return mod, p.rewritten


def _run(mod, *args):
    ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


REFINE = OUT_REFINE // OUTPUT_HEADROOM  # these modules return the matmul: an output keeps headroom


def _reference(acc, multiplier):
    s_out, z_out = np.float32(SO) / np.float32(REFINE), ZO * REFINE
    m0, sh = quantize_multipliers(multiplier / np.float64(np.float32(SO)) * REFINE)
    info = np.iinfo(OUT_DTYPE)
    y = requantize(acc, m0, sh, z_out, info.min, info.max, np.dtype(OUT_DTYPE))
    return (y.astype(np.int32) - z_out).astype(np.float32) * np.float32(s_out)


def test_weight_matmul_is_integer_and_bit_exact():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 20)).astype(np.float32)
    mod, n = _integerize(_module(True, w, (2, 5, 48), None))
    assert n == 1
    ops = list_ops(mod)
    mms = [o for o in ops if o.op == "relax.matmul"]
    assert len(mms) == 1 and mms[0].inputs == ("int8", "int8") and mms[0].output == "int32"
    assert not any(o.op == "relax.quantize" for o in ops)
    a = rng.integers(-128, 128, (2, 5, 48)).astype(np.int8)
    wq, ws = quantize_weight(w)
    acc = qmatmul(a, ZA, wq, 0)
    ref = _reference(acc, np.float64(np.float32(SA)) * ws.astype(np.float64))
    assert np.array_equal(_run(mod, a), ref)


@pytest.mark.parametrize("zb", [0])
def test_activation_matmul_with_runtime_zero_point_terms(zb):
    rng = np.random.default_rng(1)
    mod, n = _integerize(_module(False, None, (1, 2, 6, 16), (1, 2, 16, 6)))
    assert n == 1
    a = rng.integers(-128, 128, (1, 2, 6, 16)).astype(np.int8)
    b = rng.integers(-128, 128, (1, 2, 16, 6)).astype(np.int8)
    acc = qmatmul(a, ZA, b, zb)
    ref = _reference(acc, np.float64(np.float32(SA)) * np.float64(np.float32(SB)))
    assert np.array_equal(_run(mod, a, b), ref)


def test_matmul_without_quantized_output_is_left_alone():
    bb = relax.BlockBuilder()
    a = relax.Var("a", tensor_type((4, 8), "float32"))
    with bb.function("main", [a]):
        out = bb.emit(R.matmul(a, relax.const(np.ones((8, 3), np.float32))))
        bb.emit_func_output(out)
    mod, n = _integerize(bb.get())
    assert n == 0
    assert [o.inputs for o in list_ops(mod) if o.op == "relax.matmul"] == [("float32", "float32")]
