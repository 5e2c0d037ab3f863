"""End to end: export -> compile -> run, on tiny random-weight encoders of the BERT family."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from compiler.api import compile_model, evaluate, run
from compiler.artifact import manifest_path
from compiler.config import CompileOptions

MIN_COSINE = 0.99  # random weights; real MiniLM is measured by the example (README)


def test_every_matmul_is_int8(tiny_bert_lib):
    lib, report, model, test = tiny_bert_lib
    assert report.matmuls.total == 16  # 2 layers x (Q, K, V, QK^T, PV, out, FFN1, FFN2)
    assert report.matmuls.int8 == 16
    int_mm = [o for o in report.ops if o.op == "relax.matmul"]
    assert all((o.inputs, o.output) == (("int8", "int8"), "int32") for o in int_mm)


def test_accuracy_against_onnxruntime(tiny_bert_lib):
    lib, _, model, test = tiny_bert_lib
    (cmp,) = evaluate(lib, model, test)
    assert cmp.cosine_mean >= MIN_COSINE, cmp


def test_runs_in_a_fresh_process_with_the_tvm_runtime_alone(tiny_bert_lib, tmp_path):
    lib, _, _, test = tiny_bert_lib
    out = tmp_path / "out.npy"
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import tvm.runtime as rt
        mod = rt.load_module({lib!r})
        vm = rt.vm.VirtualMachine(mod, rt.cpu())
        manifest = json.loads(str(vm["intformer_manifest"]()))
        data = np.load({test!r})
        args = [rt.tensor(data[i["name"]][0].astype(i["dtype"])) for i in manifest["inputs"]]
        np.save({str(out)!r}, vm["main"](*args).numpy())
        assert not any(m == "compiler" or m.startswith("compiler.") for m in sys.modules), "compiler imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path))
    ref = run(lib, test)["last_hidden_state"][0]
    assert np.array_equal(np.load(out), ref)


def test_manifest_beside_and_inside_agree(tiny_bert_lib):
    from compiler.runtime import CompiledModel

    lib = tiny_bert_lib[0]
    with open(manifest_path(lib)) as f:
        beside = json.load(f)
    inside = CompiledModel(lib).manifest.to_json()
    assert beside == inside
    assert [i["name"] for i in beside["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert beside["outputs"][0]["shape"] == [1, 16, 32]
    assert len(beside["model_sha256"]) == 64 and len(beside["calibration_table_sha256"]) == 64
    assert beside["tool_versions"]["apache-tvm"]


def test_calibration_table_reuse_gives_the_same_library(tiny_bert_lib, tiny_bert, tmp_path):
    lib, _, model, test = tiny_bert_lib
    table = os.path.join(os.path.dirname(lib), "table.json")
    lib2 = str(tmp_path / "again.so")
    compile_model(model, lib2, CompileOptions(input_shapes=(("input_ids", (1, 16)),), calibration_table=table))
    a = run(lib, test)["last_hidden_state"]
    b = run(lib2, test)["last_hidden_state"]
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kind,dynamo,opset", [("distilbert", False, 17), ("roberta", False, 17),
                                               ("bert", True, 18), ("bert_tanh", False, 17)])
def test_family_and_exporters(kind, dynamo, opset, tmp_path):
    from tests.helpers.tiny_models import export_tiny, sample_inputs

    model = export_tiny(kind, str(tmp_path / f"{kind}.onnx"), dynamo=dynamo, opset=opset)
    np.savez(tmp_path / "calib.npz", **sample_inputs(kind, 12, seed=3))
    np.savez(tmp_path / "test.npz", **sample_inputs(kind, 6, seed=4))
    lib = str(tmp_path / f"{kind}.so")
    res = compile_model(model, lib, CompileOptions(input_shapes=(("input_ids", (1, 16)),),
                                                   calibration_data=str(tmp_path / "calib.npz")))
    assert res.report.matmuls.int8 == res.report.matmuls.total > 0
    assert res.report.float_ops == []  # integer-only for every member of the family (tanh GELU included)
    (cmp,) = evaluate(lib, model, str(tmp_path / "test.npz"))
    assert cmp.cosine_mean >= MIN_COSINE, cmp


def test_percentile_method_and_synthetic_calibration(tiny_bert, tmp_path):
    model, calib, test = tiny_bert
    shape = (("input_ids", (1, 16)),)
    pct = compile_model(model, str(tmp_path / "pct.so"),
                        CompileOptions(input_shapes=shape, calibration_data=calib, calibration_method="percentile"))
    assert pct.manifest.calibration.method == "percentile"
    (cmp,) = evaluate(str(tmp_path / "pct.so"), model, test)
    assert cmp.cosine_mean >= MIN_COSINE - 0.01, cmp
    syn = compile_model(model, str(tmp_path / "syn.so"), CompileOptions(input_shapes=shape))
    assert syn.manifest.calibration.source == "synthetic"
    assert syn.report.float_ops == []


def test_read_only_inputs_are_uploaded_once_and_writable_ones_every_call(tiny_bert_lib):
    """CompiledModel keeps the device copy of a read-only input passed again (a decoder's encoder outputs); an
    array written in place between calls is uploaded again, so the result follows it."""
    from compiler.runtime import CompiledModel

    lib, _, _, test = tiny_bert_lib
    model = CompiledModel(lib)
    data = np.load(test)
    feed = {s.name: np.array(data[s.name][0], dtype=s.dtype) for s in model.inputs}
    first = model(feed)[0]
    feed["input_ids"][0, 1] = (feed["input_ids"][0, 1] + 1) % 50  # in place, writable: must be seen
    second = model(feed)[0]
    assert not np.array_equal(first, second)
    for v in feed.values():
        v.flags.writeable = False
    model(feed)
    pinned = {name: t for name, (_, t) in model._pinned.items()}
    assert set(pinned) == {s.name for s in model.inputs}
    model(feed)
    assert all(model._pinned[name][1] is t for name, t in pinned.items())  # the same device tensors, reused
    assert np.array_equal(model(feed)[0], second)
