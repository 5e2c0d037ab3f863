"""Tuning databases and remote time-outs: a damaged database names its file, --db must be a folder, an
interrupted `tune` says what it kept, a time-out ends in its message (never an abort)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.hostile.conftest import ROOT, assert_error, intformer, run_bad
from tests.targets.conftest import local_rpc_server


def _tune(work, db, *extra):
    return ["tune", work["model"], "--db", db, "--input-shape", "input_ids=1x16", "--calibration-table",
            work["table"], *extra]


def test_db_that_is_a_file(work):
    f = work["dir"] / "db file.txt"
    f.write_text("not a folder")
    t0 = time.monotonic()
    run_bad(_tune(work, f), ["--db", "is a file", "folder"], inputs=[f, work["model"]])
    assert time.monotonic() - t0 < 30


def _damaged_db(root, which: int, content: bytes):
    from schedules.database import FILES, target_key
    from targets import resolve_target

    spec = resolve_target("host")
    key_dir = root / target_key(spec.tvm_target(), spec.name)
    key_dir.mkdir(parents=True)
    (key_dir / "target.json").write_text("{}")
    path = key_dir / FILES[which]
    path.write_bytes(content)
    return spec, path


def test_db_with_a_garbage_line_names_the_file(work, tmp_path):
    _, records = _damaged_db(tmp_path / "tuning db", 1, b"garbage line here\n")
    t0 = time.monotonic()
    run_bad(_tune(work, tmp_path / "tuning db"), [str(records), "line 1", "not a tuning record"],
            inputs=[records, work["model"]])
    assert time.monotonic() - t0 < 30  # before the pipeline


@pytest.mark.parametrize("which, content, line", [(0, b"[1, 2]\n{\"a\": 1}\n", 2), (1, b"\xff\xfe\n", 1),
                                                  (1, b"[]\n\n[[\n", 3)])
def test_db_damage_in_process(tmp_path, which, content, line):
    from compiler.errors import IntformerError
    from schedules.database import TuningDatabase

    spec, path = _damaged_db(tmp_path, which, content)
    with pytest.raises(IntformerError, match=f"{path}: line {line} is not a tuning record"):
        TuningDatabase(str(tmp_path), spec.tvm_target(), spec.name)


@pytest.mark.slow  # about a minute on 2 shared cores: the pipeline and MetaSchedule's start-up come first
def test_interrupted_tune_says_what_it_kept(work, tmp_path):
    """SIGINT while MetaSchedule tunes: exit 130 and one line saying the records are kept (TVM turned it into a
    bare `RuntimeError: ` or carried on tuning)."""
    db = tmp_path / "db"
    env = dict(os.environ, INTFORMER_QUIET="1", PYTHONPATH=ROOT)
    args = _tune(work, db, "--trials", "64", "--trials-per-iter", "2")
    p = subprocess.Popen([sys.executable, "-m", "compiler.cli", *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not any(os.path.isdir(os.path.join(db, k, "logs")) for k in (os.listdir(db) if db.exists() else [])):
            assert p.poll() is None and time.monotonic() < deadline, "tuning did not start"
            time.sleep(0.5)
        time.sleep(4)  # inside MetaSchedule's loop: building and measuring candidates
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "RuntimeError" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("intformer: interrupted")]
    assert len(lines) == 1 and "kept in" in lines[0] and str(db) in lines[0], err[-2000:]


def test_remote_time_out_ends_in_its_message_not_an_abort(work):
    """A tiny --timeout against a live RPC server: the step overruns while TVM's client is still inside the
    call; the process must exit with the message, not abort at interpreter shutdown (exit 134)."""
    with local_rpc_server(ROOT, stderr=subprocess.PIPE) as port:
        p = intformer("run", work["lib"], "--inputs", work["test"], "-o", work["dir"] / "remote.npz",
                      "--rpc", f"127.0.0.1:{port}", "--timeout", "0.001", timeout=60)
        assert_error(p, f"127.0.0.1:{port}", "no answer within 0.001 s", "--timeout", codes=(2,))
        assert "terminate called" not in p.stderr
