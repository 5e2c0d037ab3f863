"""The emulated aarch64 board: TVM's RPC server under qemu-user, on 127.0.0.1 only.

`start` sets the board up on first use (targets/board_setup.py), launches a detached supervisor and waits
until the RPC server listens. The supervisor (this module run as a script) restarts the server whenever
it dies or its listening thread dies: a session that crashes (e.g. SIGILL on an instruction the emulated
CPU lacks) otherwise leaves TVM's server accepting nothing. One board per port; state in `run/PORT.json`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

from compiler.errors import IntformerError
from targets.board_setup import BoardPaths, default_cache_dir, ensure_set_up, require_host_tools, write_python_wrapper

HOST = "127.0.0.1"  # the board listens on the loopback interface only
DEFAULT_PORT = 9090
DEFAULT_CPU = "cortex-a76"
START_TIMEOUT = 180.0  # seconds: two Python processes import TVM under emulation
READY_MARK = "bind to"  # TVM's server logs "bind to HOST:PORT" once it listens
# server log lines after which its listening loop is dead (it then accepts connections but never answers)
DEAD_MARKS = ("exited unsuccessfully", "Exception in thread")
MAX_FAST_RESTARTS = 5  # failures in a row without ever getting ready: give up


@dataclass(frozen=True)
class BoardInfo:
    port: int
    cpu: str
    supervisor_pid: int
    state: str  # starting | ready | restarting | failed
    restarts: int
    started: float
    log: str
    tracker: Optional[str] = None
    key: Optional[str] = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def _paths(cache_dir: Optional[str]) -> BoardPaths:
    return BoardPaths(cache_dir or default_cache_dir())


def _state_file(paths: BoardPaths, port: int) -> str:
    return os.path.join(paths.run_dir, f"{port}.json")


def _write_state(paths: BoardPaths, info: BoardInfo) -> None:
    os.makedirs(paths.run_dir, exist_ok=True)
    tmp = _state_file(paths, info.port) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(info), f)
    os.replace(tmp, _state_file(paths, info.port))


def _read_state(path: str) -> Optional[BoardInfo]:
    try:
        with open(path) as f:
            return BoardInfo(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def status(cache_dir: Optional[str] = None) -> list[BoardInfo]:
    """The boards whose supervisor runs; stale state files are removed."""
    paths = _paths(cache_dir)
    if not os.path.isdir(paths.run_dir):
        return []
    out = []
    for name in sorted(os.listdir(paths.run_dir)):
        if not name.endswith(".json"):
            continue
        info = _read_state(os.path.join(paths.run_dir, name))
        if info is None:
            continue
        if _alive(info.supervisor_pid):
            out.append(info)
        else:
            os.unlink(os.path.join(paths.run_dir, name))
    return out


def wait_ready(port: int, cache_dir: Optional[str] = None, timeout: float = START_TIMEOUT) -> BoardInfo:
    """Wait until the board on `port` listens (e.g. after the supervisor restarted a crashed server)."""
    deadline = time.time() + timeout
    while True:
        board = next((b for b in status(cache_dir) if b.port == port), None)
        if board is None or board.state == "failed":
            raise IntformerError(f"no board runs on port {port}" if board is None
                                 else f"the board on port {port} failed; see {board.log}")
        if board.state == "ready":
            return board
        if time.time() > deadline:
            raise IntformerError(f"the board on port {port} is not ready after {timeout:.0f} s; see {board.log}")
        time.sleep(0.3)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def start(cpu: str = DEFAULT_CPU, port: int = DEFAULT_PORT, cache_dir: Optional[str] = None,
          tracker: Optional[str] = None, key: Optional[str] = None, timeout: float = START_TIMEOUT,
          log=print) -> BoardInfo:
    """Start a board (set it up first if needed) and wait until its RPC server listens."""
    paths = _paths(cache_dir)
    running = {b.port: b for b in status(cache_dir)}
    if port in running:
        b = running[port]
        if b.cpu != cpu:
            raise IntformerError(f"a board with -cpu {b.cpu} already runs on port {port}; stop it first "
                                 f"(`intformer board stop --port {port}`) or choose another --port")
        return b
    if not _port_free(port):
        raise IntformerError(f"port {port} on {HOST} is in use by another program; choose another --port")
    if tracker and not key:
        raise IntformerError("--tracker needs --key (the device key clients will ask the tracker for)")
    if tracker:
        _check_reachable(tracker)
    require_host_tools()
    _check_cpu(cpu)
    ensure_set_up(paths, log=log)
    os.makedirs(paths.run_dir, exist_ok=True)
    log_path = os.path.join(paths.run_dir, f"{port}.log")
    project_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([project_root, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "targets.board", "--cache-dir", paths.root, "--cpu", cpu, "--port", str(port)]
    if tracker:
        cmd += ["--tracker", tracker, "--key", key]
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=project_root)
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _read_state(_state_file(paths, port))
        if info and info.supervisor_pid == proc.pid and info.state == "ready":
            return info
        if proc.poll() is not None or (info and info.state == "failed"):
            break
        time.sleep(0.3)
    else:
        _terminate(proc.pid)
        raise IntformerError(f"the board did not start within {timeout:.0f} s; see {log_path}")
    _terminate(proc.pid)
    raise IntformerError(f"the board failed to start; see {log_path}")


def _check_reachable(address: str) -> None:
    from targets.remote import parse_address

    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise IntformerError(f"tracker {address} does not answer ({e.strerror or e}); start it first, e.g. "
                             f"python -m tvm.exec.rpc_tracker --host {host} --port {port}") from None


def _check_cpu(cpu: str) -> None:
    out = subprocess.run(["qemu-aarch64", "-cpu", "help"], capture_output=True, text=True).stdout.split()
    if cpu not in out:
        names = [w for w in out if w != "Available" and not w.endswith(":")]
        raise IntformerError(f"qemu-aarch64 has no CPU '{cpu}'; it has: {', '.join(names)}")


def _terminate(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)  # the supervisor leads its own session
        except ProcessLookupError:
            pass


def stop(port: Optional[int] = None, cache_dir: Optional[str] = None) -> list[BoardInfo]:
    """Stop the board on `port` (all boards if None); returns the boards stopped."""
    paths = _paths(cache_dir)
    boards = [b for b in status(cache_dir) if port is None or b.port == port]
    for b in boards:
        _terminate(b.supervisor_pid)
        try:
            os.unlink(_state_file(paths, b.port))
        except FileNotFoundError:
            pass
    return boards


# ---- the supervisor (runs detached: python -m targets.board ...) ----

class _Supervisor:
    def __init__(self, paths: BoardPaths, cpu: str, port: int, tracker: Optional[str], key: Optional[str]):
        self.paths, self.cpu, self.port, self.tracker, self.key = paths, cpu, port, tracker, key
        self.server: Optional[subprocess.Popen] = None
        self.stopping = False
        self.info = BoardInfo(port, cpu, os.getpid(), "starting", 0, time.time(),
                              os.path.join(paths.run_dir, f"{port}.log"), tracker, key)

    def _set(self, **kw) -> None:
        from dataclasses import replace

        self.info = replace(self.info, **kw)
        _write_state(self.paths, self.info)

    def _server_cmd(self) -> list[str]:
        cmd = [write_python_wrapper(self.paths, self.cpu), "-m", "tvm.exec.rpc_server", "--host", HOST,
               "--port", str(self.port), "--port-end", str(self.port + 1)]
        if self.tracker:
            cmd += ["--tracker", self.tracker, "--key", self.key, "--custom-addr", HOST]
        return cmd

    def _kill_server(self) -> None:
        if self.server and self.server.poll() is None:
            try:
                os.killpg(self.server.pid, signal.SIGKILL)  # the server, its worker and session children
            except ProcessLookupError:
                pass
            self.server.wait()

    def _serve_once(self) -> bool:
        """Run the server until it dies or its loop dies; True if it got ready."""
        env = dict(os.environ, PYTHONPATH=self.paths.site, PYTHONUNBUFFERED="1")
        env.pop("PYTHONHOME", None)
        self.server = subprocess.Popen(self._server_cmd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env, start_new_session=True, text=True)
        ready = False
        for line in self.server.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if READY_MARK in line and not ready:
                ready = True
                self._set(state="ready")
            if any(m in line for m in DEAD_MARKS):
                print("[intformer board] the RPC server's session crashed; restarting it", flush=True)
                break
        self._kill_server()
        return ready

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        self._set(state="starting")
        failures = 0
        while not self.stopping:
            got_ready = self._serve_once()
            if self.stopping:
                break
            failures = 0 if got_ready else failures + 1
            if failures >= MAX_FAST_RESTARTS:
                self._set(state="failed")
                print(f"[intformer board] the RPC server failed {failures} times in a row; giving up", flush=True)
                return
            self._set(state="restarting", restarts=self.info.restarts + 1)
            time.sleep(0.5)

    def _on_term(self, signum, frame) -> None:
        self.stopping = True
        self._kill_server()
        try:
            os.unlink(_state_file(self.paths, self.port))
        except FileNotFoundError:
            pass
        sys.exit(0)


def _main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m targets.board", description="board supervisor (internal)")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--cpu", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tracker")
    p.add_argument("--key")
    a = p.parse_args(argv)
    _Supervisor(BoardPaths(a.cache_dir), a.cpu, a.port, a.tracker, a.key).run()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
