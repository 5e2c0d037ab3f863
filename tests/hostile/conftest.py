"""Hostile input as a new user or a careless script gives it: every case runs the CLI in a subprocess with a time
limit and must end in exit code 1 or 2, one `intformer...: error:` line naming the file or flag (and the fix), no
traceback, no "internal error", and every input file byte-identical afterwards.

One tiny library for the whole suite: the session's `tiny_bert_lib` (tests/conftest.py), copied into a folder
whose name has spaces and non-ASCII characters; its damaged variants are byte edits of that copy.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ERROR_LINE = re.compile(r"^intformer(?: [\w-]+)?: error: ")
TIME_LIMIT = 120  # s per command: nothing here may hang


def intformer(*args, timeout: float = TIME_LIMIT, cwd=None, env=None, stdin=None):
    """The CLI in a subprocess, this checkout first on the path, progress messages off."""
    e = dict(os.environ, INTFORMER_QUIET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=e, input=stdin)


def digest(path) -> str:
    h = hashlib.sha256()
    for root, _, files in (os.walk(path) if os.path.isdir(path) else [("", None, [str(path)])]):
        for f in sorted(files):
            with open(os.path.join(root, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


@contextmanager
def unchanged(*paths):
    """Every path (file or folder) is byte-identical after the block."""
    before = {str(p): digest(p) for p in paths if os.path.exists(p)}
    yield
    for p, d in before.items():
        assert os.path.exists(p), f"{p} was removed"
        assert digest(p) == d, f"{p} was modified"


def assert_error(p, *needles, codes=(1, 2)):
    """Exit code in `codes`, exactly one error line containing every needle, no traceback or internal error."""
    out = p.stderr + p.stdout
    assert p.returncode in codes, f"exit {p.returncode}: {out[-2000:]}"
    assert "Traceback" not in out and "internal error" not in out, out[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ERROR_LINE.match(ln)]
    assert len(lines) == 1, p.stderr[-2000:]
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]


def run_bad(args, needles, inputs=(), codes=(1, 2), **kw):
    """The whole contract of one hostile case: clean one-line error and untouched inputs."""
    with unchanged(*inputs):
        p = intformer(*args, **kw)
    return assert_error(p, *needles, codes=codes)


@pytest.fixture(scope="session")
def work(tiny_bert, tiny_bert_lib, tmp_path_factory):
    """A folder named with spaces and non-ASCII holding the tiny model, its library (+ manifest), calibration and
    test .npz and calibration table: {"dir", "model", "lib", "calib", "test", "table"}."""
    model, calib, test = tiny_bert
    lib = tiny_bert_lib[0]
    d = tmp_path_factory.mktemp("hostile") / "mödel files ü"
    d.mkdir()
    out = {"dir": d}
    for key, src, name in (("model", model, "bért model.onnx"), ("calib", calib, "calib data.npz"),
                           ("test", test, "test ins.npz"), ("lib", lib, "lib ü.so"),
                           ("table", os.path.join(os.path.dirname(lib), "table.json"), "table ä.json")):
        shutil.copy(src, d / name)
        out[key] = d / name
    shutil.copy(lib + ".manifest.json", str(out["lib"]) + ".manifest.json")
    return out


def damaged(work, name: str, data: bytes, manifest: bool = True):
    """A library file `name` with content `data` in the work folder (the good manifest beside it if asked)."""
    path = work["dir"] / name
    path.write_bytes(data)
    side = str(path) + ".manifest.json"
    if manifest:
        shutil.copy(str(work["lib"]) + ".manifest.json", side)
    elif os.path.exists(side):
        os.unlink(side)
    return path
