"""The emulated board: the tiny BERT cross-compiled for rpi5 / rpi4 runs under qemu with the matching CPU and
gives the host build's outputs bit for bit; a crash or a stopped board is a clear error, and the board
recovers from a crashed session."""

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from compiler.errors import IntformerError
from tests.targets.conftest import free_port, require_tool, running_boards

pytestmark = pytest.mark.board


@pytest.fixture(scope="module")
def boards():
    """{qemu cpu: port} of two boards, cortex-a76 (has SDOT) and cortex-a72 (has not); stopped afterwards."""
    with running_boards(("cortex-a76", "cortex-a72")) as started:
        yield started


def _host_outputs(tiny_bert_lib):
    from compiler import api

    lib, _, _, test_npz = tiny_bert_lib
    return api.run(lib, test_npz), test_npz


def _remote(lib, port, timeout=120.0):
    from compiler.device import RemoteModel
    from targets.remote import RemoteSpec

    return RemoteModel(lib, RemoteSpec(rpc=f"127.0.0.1:{port}", timeout=timeout))


@pytest.mark.parametrize("target, cpu", [("rpi5", "cortex-a76"), ("rpi4", "cortex-a72")])
def test_bit_exact_with_host(cross_libs, tiny_bert_lib, boards, target, cpu):
    from compiler import api
    from targets.remote import RemoteSpec

    if target not in cross_libs:
        require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    host, test_npz = _host_outputs(tiny_bert_lib)
    got = api.run(cross_libs[target], test_npz, remote=RemoteSpec(rpc=f"127.0.0.1:{boards[cpu]}", timeout=120))
    assert set(got) == set(host)
    for name in host:
        assert got[name].dtype == host[name].dtype
        np.testing.assert_array_equal(got[name], host[name])


def test_cli_run_and_bench_on_board(cross_libs, tiny_bert_lib, boards, tmp_path):
    host, test_npz = _host_outputs(tiny_bert_lib)
    addr = f"127.0.0.1:{boards['cortex-a76']}"
    env = dict(os.environ, INTFORMER_QUIET="1")
    out = tmp_path / "out.npz"
    p = subprocess.run([sys.executable, "-m", "compiler.cli", "run", cross_libs["rpi5"], "--inputs", test_npz,
                        "-o", str(out), "--rpc", addr], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    got = np.load(out)
    for name in host:
        np.testing.assert_array_equal(got[name], host[name])
    p = subprocess.run([sys.executable, "-m", "compiler.cli", "bench", cross_libs["rpi5"], "--rpc", addr,
                        "--repeats", "3"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and f"on {addr}" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", "compiler.cli", "board", "status"], capture_output=True, text=True)
    assert addr in p.stdout and "cortex-a76" in p.stdout


def test_sdot_on_a72_is_a_clear_error_and_the_board_recovers(cross_libs, tiny_bert_lib, boards):
    """rpi5's SDOT raises SIGILL on a Cortex-A72: the session dies, the client says so, the supervisor restarts
    the server, and the rpi4 build runs on it again."""
    from targets import board

    port = boards["cortex-a72"]
    _, test_npz = _host_outputs(tiny_bert_lib)
    from compiler.npz import load_samples

    def restarts() -> int:
        return next(b for b in board.status() if b.port == port).restarts

    before = restarts()

    t0 = time.time()
    with pytest.raises(IntformerError, match="closed by the device"):
        m = _remote(cross_libs["rpi5"], port, timeout=60)
        m(load_samples(test_npz, list(m.inputs))[0])
    assert time.time() - t0 < 60
    # The client learns of the crash before the supervisor has read the server's last words: wait for the
    # restart to be recorded (a missed crash fails here), then for the new server.
    deadline = time.time() + 60
    while restarts() <= before and time.time() < deadline:
        time.sleep(0.5)
    assert restarts() > before, "the supervisor did not restart the crashed server"
    board.wait_ready(port, timeout=180)
    m = _remote(cross_libs["rpi4"], port)
    assert m(load_samples(test_npz, list(m.inputs))[0])[0].shape == (1, 16, 32)


def test_stopping_the_board_mid_run_is_a_clear_error(cross_libs, boards):
    """Last: stops the cortex-a76 board while a long timing run is under way."""
    from compiler.bench import bench_inputs
    from targets import board

    port = boards["cortex-a76"]
    m = _remote(cross_libs["rpi5"], port, timeout=60)
    feed = bench_inputs(m.manifest)
    stopper = threading.Timer(2.0, lambda: board.stop(port))
    stopper.start()
    t0 = time.time()
    with pytest.raises(IntformerError, match=f"127.0.0.1:{port}: timing the model (failed|: no answer)"):
        m.time(feed, 100000)
    assert time.time() - t0 < 60
    stopper.join(30)
    assert all(b.port != port for b in board.status())


def test_through_a_tracker(cross_libs, tiny_bert_lib):
    """A board registered with an RPC tracker under a key; the client asks the tracker for that key."""
    from compiler import api
    from targets import board
    from targets.remote import RemoteSpec

    require_tool("qemu-aarch64", "qemu-user")
    tport, bport = free_port(), free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                str(tport), "--port-end", str(tport + 1)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", tport), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "the tracker did not start"
                time.sleep(0.3)
        board.start(cpu="cortex-a76", port=bport, tracker=f"127.0.0.1:{tport}", key="emu-rpi5", log=lambda m: None)
        host, test_npz = _host_outputs(tiny_bert_lib)
        got = api.run(cross_libs["rpi5"], test_npz,
                      remote=RemoteSpec(tracker=f"127.0.0.1:{tport}", key="emu-rpi5", timeout=120))
        for name in host:
            np.testing.assert_array_equal(got[name], host[name])
        with pytest.raises(IntformerError, match="registered as 'no-such-key'"):
            api.run(cross_libs["rpi5"], test_npz,
                    remote=RemoteSpec(tracker=f"127.0.0.1:{tport}", key="no-such-key", timeout=3))
    finally:
        board.stop(bport)
        tracker.terminate()
        tracker.wait()
