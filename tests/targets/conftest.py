import os
import shutil
import socket
from contextlib import contextmanager

import pytest


def require_tool(tool: str, package: str) -> None:
    """Skip (with the install command) when a host tool is missing: tests/run.sh installs these with apt-get,
    so this only happens where that is impossible (no root, no apt)."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed and could not be installed here; "
                    f"apt-get install -y --no-install-recommends {package}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_rpc_server(root: str, stderr=None):
    """A TVM RPC server on 127.0.0.1 (the host's own libraries run on it), in its own process group so that the
    server and its worker end together: yields its port."""
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                               str(port), "--port-end", str(port + 1)], stdout=subprocess.DEVNULL,
                              stderr=stderr or subprocess.DEVNULL, text=True,
                              env=dict(os.environ, PYTHONPATH=root), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None and time.monotonic() < deadline, "the RPC server did not start"
            time.sleep(0.2)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@contextmanager
def running_boards(cpus):
    """Emulated boards, one per qemu CPU name, on free ports: yields {cpu: port}; all stopped on exit.
    Skips (with the install command) when qemu-user or debootstrap is missing."""
    from targets import board
    from targets.board_setup import host_tool

    require_tool("qemu-aarch64", "qemu-user")
    if host_tool("debootstrap") is None:
        require_tool("debootstrap", "debootstrap")
    started = {}
    try:
        for cpu in cpus:
            started[cpu] = board.start(cpu=cpu, port=free_port(), log=lambda m: None).port
            _first_session(started[cpu])
        yield started
    finally:
        for port in started.values():
            board.stop(port)


def connect_board(port: int, timeout: float = 120, what: str = "connecting"):
    """An RPC session with the board on `port`, or an IntformerError naming it after `timeout` s."""
    from compiler.tvm_compat import rpc_connect
    from targets.remote import call_with_timeout

    return call_with_timeout(lambda: rpc_connect("127.0.0.1", port), timeout, what, f"127.0.0.1:{port}")


def _first_session(port: int) -> None:
    """Open and close one session before the next board starts: a board's first session (a process forked
    under qemu-user) was seen to hang when it began while another board was booting (both full test runs of
    2026-12-05; the same tests alone passed)."""
    connect_board(port, 300, "first session")


def cross_compile_tiny_bert(tiny_bert, tiny_bert_lib, targets, out_dir) -> dict:
    """The tiny BERT compiled for each target from the host build's calibration table: {target: library path}
    (a target whose toolchain is missing is absent)."""
    from compiler.api import compile_model
    from compiler.config import CompileOptions
    from targets import resolve_target
    from targets.toolchain import toolchain_for

    model = tiny_bert[0]
    table = os.path.join(os.path.dirname(tiny_bert_lib[0]), "table.json")
    out = {}
    for target in targets:
        if not toolchain_for(resolve_target(target)).installed():
            continue
        lib = os.path.join(str(out_dir), f"bert-{target}.so")
        opts = CompileOptions(target=target, input_shapes=(("input_ids", (1, 16)),), calibration_table=table)
        compile_model(model, lib, opts)
        out[target] = lib
    return out


@pytest.fixture(scope="session")
def cross_lib(tiny_bert, tiny_bert_lib, tmp_path_factory):
    """`get(target)`: the tiny BERT compiled for `target` from the host build's calibration table, once per
    session (None when the target's toolchain is missing)."""
    out_dir = tmp_path_factory.mktemp("cross")
    built: dict = {}

    def get(target):
        if target not in built:
            built[target] = cross_compile_tiny_bert(tiny_bert, tiny_bert_lib, (target,), out_dir).get(target)
        return built[target]

    return get


@pytest.fixture(scope="session")
def cross_libs(cross_lib):
    """The tiny BERT compiled for rpi5, rpi4 and armv7: {target: library path} (a target whose toolchain is
    missing is absent)."""
    libs = {t: cross_lib(t) for t in ("rpi5", "rpi4", "armv7")}
    return {t: p for t, p in libs.items() if p}
