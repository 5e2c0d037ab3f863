"""A compiled library loaded where it runs: here (compiler/runtime.py's CompiledModel) or on a device over TVM
RPC (RemoteModel, the same interface; the connection and its time-outs are targets/remote.py's)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from compiler.io_safety import check_library
from compiler.runtime import CompiledModel
from targets.remote import RemoteSpec, call_with_timeout, connect

T = TypeVar("T")


def load_model(library: str, remote: RemoteSpec | None = None, entry: str = "") -> CompiledModel:
    """A loaded library (its entry point `entry` when it has several): here, or uploaded to the device `remote`."""
    if remote is not None:
        return RemoteModel(library, remote, entry=entry)
    return CompiledModel(library, entry=entry)


class RemoteModel(CompiledModel):
    """A library uploaded to a device and run there; the same interface as CompiledModel."""

    def __init__(self, path: str, spec: RemoteSpec, entry: str = "", share: RemoteModel | None = None):
        """share: another entry point's RemoteModel of the same library, whose session and upload this one
        uses (an RPC server serves one session at a time)."""
        self.spec = spec
        if share is None:
            check_library(path, local=False)  # a truncated or foreign file fails here, not on the device
            self.session = connect(spec)
            name = os.path.basename(path)
            module = self._remote(lambda: (self.session.upload(path), self.session.load_module(name))[1],
                                  f"uploading and loading {name}")
        else:
            self.session, module = share.session, share.module
        manifest = share.manifest if share is not None else None  # parsed once, not fetched again per entry
        self._remote(lambda: CompiledModel.__init__(self, path, device=self.session.cpu(), module=module, entry=entry,
                                                    manifest=manifest), "starting the VM")

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
