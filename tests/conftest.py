import os

import numpy as np
import pytest

os.environ.setdefault("INTFORMER_QUIET", "1")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """(model path, calibration npz, test npz) of a tiny random-weight BERT."""
    from tests.helpers.tiny_models import export_tiny, sample_inputs

    d = tmp_path_factory.mktemp("tiny_bert")
    model = export_tiny("bert", str(d / "bert.onnx"))
    np.savez(d / "calib.npz", **sample_inputs("bert", 16, seed=1))
    np.savez(d / "test.npz", **sample_inputs("bert", 8, seed=2))
    return str(model), str(d / "calib.npz"), str(d / "test.npz")


@pytest.fixture(scope="session")
def tiny_bert_lib(tiny_bert, tmp_path_factory):
    """The tiny BERT compiled for the host: (library, CompileReport, model, test npz)."""
    from compiler.api import compile_model
    from compiler.config import CompileOptions

    model, calib, test = tiny_bert
    d = tmp_path_factory.mktemp("tiny_bert_lib")
    lib = str(d / "bert.so")
    opts = CompileOptions(input_shapes=(("input_ids", (1, 16)),), calibration_data=calib)
    res = compile_model(model, lib, opts, report_path=str(d / "report.json"),
                        save_calibration_table=str(d / "table.json"))
    return lib, res.report, model, test
