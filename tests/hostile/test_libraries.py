"""Truncated, corrupted, foreign and non-model libraries: checked before they are mapped, never a crash."""

import json
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from compiler.errors import IntformerError
from compiler.io_safety import check_library, read_elf
from tests.hostile.conftest import damaged, intformer, run_bad, unchanged


@pytest.mark.parametrize("command", ["inspect", "run", "eval", "bench"])
def test_truncated_library_is_named_not_a_sigbus(work, command):
    data = work["lib"].read_bytes()
    lib = damaged(work, f"cut {command}.so", data[: len(data) * 6 // 10])  # the issue's `head -c` cut
    extra = {"inspect": [], "run": ["--inputs", work["test"], "-o", work["dir"] / "o.npz"],
             "eval": ["--model", work["model"], "--inputs", work["test"]], "bench": ["--repeats", "1"]}[command]
    line = run_bad([command, lib, *extra], [str(lib), "truncated", "compile it again"],
                   inputs=[lib, work["test"], work["model"]])
    assert "SIGBUS" not in line


def test_every_truncation_is_caught_before_loading(work, tmp_path):
    """Cut the library at many points (headers, segments, section table): the ELF check refuses each one, so
    the runtime never maps a short file."""
    data = work["lib"].read_bytes()
    path = tmp_path / "cut.so"
    for n in sorted({0, 3, 40, 63, 64, 100, 4096} | set(range(1, len(data), max(1, len(data) // 97)))):
        path.write_bytes(data[:n])
        with pytest.raises(IntformerError, match="cut.so"):
            read_elf(str(path))
    path.write_bytes(data)
    assert read_elf(str(path))["machine"] in (62, 183)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 63), value=st.integers(0, 255))
def test_corrupted_header_bytes_never_crash_the_check(work, offset, value):
    """A random byte of the ELF header overwritten: the check either refuses the file with an IntformerError
    naming it, or the header still describes a file whose every table and segment lies inside it."""
    data = bytearray(work["lib"].read_bytes())
    data[offset] = value
    path = work["dir"] / "flipped.so"
    path.write_bytes(bytes(data))
    try:
        info = read_elf(str(path))
    except IntformerError as e:
        assert "flipped.so" in str(e)
    else:
        assert info["size"] == len(data)


def test_corrupted_header_through_the_cli(work):
    data = bytearray(work["lib"].read_bytes())
    struct.pack_into("<Q", data, 0x28, len(data) + 4096)  # e_shoff: the section table past the end
    lib = damaged(work, "bad header.so", bytes(data))
    run_bad(["run", lib, "--inputs", work["test"], "-o", work["dir"] / "o.npz"], [str(lib), "truncated or corrupt"],
            inputs=[lib, work["test"]])


def test_not_elf_at_all(work):
    lib = damaged(work, "text.so", b"just some text, not a library\n" * 10)
    run_bad(["inspect", lib], [str(lib), "not a compiled library"], inputs=[lib])


def test_shared_library_that_is_not_a_model(work):
    import numpy._core._multiarray_umath as other  # any real shared object that is no intformer library

    lib = damaged(work, "other lib.so", open(other.__file__, "rb").read(), manifest=False)
    run_bad(["inspect", lib], [str(lib), "not an intformer model"], inputs=[lib])


def _as_aarch64(work, name):
    data = bytearray(work["lib"].read_bytes())
    struct.pack_into("<H", data, 18, 183)  # e_machine: AArch64, as a library built for rpi5
    lib = damaged(work, name, bytes(data))
    m = json.loads((work["dir"] / (work["lib"].name + ".manifest.json")).read_text())
    m["target"] = {"name": "rpi5", "llvm": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}}
    (work["dir"] / (name + ".manifest.json")).write_text(json.dumps(m))
    return lib


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the foreign library is an aarch64 one")
def test_library_for_another_target_is_named_with_the_way_to_run_it(work):
    lib = _as_aarch64(work, "rpi5 lib.so")
    line = run_bad(["run", lib, "--inputs", work["test"], "-o", work["dir"] / "o.npz"],
                   [str(lib), "another CPU", "rpi5", "aarch64", "--rpc", "intformer package"],
                   inputs=[lib, work["test"]])
    assert "No such file" not in line
    p = intformer("inspect", lib)  # the manifest beside it still shows what it is
    assert p.returncode == 0 and "rpi5" in p.stdout and "aarch64" in p.stdout, p.stderr


def test_manifest_of_another_library_beside_it(work):
    lib = damaged(work, "mixed.so", work["lib"].read_bytes())
    side = work["dir"] / "mixed.so.manifest.json"
    m = json.loads(side.read_text())
    m["target"]["llvm"]["mtriple"] = "aarch64-linux-gnu"
    side.write_text(json.dumps(m))
    run_bad(["inspect", lib], ["mixed.so.manifest.json", "aarch64", "compile again"], inputs=[lib, side])
    side.write_text("{ not json")
    run_bad(["inspect", lib], ["mixed.so.manifest.json", "not a readable manifest"], inputs=[lib, side])


def test_library_for_cpu_features_this_machine_lacks(work):
    """Same ELF machine, but the manifest's target needs an instruction set this CPU does not have: named before
    a kernel could die with SIGILL."""
    lib = damaged(work, "future cpu.so", work["lib"].read_bytes())
    side = work["dir"] / "future cpu.so.manifest.json"
    m = json.loads(side.read_text())
    m["target"].update(name="future-x86", isa=[*m["target"].get("isa", []), "no_such_cpu_feature"])
    side.write_text(json.dumps(m))
    run_bad(["run", lib, "--inputs", work["test"], "-o", work["dir"] / "o.npz"],
            [str(lib), "future-x86", "no_such_cpu_feature", "--target host"], inputs=[lib, side, work["test"]])


def test_manifest_of_another_build_beside_it_is_a_warning(work):
    lib = damaged(work, "rebuilt.so", work["lib"].read_bytes())
    side = work["dir"] / "rebuilt.so.manifest.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "model_sha256": "f" * 64}))
    with unchanged(lib, side, work["test"]):
        p = intformer("run", lib, "--inputs", work["test"], "-o", work["dir"] / "rebuilt.npz")
    assert p.returncode == 0, p.stderr
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("intformer: warning:")]
    assert len(warnings) == 1 and "rebuilt.so.manifest.json" in warnings[0] and "ffffffffffff" in warnings[0]


def test_library_that_is_a_folder(work):
    d = work["dir"] / "folder.so"
    d.mkdir(exist_ok=True)
    run_bad(["inspect", d], [str(d), "folder"])


def test_paths_with_spaces_and_non_ascii_work(work):
    out = work["dir"] / "résultat ü.npz"
    with unchanged(work["lib"], work["test"]):
        p = intformer("run", work["lib"], "--inputs", work["test"], "-o", out)
    assert p.returncode == 0, p.stderr
    assert f"wrote {out}" in p.stdout
    assert np.load(out)["last_hidden_state"].shape[0] == 8
    p = intformer("inspect", work["lib"])
    assert p.returncode == 0 and "16/16 int8" in p.stdout, p.stderr


def test_check_library_accepts_the_real_one(work):
    side = check_library(str(work["lib"]))
    assert side is not None and side["target"]["name"] == "host"


def test_closed_stdout_pipe_is_not_an_error(work):
    """`intformer inspect lib.so | head`: the reader closed the pipe early; no traceback, exit 0."""
    env = dict(os.environ, INTFORMER_QUIET="1", PYTHONPATH=os.getcwd())
    p = subprocess.Popen([sys.executable, "-m", "compiler.cli", "inspect", str(work["lib"])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # before it writes anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert p.returncode != -signal.SIGPIPE
