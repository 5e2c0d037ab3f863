"""The CLI contract: each bad input gives one clear line on stderr, a non-zero exit and no traceback."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper


def intformer(*args, cwd=None):
    env = dict(os.environ, INTFORMER_QUIET="1")
    return subprocess.run([sys.executable, "-m", "compiler.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


def assert_clean_error(p, *needles):
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("intformer: error:")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_file(tmp_path):
    assert_clean_error(intformer("compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.so")),
                       "nope.onnx", "no such file")


def test_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\x01\x02 at all")
    assert_clean_error(intformer("compile", str(bad), "-o", str(tmp_path / "o.so")), "bad.onnx")


def test_unsupported_op_lists_nodes(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    nodes = [helper.make_node("Frobnicate", ["x"], ["a"], name="frob_1", domain="ai.example"),
             helper.make_node("Frobnicate", ["a"], ["y"], name="frob_2", domain="ai.example")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.example", 1)])
    path = tmp_path / "odd.onnx"
    path.write_bytes(m.SerializeToString())
    assert_clean_error(intformer("compile", str(path), "-o", str(tmp_path / "o.so")),
                       "unsupported ONNX op", "Frobnicate", "frob_1", "frob_2")


def test_unknown_target(tiny_bert, tmp_path):
    model = tiny_bert[0]
    assert_clean_error(intformer("compile", model, "-o", str(tmp_path / "o.so"), "--target", "pdp11",
                                 "--input-shape", "input_ids=1x16"), "unknown target 'pdp11'", "host")


def test_dynamic_dim_without_value(tiny_bert, tmp_path):
    assert_clean_error(intformer("compile", tiny_bert[0], "-o", str(tmp_path / "o.so")),
                       "dynamic input dims", "--input-shape")


def test_bad_npz_names_and_shapes(tiny_bert_lib, tmp_path):
    lib = tiny_bert_lib[0]
    wrong_names = tmp_path / "names.npz"
    np.savez(wrong_names, ids=np.zeros((1, 1, 16), np.int64))
    assert_clean_error(intformer("run", lib, "--inputs", str(wrong_names), "-o", str(tmp_path / "o.npz")),
                       "missing", "input_ids")
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, input_ids=np.zeros((2, 1, 8), np.int64), attention_mask=np.ones((2, 1, 8), np.int64),
             token_type_ids=np.zeros((2, 1, 8), np.int64))
    assert_clean_error(intformer("run", lib, "--inputs", str(wrong_shape), "-o", str(tmp_path / "o.npz")),
                       "input_ids", "(2, 1, 8)")


def test_out_of_range_token_ids_are_an_error_not_a_crash(tiny_bert_lib, tmp_path):
    lib = tiny_bert_lib[0]
    p = tmp_path / "big.npz"
    np.savez(p, input_ids=np.full((1, 1, 16), 10 ** 6, np.int64), attention_mask=np.ones((1, 1, 16), np.int64),
             token_type_ids=np.zeros((1, 1, 16), np.int64))
    assert_clean_error(intformer("run", lib, "--inputs", str(p), "-o", str(tmp_path / "o.npz")),
                       "input_ids", "out of range")


def test_compile_run_eval_inspect_happy_path(tiny_bert, tmp_path):
    model, calib, test = tiny_bert
    lib, report = str(tmp_path / "m.so"), str(tmp_path / "r.json")
    p = intformer("compile", model, "-o", lib, "--input-shape", "input_ids=1x16", "--calibration-data", calib,
                  "--report", report)
    assert p.returncode == 0, p.stderr
    rep = json.load(open(report))
    assert rep["matmuls"]["int8"] == rep["matmuls"]["total"] == 16
    assert all({"op", "dtypes"} <= set(o) for o in rep["ops"])
    out = str(tmp_path / "out.npz")
    p = intformer("run", lib, "--inputs", test, "-o", out)
    assert p.returncode == 0, p.stderr
    assert np.load(out)["last_hidden_state"].shape == (8, 1, 16, 32)
    p = intformer("eval", lib, "--model", model, "--inputs", test)
    assert p.returncode == 0 and "cosine" in p.stdout, p.stderr
    p = intformer("inspect", lib)
    assert p.returncode == 0 and "16/16 int8" in p.stdout, p.stderr
    p = intformer("bench", lib, "--model", model, "--repeats", "3")
    assert p.returncode == 0 and "onnxruntime int8" in p.stdout, p.stderr
    p = intformer("bench", lib, "--repeats", "3", "--per-op")
    assert p.returncode == 0 and p.stdout.count("cumulative") == 2, p.stderr  # two tables: by family, by kernel


@pytest.mark.parametrize("args", [["compile"], ["run", "x.so"], ["frobnicate"]])
def test_usage_errors(args):
    p = intformer(*args)
    assert p.returncode == 2 and "Traceback" not in p.stderr
