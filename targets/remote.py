"""TVM RPC to a device: a board's RPC server, direct or through a tracker (compiler/device.py runs a compiled
library over it; tuning_runner measures tuning candidates over it).

Every remote step has a time-out: TVM's RPC client blocks forever on a server that stopped answering
(a crashed emulated session leaves the server accepting and silent), so each step runs in a worker thread
and a step that overruns is a one-line IntformerError that names the address.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, TypeVar

from compiler.errors import IntformerError

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
