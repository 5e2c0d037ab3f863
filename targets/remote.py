"""Run a compiled library on a device over TVM RPC: a board's RPC server, direct or through a tracker.

Every remote step has a time-out: TVM's RPC client blocks forever on a server that stopped answering
(a crashed emulated session leaves the server accepting and silent), so each step runs in a worker thread
and a step that overruns is a one-line IntformerError that names the address.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import numpy as np

from compiler.errors import IntformerError
from compiler.io_safety import check_library
from compiler.runtime import CompiledModel

T = TypeVar("T")
DEFAULT_TIMEOUT = 300.0  # seconds per remote step (upload, load, one inference, one timing batch)


@dataclass(frozen=True)
class RemoteSpec:
    """Where to run: `rpc` (HOST:PORT of an RPC server) or `tracker` (HOST:PORT) with a device `key`."""

    rpc: Optional[str] = None
    tracker: Optional[str] = None
    key: Optional[str] = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self):
        if bool(self.rpc) == bool(self.tracker):
            raise IntformerError("give --rpc HOST:PORT or --tracker HOST:PORT --key KEY (one of them)")
        if self.tracker and not self.key:
            raise IntformerError("--tracker needs --key (the device key the board registered with)")
        parse_address(self.rpc or self.tracker)
        if self.timeout <= 0:
            raise IntformerError(f"--timeout must be positive, not {self.timeout}")

    @property
    def where(self) -> str:
        return self.rpc if self.rpc else f"tracker {self.tracker} key '{self.key}'"


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise IntformerError(f"'{text}' is not an address; give HOST:PORT, e.g. 127.0.0.1:9090")
    return host, int(port)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    # TVM errors end with the meaningful line ("... code=kShutdown", "Connect to ... failed")
    return lines[-1] if lines else type(e).__name__


BOARD_HINT = ("the device stopped answering; restart it, e.g. `intformer board stop && intformer board start`, "
              "or raise --timeout")


def call_with_timeout(fn: Callable[[], T], seconds: float, what: str, where: str, hint: str = BOARD_HINT) -> T:
    """fn() in a daemon thread; an overrun or a TVM failure is an IntformerError naming `what` and `where`."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name=f"intformer-rpc-{what}", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise IntformerError(f"{where}: {what}: no answer within {seconds:g} s ({hint})")
    if "error" in box:
        e = box["error"]
        if isinstance(e, IntformerError):
            raise e
        msg = _first_line(e)
        if "kShutdown" in msg or "Broken pipe" in msg or "Connection reset" in msg or "closed" in msg.lower():
            msg = "the connection was closed by the device (the board was stopped or its session crashed)"
        elif "Connect to" in msg or "Connection refused" in msg or "Failed to connect" in msg:
            msg = "nothing answers there (is the RPC server or board running? `intformer board status`)"
        raise IntformerError(f"{where}: {what} failed: {msg}") from None
    return box["value"]


def connect(spec: RemoteSpec):
    """An RPC session (tvm.rpc.RPCSession) to the device."""
    from compiler.tvm_compat import rpc_connect, rpc_connect_tracker

    if spec.rpc:
        host, port = parse_address(spec.rpc)
        return call_with_timeout(lambda: rpc_connect(host, port), spec.timeout, "connecting", spec.where)
    host, port = parse_address(spec.tracker)
    hint = (f"is the tracker up, and is a device registered as '{spec.key}' and free? "
            f"`python -m tvm.exec.query_rpc_tracker --host {host} --port {port}` lists them")
    return call_with_timeout(lambda: rpc_connect_tracker(host, port).request(spec.key, max_retry=1),
                             spec.timeout, "requesting a device", spec.where, hint)


class RemoteModel(CompiledModel):
    """A library uploaded to a device and run there; the same interface as CompiledModel."""

    def __init__(self, path: str, spec: RemoteSpec, entry: str = ""):
        check_library(path, local=False)  # a truncated or foreign file fails here, not on the device
        self.spec = spec
        self.session = connect(spec)
        name = os.path.basename(path)
        module = self._remote(lambda: (self.session.upload(path), self.session.load_module(name))[1],
                              f"uploading and loading {name}")
        self._remote(lambda: CompiledModel.__init__(self, path, device=self.session.cpu(), module=module, entry=entry),
                     "starting the VM")

    def _remote(self, fn: Callable[[], T], what: str) -> T:
        return call_with_timeout(fn, self.spec.timeout, what, self.spec.where)

    def set_threads(self, threads: int) -> None:
        """Size the device's thread pool (0: all its cores)."""
        f = self.session.get_function("runtime.config_threadpool")
        self._remote(lambda: f(0, threads), "setting the thread count")

    def _set_inputs(self, feed: dict[str, np.ndarray]) -> None:
        import tvm.runtime as rt

        self.check(feed)
        args = [rt.tensor(np.ascontiguousarray(feed[s.name], dtype=s.dtype), self.device) for s in self.inputs]
        # the stateful calls move tensors one by one: RPC cannot return a tuple of remote tensors
        self._vm.set_input(self.entry, *args)

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        def run():
            self._set_inputs(feed)
            self._vm.invoke_stateful(self.entry)
            entry, get = self.entry, self._vm["get_output"]
            arity = self._vm["get_output_arity"](entry)
            if arity == -1:  # a single tensor
                return [get(entry).numpy()]
            return [get(entry, i).numpy() for i in range(arity)]

        return self._remote(run, "running the model")

    def time(self, feed: dict[str, np.ndarray], repeats: int) -> list[float]:
        """Seconds per inference, `repeats` samples, timed on the device (one warm-up run first)."""
        def timed():
            self._set_inputs(feed)
            f = self._vm.time_evaluator("invoke_stateful", self.device, number=1, repeat=repeats)
            return list(f(self.entry).results)

        return self._remote(timed, "timing the model")


# --- Tuning on a device: MetaSchedule's RPC runner, connected directly or through a tracker. ---


def _tuning_session(rpc_config, address: str, timeout: float):
    """f_create_session of the RPC runner (runs in its worker process): a direct connection to the board's
    server, or the tracker's session when ``address`` is empty."""
    if not address:
        return rpc_config.connect_server()
    from compiler.tvm_compat import rpc_connect

    host, port = parse_address(address)
    return rpc_connect(host, port, session_timeout=timeout)


def tuning_runner(spec: RemoteSpec, number: int = 3):
    """A MetaSchedule runner that times tuning candidates on the device of ``spec`` (candidates are built here,
    with the target's cross compiler, and uploaded)."""
    import functools

    from compiler.tvm_compat import meta_schedule as ms

    if spec.tracker:
        host, port = parse_address(spec.tracker)
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=spec.key,
                                     session_timeout_sec=int(spec.timeout))
    else:  # RPCConfig insists on tracker fields; the session function below ignores them
        host, port = parse_address(spec.rpc)
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct",
                                     session_timeout_sec=int(spec.timeout))
    create = functools.partial(_tuning_session, address=spec.rpc or "", timeout=spec.timeout)
    return ms.runner.RPCRunner(
        rpc_config=config, evaluator_config=ms.runner.EvaluatorConfig(number=number, repeat=1, min_repeat_ms=0),
        f_create_session=create, max_workers=1)
