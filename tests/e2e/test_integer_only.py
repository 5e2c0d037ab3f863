"""The integer-only guarantees on a tiny BERT: no float op between inputs and outputs, and the compiled library
equals the NumPy reference interpreter bit for bit."""

import numpy as np
import pytest

from compiler.api import compile_model, load
from compiler.config import CompileOptions
from compiler.errors import IntformerError


@pytest.fixture(scope="module")
def compiled(tiny_bert, tmp_path_factory):
    model, calib, test = tiny_bert
    lib = str(tmp_path_factory.mktemp("intonly") / "bert.so")
    res = compile_model(model, lib, CompileOptions(input_shapes=(("input_ids", (1, 16)),), calibration_data=calib))
    return res, lib


def test_float_free_certificate(compiled):
    res, _ = compiled
    assert res.report.float_ops == []
    from compiler.passes.op_report import DATA_MOVEMENT

    floats = [o for o in res.report.ops if "float32" in o.inputs + (o.output,) and o.op not in DATA_MOVEMENT]
    assert floats and all(o.edge == "output" and o.op == "relax.dequantize" for o in floats)
    ops = {o.op for o in res.report.ops}
    assert not ops & {"relax.nn.softmax", "relax.nn.layer_norm", "relax.erf", "relax.quantize"}
    assert res.report.requantize_ops > 0


def test_bit_exact_against_numpy_reference(compiled):
    from tests.helpers.tiny_models import sample_inputs

    res, lib = compiled
    model = load(lib)
    ref = res.reference()
    feeds = sample_inputs("bert", 24, seed=7)
    for i in range(24):
        feed = {k: v[i] for k, v in feeds.items()}
        got = model(feed)
        want = ref(feed)
        assert np.array_equal(got[0], want[0]), f"sample {i}: max diff {np.max(np.abs(got[0] - want[0]))}"


def test_integer_only_fails_naming_the_float_op(tiny_bert, tmp_path, monkeypatch):
    from compiler.passes import propagate_scales

    monkeypatch.delitem(propagate_scales.RULES, "relax.nn.softmax")
    model, calib, _ = tiny_bert
    opts = CompileOptions(input_shapes=(("input_ids", (1, 16)),), calibration_data=calib)
    with pytest.raises(IntformerError, match=r"relax.nn.softmax x2.*--allow-float .*softmax"):
        compile_model(model, str(tmp_path / "x.so"), opts)
    allowed = CompileOptions(input_shapes=(("input_ids", (1, 16)),), calibration_data=calib,
                             allow_float=("softmax", "quantize", "dequantize"))
    res = compile_model(model, str(tmp_path / "y.so"), allowed)
    assert "relax.nn.softmax" in res.report.float_ops
