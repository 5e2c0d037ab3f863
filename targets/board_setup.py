"""Set-up of the emulated aarch64 board: an arm64 Debian sysroot with Python 3.11 and the aarch64 TVM runtime.

Everything lives in one cache directory (default ``~/.cache/intformer/board``):

    sysroot/   Debian bookworm arm64 (debootstrap --foreign, packages unpacked; never chrooted)
    site/      the aarch64 wheels of apache-tvm / apache-tvm-ffi (the host's versions), numpy, cloudpickle, psutil
    ready.json what was set up, with which versions; its presence marks a finished set-up
    run/       one state file and one log per running board (targets/board.py)

Each step writes to a temporary name and renames, so an interrupted set-up is redone, never half-used.
Python runs under qemu-user through a wrapper script (``python_wrapper``) whose path Python takes as
``sys.executable``: the RPC server's child processes then run through qemu too, with or without binfmt_misc.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata

from compiler.errors import IntformerError

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
GUEST_PYTHON = "python3.11"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
# host tool -> Debian package that provides it
HOST_TOOLS: dict[str, str] = {"qemu-aarch64": "qemu-user", "debootstrap": "debootstrap", "dpkg-deb": "dpkg"}
# runtime packages the RPC server needs on the board besides TVM (popen_pool imports cloudpickle and psutil)
GUEST_EXTRA_WHEELS = ("numpy", "cloudpickle", "psutil")


@dataclass(frozen=True)
class BoardPaths:
    root: str

    @property
    def sysroot(self) -> str:
        return os.path.join(self.root, "sysroot")

    @property
    def site(self) -> str:
        return os.path.join(self.root, "site")

    @property
    def ready(self) -> str:
        return os.path.join(self.root, "ready.json")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, "run")

    @property
    def setup_log(self) -> str:
        return os.path.join(self.root, "setup.log")

    def python_wrapper(self, cpu: str) -> str:
        return os.path.join(self.sysroot, "usr", "bin", f"python3-qemu-{cpu}")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "intformer", "board")


def wanted_versions() -> dict[str, str]:
    """The board runs the host's TVM versions: a library built here loads there."""
    out = {}
    for pkg in ("apache-tvm", "apache-tvm-ffi"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            raise IntformerError(f"{pkg} is not installed on this machine; install intformer first") from None
    return out


def host_tool(name: str):
    """Path of a host tool; /usr/sbin counts even when it is not on PATH (debootstrap lives there)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def require_host_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if host_tool(tool) is None})
    if missing:
        raise IntformerError(f"the emulated board needs {', '.join(missing)}; install with: "
                             f"apt-get install -y --no-install-recommends {' '.join(missing)}")


def is_set_up(paths: BoardPaths) -> bool:
    try:
        with open(paths.ready) as f:
            return json.load(f).get("versions") == wanted_versions()
    except (OSError, ValueError):
        return False


@contextmanager
def _locked(paths: BoardPaths):
    os.makedirs(paths.root, exist_ok=True)
    with open(os.path.join(paths.root, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str], paths: BoardPaths, what: str) -> None:
    with open(paths.setup_log, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise IntformerError(f"board set-up failed while {what} (exit {p.returncode}); see {paths.setup_log}")


def _make_sysroot(paths: BoardPaths) -> None:
    tmp = paths.sysroot + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # --foreign unpacks the base system and only downloads the rest; we unpack the rest with dpkg-deb below
    # instead of running the second stage (which needs a chroot).
    # debootstrap needs root (device nodes, ownership); fakeroot stands in for it when available
    prefix = [] if os.geteuid() == 0 else ["fakeroot"]
    if prefix and shutil.which("fakeroot") is None:
        raise IntformerError("setting up the board runs debootstrap, which needs root: run `intformer board setup` "
                             "once as root, or install fakeroot (apt-get install -y fakeroot)")
    _run([*prefix, host_tool("debootstrap"), "--foreign", "--arch=arm64", "--variant=minbase",
          f"--include={GUEST_PYTHON}", DEBIAN_SUITE, tmp, DEBIAN_MIRROR], paths,
         f"downloading Debian {DEBIAN_SUITE} arm64 (debootstrap)")
    debs = sorted(glob.glob(os.path.join(tmp, "var", "cache", "apt", "archives", "*.deb")))
    for deb in debs:
        _run(["dpkg-deb", "-x", deb, tmp], paths, f"unpacking {os.path.basename(deb)}")
        os.unlink(deb)
    if not os.path.exists(os.path.join(tmp, "usr", "bin", GUEST_PYTHON)):
        raise IntformerError(f"board set-up: the arm64 sysroot has no /usr/bin/{GUEST_PYTHON}; see {paths.setup_log}")
    shutil.rmtree(paths.sysroot, ignore_errors=True)
    os.replace(tmp, paths.sysroot)


def _install_wheels(paths: BoardPaths, versions: dict[str, str]) -> None:
    tmp = paths.site + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pins = [f"{k}=={v}" for k, v in versions.items()] + list(GUEST_EXTRA_WHEELS)
    _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
          "--target", tmp, "--platform", WHEEL_PLATFORM, "--only-binary=:all:", "--python-version", "3.11",
          "--implementation", "cp", *pins], paths, f"downloading the aarch64 wheels ({', '.join(pins)})")
    shutil.rmtree(paths.site, ignore_errors=True)
    os.replace(tmp, paths.site)


def write_python_wrapper(paths: BoardPaths, cpu: str) -> str:
    """A script that runs the board's Python under `qemu-aarch64 -cpu CPU`; it passes its own path as argv[0],
    so the guest's sys.executable is this script and the children Python starts run under qemu as well."""
    path = paths.python_wrapper(cpu)
    qemu = shutil.which("qemu-aarch64") or "qemu-aarch64"
    text = ("#!/bin/sh\n"
            f'exec {qemu} -cpu {cpu} -L "{paths.sysroot}" -0 "$0" "{paths.sysroot}/usr/bin/{GUEST_PYTHON}" "$@"\n')
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def ensure_set_up(paths: BoardPaths, log=print) -> None:
    """Set the board up unless it already is (for the host's TVM versions); safe to call concurrently."""
    require_host_tools()
    versions = wanted_versions()
    with _locked(paths):
        if is_set_up(paths):
            return
        t0 = time.time()
        log(f"setting up the emulated board in {paths.root} (once; about a minute)")
        if not os.path.exists(os.path.join(paths.sysroot, "usr", "bin", GUEST_PYTHON)):
            _make_sysroot(paths)
        _install_wheels(paths, versions)
        with open(paths.ready, "w") as f:
            json.dump({"versions": versions, "suite": DEBIAN_SUITE, "python": GUEST_PYTHON,
                       "seconds": round(time.time() - t0, 1)}, f)
        log(f"board set up in {time.time() - t0:.0f} s")
