"""`intformer package`: the runner bundle runs the tiny BERT without Python, natively (x86-64) and under plain
qemu-aarch64 (rpi5), bit for bit the host build's outputs; bad inputs are one line and a non-zero exit; the C API
example builds against the bundle and runs."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.targets.conftest import require_tool

# no Python, no TVM on the path: what a device without either has
BARE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}
QEMU = ["qemu-aarch64", "-cpu", "cortex-a76", "-L", "/usr/aarch64-linux-gnu"]


@pytest.fixture(scope="module")
def host_outputs(tiny_bert_lib):
    from compiler import api

    lib, _, _, test_npz = tiny_bert_lib
    return api.run(lib, test_npz), test_npz


@pytest.fixture(scope="module")
def host_bundle(tiny_bert_lib, tmp_path_factory):
    from compiler import api

    require_tool("g++", "g++")
    return api.package(tiny_bert_lib[0], str(tmp_path_factory.mktemp("pkg") / "bundle"))


@pytest.fixture(scope="module")
def rpi5_bundle(cross_lib, tmp_path_factory):
    from compiler import api

    require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    require_tool("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")
    return api.package(cross_lib("rpi5"), str(tmp_path_factory.mktemp("pkg-rpi5") / "bundle"))


def _assert_same(out_npz, host):
    with np.load(out_npz) as z:
        got = {k: z[k] for k in z.files}
    assert set(got) == set(host)
    for name in host:
        assert got[name].dtype == host[name].dtype
        np.testing.assert_array_equal(got[name], host[name])


def _assert_self_contained(bundle):
    names = [n for n, _ in bundle.files]
    assert {"intformer-run", "libintformer.so", "libtvm_runtime.so", "libtvm_ffi.so", "intformer.h",
            "README.md", bundle.library} <= set(names)
    assert not [n for n in names if n.endswith((".py", ".pyc")) or "python" in n.lower()]
    assert bundle.total_bytes - bundle.library_bytes < 10e6


def test_x86_bundle_runs_natively_bit_exact(host_bundle, host_outputs, tmp_path):
    host, test_npz = host_outputs
    _assert_self_contained(host_bundle)
    runner = os.path.join(host_bundle.directory, "intformer-run")
    compressed = tmp_path / "in_deflate.npz"
    with np.load(test_npz) as z:
        np.savez_compressed(compressed, **{k: z[k] for k in z.files})
    for i, inputs in enumerate((test_npz, str(compressed))):
        out = tmp_path / f"out{i}.npz"
        p = subprocess.run([runner, "--inputs", inputs, "-o", str(out)], capture_output=True, text=True,
                           env=BARE_ENV, cwd=str(tmp_path))
        assert p.returncode == 0, p.stderr
        _assert_same(out, host)


def test_bench_prints_latency_and_peak_memory(host_bundle, host_outputs):
    runner = os.path.join(host_bundle.directory, "intformer-run")
    p = subprocess.run([runner, "--inputs", host_outputs[1], "--bench", "5", "--threads", "1"], capture_output=True,
                       text=True, env=BARE_ENV)
    assert p.returncode == 0, p.stderr
    assert "median" in p.stdout and "peak memory" in p.stdout and "VmHWM" in p.stdout


@pytest.mark.board
def test_rpi5_bundle_runs_under_qemu_bit_exact(rpi5_bundle, host_outputs, tmp_path):
    """Plain qemu-user, no sysroot with Python, no RPC server: the bundle alone, run from inside its folder."""
    require_tool("qemu-aarch64", "qemu-user")
    host, test_npz = host_outputs
    _assert_self_contained(rpi5_bundle)
    out = tmp_path / "out.npz"
    p = subprocess.run([*QEMU, "./intformer-run", "--inputs", test_npz, "-o", str(out)], capture_output=True,
                       text=True, env=BARE_ENV, cwd=rpi5_bundle.directory, timeout=300)
    assert p.returncode == 0, p.stderr
    _assert_same(out, host)


def _bad_inputs(test_npz, d):
    with np.load(test_npz) as z:
        feed = {k: z[k] for k in z.files}
    raw = open(test_npz, "rb").read()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    renamed = dict(feed)
    renamed["input_idz"] = renamed.pop("input_ids")
    np.savez(d / "name.npz", **renamed)
    np.savez(d / "shape.npz", **{**feed, "input_ids": feed["input_ids"][:, :, :8]})
    np.savez(d / "dtype.npz", **{**feed, "input_ids": feed["input_ids"].astype(np.float32)})
    np.savez(d / "range.npz", **{**feed, "input_ids": feed["input_ids"] + 1000})
    return {
        "missing": (str(d / "nope.npz"), "no such file"),
        "truncated": (str(d / "truncated.npz"), "not a readable .npz"),
        "name": (str(d / "name.npz"), "missing ['input_ids']"),
        "shape": (str(d / "shape.npz"), "has shape (8, 1, 8)"),
        "dtype": (str(d / "dtype.npz"), "has dtype float32, expected int64"),
        "range": (str(d / "range.npz"), "out of range"),
    }


def test_runner_bad_inputs_are_one_line(host_bundle, host_outputs, tmp_path):
    runner = os.path.join(host_bundle.directory, "intformer-run")
    for case, (path, needle) in _bad_inputs(host_outputs[1], tmp_path).items():
        p = subprocess.run([runner, "--inputs", path, "-o", str(tmp_path / "o.npz")], capture_output=True,
                           text=True, env=BARE_ENV)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, (case, p.stderr)
        assert len(lines) == 1 and lines[0].startswith("intformer-run: error:") and needle in lines[0], (case, lines)
    p = subprocess.run([runner, "--inputs", host_outputs[1], "-o", str(tmp_path / "o.npz"), "--entry", "decoder"],
                       capture_output=True, text=True, env=BARE_ENV)
    assert p.returncode == 2 and "no entry point 'decoder'" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_c_api_example_builds_and_runs(host_bundle, tiny_bert_lib, tmp_path):
    require_tool("make", "make")
    require_tool("cc", "gcc")
    from compiler.runtime import CompiledModel

    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "c_api")
    exe = tmp_path / "embed"
    p = subprocess.run(["make", "-s", "-C", example, f"BUNDLE={host_bundle.directory}", f"OUT={exe}"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lib = os.path.join(host_bundle.directory, host_bundle.library)
    p = subprocess.run([str(exe), lib, "1"], capture_output=True, text=True, env=BARE_ENV)
    assert p.returncode == 0, p.stderr
    model = CompiledModel(tiny_bert_lib[0])
    want = model({s.name: np.ones(s.shape, s.dtype) for s in model.inputs})[0].ravel()
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("output last_hidden_state float32")][0]
    first = [float(x) for x in line.split("first:")[1].split("sum:")[0].split()]
    np.testing.assert_array_equal(np.float32(first), want[:4])
    p = subprocess.run([str(exe), str(tmp_path / "missing.so")], capture_output=True, text=True, env=BARE_ENV)
    assert p.returncode == 1 and p.stderr.strip() == f"error: {tmp_path / 'missing.so'}: no such file"


def test_cli_missing_cross_gxx_is_one_line(tmp_path):
    """An aarch64 library with no aarch64 g++ on PATH: one error line carrying the apt-get command."""
    fake = tmp_path / "lib-rpi5.so"
    fake.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 11 + (183).to_bytes(2, "little") + b"\0" * 44 +
                     b"intformer_manifest")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable), INTFORMER_QUIET="1")
    p = subprocess.run([sys.executable, "-m", "compiler.cli", "package", str(fake), "-o", str(tmp_path / "b")],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install -y --no-install-recommends g++-aarch64-linux-gnu" in lines[0]
    (tmp_path / "notelf.so").write_bytes(b"not a library")
    p = subprocess.run([sys.executable, "-m", "compiler.cli", "package", str(tmp_path / "notelf.so"), "-o",
                        str(tmp_path / "c")], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "not an ELF file" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert shutil.which("g++") is None or not (tmp_path / "c").exists()


def test_package_replaces_only_an_earlier_bundle(host_bundle, tiny_bert_lib, tmp_path):
    """Packaging again over a bundle replaces it; a folder holding anything else is refused and left alone."""
    from compiler import api
    from compiler.errors import IntformerError

    lib = tiny_bert_lib[0]
    again = api.package(lib, host_bundle.directory)
    assert [n for n, _ in again.files] == [n for n, _ in host_bundle.files]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "intformer-run").write_text("not a bundle's")
    with pytest.raises(IntformerError, match="not an earlier bundle's"):
        api.package(lib, str(mine))
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(IntformerError, match="the library's own folder"):
        api.package(lib, os.path.dirname(lib))
    with pytest.raises(IntformerError, match="not an intformer library"):
        api.package(os.path.join(host_bundle.directory, "libtvm_ffi.so"), str(tmp_path / "b"))
