"""Calibration data, calibration tables and model files that are damaged, foreign or out of range: the file and
the fix are named, nothing is saved from bad numbers."""

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import IntformerError
from tests.hostile.conftest import intformer, run_bad, unchanged


def _compile(work, *extra):
    return ["compile", work["model"], "-o", work["dir"] / "never.so", "--input-shape", "input_ids=1x16", *extra]


def _edited_table(work, name, edit):
    d = json.loads(work["table"].read_text())
    edit(d)
    path = work["dir"] / name
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("case, needles", [
    ("nan range", ["range", "finite", "--calibration-data"]),
    ("1e30 range", ["implausibly wide", "--calibration-data"]),
    ("other model", ["no range for tensor", "another model"]),
    ("smoothing of another width", ["smoothing factors", "another model"]),
    ("garbage", ["not a JSON calibration table"]),
])
def test_bad_calibration_tables(work, case, needles):
    def first_smoothing(d):
        k = next(iter(d["smoothing"]))
        d["smoothing"][k] = d["smoothing"][k][:5]

    edits = {
        "nan range": lambda d: [r.update(max=float("nan")) for r in d["tensors"].values()],
        "1e30 range": lambda d: [r.update(max=1e30) for r in d["tensors"].values()],
        "other model": lambda d: d.update(model_sha256="0" * 64,
                                          tensors={"other/" + k: v for k, v in d["tensors"].items()}),
        "smoothing of another width": first_smoothing,
    }
    name = f"table {case}.json"
    if case in edits:
        path = _edited_table(work, name, edits[case])
    else:
        path = work["dir"] / name
        path.write_text("\x00garbage{")
    line = run_bad(_compile(work, "--calibration-table", path), [str(path), *needles],
                   inputs=[path, work["model"]])
    assert "intformer calibrate" not in line
    assert not (work["dir"] / "never.so").exists()


@pytest.mark.parametrize("edit, needles", [
    (lambda text: text[: len(text) // 2], ["not a JSON calibration table"]),
    (lambda text: text.replace("intformer-calibration", "something-else"),
     ["not an intformer calibration table", "--save-calibration-table"]),
    (lambda text: json.dumps({**json.loads(text), "tensors": [1, 2]}), ["malformed calibration table"]),
])
def test_bad_calibration_tables_in_process(work, tmp_path, edit, needles):
    from compiler.calibrate.table import CalibrationTable

    path = tmp_path / "täble.json"
    path.write_text(edit(work["table"].read_text()))
    with pytest.raises(IntformerError) as e:
        CalibrationTable.load(str(path))
    assert all(n in str(e.value) for n in [str(path), *needles]) and "intformer calibrate" not in str(e.value)


def test_token_ids_beyond_the_vocabulary(work):
    feeds = dict(np.load(work["calib"]))
    feeds["input_ids"] = feeds["input_ids"] + 1000
    path = work["dir"] / "big ids.npz"
    np.savez(path, **feeds)
    run_bad(_compile(work, "--calibration-data", path), [str(path), "input_ids", "101 rows"],
            inputs=[path, work["model"]])


def test_nan_or_inf_calibration_data_is_refused(tmp_path):
    """A float-input model: non-finite calibration values would become a [-inf, inf] range."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = tmp_path / "float model.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), model)
    x = np.ones((4, 1, 4), np.float32)
    x[2, 0, 1], x[3, 0, 0], x[0, 0, 3] = np.nan, np.inf, -np.inf
    calib = tmp_path / "calib ñ.npz"
    np.savez(calib, x=x)
    table = tmp_path / "t.json"
    run_bad(["compile", model, "-o", tmp_path / "o.so", "--calibration-data", calib, "--save-calibration-table",
             table], [str(calib), "'x'", "3 NaN or infinite"], inputs=[model, calib])
    assert not table.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip"])
def test_damaged_npz_inputs(work, content):
    path = work["dir"] / "broken ins.npz"
    path.write_bytes(content)
    run_bad(["run", work["lib"], "--inputs", path, "-o", work["dir"] / "o.npz"], [str(path), "not a readable"],
            inputs=[path, work["lib"]])


def test_truncated_npz(work):
    data = work["test"].read_bytes()
    path = work["dir"] / "cut ins.npz"
    path.write_bytes(data[: len(data) // 2])
    run_bad(["run", work["lib"], "--inputs", path, "-o", work["dir"] / "o.npz"], [str(path)],
            inputs=[path, work["lib"]])


def test_sequence_longer_than_the_position_table(work):
    run_bad(["compile", work["model"], "-o", work["dir"] / "never.so", "--input-shape", "input_ids=1x65"],
            ["--input-shape input_ids=1x65", "64 rows", "input_ids=1x64"], inputs=[work["model"]])


def test_graph_without_inputs(tmp_path):
    c = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [2], [1, 2]))
    g = helper.make_graph([c, helper.make_node("Relu", ["c"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = tmp_path / "no inputs.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), model)
    run_bad(["compile", model, "-o", tmp_path / "o.so"], [str(model), "no inputs"], inputs=[model])


def test_eval_against_another_model_warns(work, tmp_path):
    """Same shapes, different weights: the figures are computed, with a warning that the hash differs."""
    m = onnx.load(str(work["model"]))
    init = next(i for i in m.graph.initializer if i.name.endswith("word_embeddings.weight"))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[::-1].copy(), init.name))
    other = tmp_path / "other model.onnx"
    onnx.save(m, str(other))
    with unchanged(work["lib"], other, work["test"]):
        p = intformer("eval", work["lib"], "--model", other, "--inputs", work["test"])
    assert p.returncode == 0, p.stderr
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("intformer: warning:")]
    assert len(warnings) == 1 and str(other) in warnings[0] and "sha256" in warnings[0], p.stderr
    p = intformer("eval", work["lib"], "--model", work["model"], "--inputs", work["test"])
    assert p.returncode == 0 and "warning" not in p.stderr, p.stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1), offset=st.floats(0, 1), value=st.integers(0, 255))
def test_damaged_npz_and_tables_in_process(work, tmp_path_factory, cut, offset, value):
    """Cut and flipped .npz files and calibration tables: a readable result or an IntformerError naming the
    file, never another exception."""
    from compiler.artifact import Manifest
    from compiler.calibrate.table import CalibrationTable
    from compiler.npz import load_samples

    specs = list(Manifest.from_json(json.loads((work["dir"] / (work["lib"].name + ".manifest.json"))
                                               .read_text())).inputs)
    d = tmp_path_factory.mktemp("fuzz")
    for src, load in ((work["test"], lambda p: load_samples(p, specs)), (work["table"], CalibrationTable.load)):
        data = bytearray(src.read_bytes())
        data = data[: max(1, int(len(data) * cut))] if cut < 0.98 else data
        data[int(offset * (len(data) - 1))] = value
        path = d / f"damaged{src.suffix}"
        path.write_bytes(bytes(data))
        try:
            load(str(path))
        except IntformerError as e:
            assert str(path) in str(e)
