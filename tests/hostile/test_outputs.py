"""Outputs: checked before any work (a bad -o fails in seconds, not after a compile), never written onto an input,
written atomically under exactly the name given."""

import os
import time

import numpy as np
import pytest

from compiler.io_safety import atomic_output
from tests.hostile.conftest import intformer, run_bad, unchanged


def _compile(work, *extra):
    return ["compile", work["model"], "--input-shape", "input_ids=1x16", *extra]


@pytest.mark.parametrize("case", ["-o model", "-o calibration", "--report model", "--save-calibration-table model",
                                  "-o table"])
def test_compile_never_writes_onto_its_inputs(work, case):
    flag, which = case.split()
    calib = ["--calibration-table", work["table"]] if which == "table" else ["--calibration-data", work["calib"]]
    args = _compile(work, *calib)
    if flag == "-o":
        args += ["-o", work[{"model": "model", "calibration": "calib", "table": "table"}[which]]]
    else:
        args += ["-o", work["dir"] / "never.so", flag, work["model"]]
    t0 = time.monotonic()
    run_bad(args, [flag, "same file", "choose another"], inputs=[work["model"], work["calib"], work["table"]])
    assert time.monotonic() - t0 < 30  # before the pipeline (a compile takes longer)
    assert not (work["dir"] / "never.so").exists()


@pytest.mark.parametrize("where, needle", [("/proc/intformer.so", "kernel interface"), ("folder", "is a folder"),
                                           ("missing dir/x.so", "does not exist")])
def test_compile_output_preflight(work, where, needle):
    out = {"folder": work["dir"], "missing dir/x.so": work["dir"] / "missing dir" / "x.so"}.get(where, where)
    t0 = time.monotonic()
    run_bad(_compile(work, "-o", out), ["-o", needle], inputs=[work["model"]])
    assert time.monotonic() - t0 < 30


def test_report_into_a_missing_folder_fails_before_compiling(work):
    run_bad(_compile(work, "-o", work["dir"] / "r.so", "--report", work["dir"] / "nope" / "r.json"),
            ["--report", "does not exist"], inputs=[work["model"]])
    assert not (work["dir"] / "r.so").exists()


def test_run_output_checks(work):
    ins = [work["lib"], work["test"]]
    run_bad(["run", work["lib"], "--inputs", work["test"], "-o", work["test"]], ["-o", "same file", "--inputs"],
            inputs=ins)
    run_bad(["run", work["lib"], "--inputs", work["test"], "-o", work["dir"] / "nowhere" / "o.npz"],
            ["-o", "does not exist"], inputs=ins)
    run_bad(["run", work["lib"], "--inputs", work["test"], "-o", work["lib"]], ["-o", "same file"], inputs=ins)


def test_run_writes_exactly_the_name_it_prints(work):
    out = work["dir"] / "result.out"
    with unchanged(work["lib"], work["test"]):
        p = intformer("run", work["lib"], "--inputs", work["test"], "-o", out)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"wrote {out}"
    assert out.exists() and not (work["dir"] / "result.out.npz").exists()
    assert np.load(out)["last_hidden_state"].shape == (8, 1, 16, 32)
    assert not [f for f in os.listdir(work["dir"]) if f.startswith(".intformer-")]  # no temporary left behind


def test_translate_never_overwrites_its_input(work):
    src = work["dir"] / "sätze.txt"
    src.write_text("hello world\n")
    run_bad(["translate", work["lib"], "-i", src, "-o", src], ["-o", "same file", "-i"], inputs=[src, work["lib"]])


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(str(path)) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]
    with atomic_output(str(path)) as tmp:
        open(tmp, "w").write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["keep.txt"]
