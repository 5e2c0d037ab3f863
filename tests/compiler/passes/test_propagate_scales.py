"""PropagateScales: elementwise islands become exact tables, scalar multiplies fold into scales, and the
compiled result stays within half an output step (+ float rounding) of the float function."""

import math

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

from compiler.passes.op_report import list_ops
from compiler.passes.propagate_scales import PropagateScales
from compiler.tvm_compat import const, dead_code_elimination

R = relax.op
TABLE_MAX_ERROR_STEPS = 1  # round-to-nearest of the exact function, plus float32 rounding at ties

_erf = np.vectorize(math.erf)
FUNCS = {
    "gelu": (lambda x: R.nn.gelu(x), lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2)))),
    "gelu_tanh": (lambda x: R.nn.gelu_tanh(x),
                  lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))),
    "sigmoid": (lambda x: R.sigmoid(x), lambda v: 1 / (1 + np.exp(-v))),
    "relu_scaled": (lambda x: R.multiply(R.nn.relu(x), relax.const(0.5, "float32")), lambda v: 0.5 * np.maximum(v, 0)),
}


def _build(name, dtype, s_in, z_in, s_out, z_out):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 64), dtype))
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
def test_island_becomes_a_table(name, dtype, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    s_in = float(rng.uniform(4, 12) / (info.max - info.min))
    z_in = int(rng.integers(info.min // 4, info.max // 4))
    s_out, z_out = 0.03, -20
    mod = _build(name, dtype, s_in, z_in, s_out, z_out)
    ops = {o.op for o in list_ops(mod)}
    assert ops <= {"relax.add", "relax.astype", "relax.take"}, ops  # a lookup, nothing in float
    ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = rng.integers(info.min, info.max + 1, size=(4, 64)).astype(dtype)
    got = vm["main"](tvm.runtime.tensor(x)).numpy().astype(np.int64)
    real = (x.astype(np.float64) - z_in) * np.float32(s_in)
    want = np.clip(np.round(FUNCS[name][1](real) / s_out) + z_out, -128, 127)
    assert np.max(np.abs(got - want)) <= TABLE_MAX_ERROR_STEPS
