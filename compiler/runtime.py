"""Load and run a compiled intformer library with the TVM runtime alone (no compiler imports).

This is all a deployment needs: `tvm.runtime`, NumPy and this file's imports (artifact, config, errors,
io_safety, progress).
"""

from __future__ import annotations

import json

import numpy as np

from compiler.artifact import MANIFEST_FUNC, Manifest
from compiler.errors import IntformerError
from compiler.io_safety import check_cpu_features, check_library
from compiler.progress import warn


class CompiledModel:
    """A loaded library: `model(feed) -> list of output arrays`."""

    def __init__(self, path: str, device=None, module=None, entry: str = ""):
        sidecar, module_given = None, module
        if module is None:  # checked before mapping it (a truncated file would die with SIGBUS) and before
            sidecar = check_library(path)  # importing TVM (seconds)
        import tvm.runtime as rt

        if module is None:
            try:
                module = rt.load_module(path)
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise IntformerError(f"{path}: not a loadable compiled library ({first})") from None
        self.path = path
        self.module = module  # the loaded library (another entry point of it: CompiledModel(..., module=...))
        self.device = device if device is not None else rt.cpu()
        self._pinned: dict = {}  # input name -> (read-only array, its device tensor)
        try:
            self._vm = rt.vm.VirtualMachine(module, self.device)
            text = str(self._vm[MANIFEST_FUNC]())
            self.manifest = Manifest.from_json(json.loads(text))
        except Exception:
            raise IntformerError(f"{path}: a shared library but not an intformer model (no embedded manifest); "
                                 "give the .so `intformer compile` wrote") from None
        if module_given is None and sidecar is None:  # no manifest beside it: the embedded one names the target
            check_cpu_features(path, self.manifest.target)
        if sidecar is not None and sidecar.get("model_sha256") != self.manifest.model_sha256:
            warn(f"{path}.manifest.json describes another build (model sha256 "
                   f"{str(sidecar.get('model_sha256'))[:12]}, the library's is {self.manifest.model_sha256[:12]}); "
                   "the embedded manifest is used")
        self.entry = entry or self.manifest.entry
        if entry:  # one entry point of a library with several (a seq2seq library's encoder or decoder)
            try:
                spec = self.manifest.entry_spec(entry)
            except KeyError as e:
                raise IntformerError(f"{path}: {e.args[0]}") from None
            self._io = (spec.inputs, spec.outputs, {b.name: [b.lo, b.hi] for b in spec.input_bounds})
        else:
            self._io = (self.manifest.inputs, self.manifest.outputs, self.manifest.input_bounds or {})
        self._fn = self._vm[self.entry]

    def check(self, feed: dict[str, np.ndarray]) -> None:
        """Names, shapes and index ranges of one sample: ids outside an embedding table would read out of
        bounds in the compiled gather, so they are an error here."""
        for s in self.inputs:
            if s.name not in feed:
                raise IntformerError(f"missing input '{s.name}'; the library takes {[i.name for i in self.inputs]}")
            a = feed[s.name]
            if tuple(np.shape(a)) != s.shape and not (s.ranges and s.accepts(np.shape(a))):
                raise IntformerError(f"input '{s.name}' has shape {tuple(np.shape(a))}, the library was compiled "
                                     f"for {s.shape_text() if s.ranges else s.shape}")
            bounds = self._io[2].get(s.name)
            if bounds and np.size(a) and (np.min(a) < bounds[0] or np.max(a) > bounds[1]):
                raise IntformerError(f"input '{s.name}' has values out of range [{bounds[0]}, {bounds[1]}] "
                                     f"(min {np.min(a)}, max {np.max(a)}): the model's table has {bounds[1] + 1} rows")

    @property
    def inputs(self):
        return self._io[0]

    @property
    def outputs(self):
        return self._io[1]

    def _device_tensor(self, spec, value, rt):
        """The input on the device. A read-only array passed again (the same object: a decoder's encoder outputs
        and source mask, step after step) is uploaded once; anything writable is uploaded on every call."""
        hit = self._pinned.get(spec.name)
        if hit is not None and hit[0] is value:
            return hit[1]
        t = rt.tensor(np.ascontiguousarray(value, dtype=spec.dtype), self.device)
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            self._pinned[spec.name] = (value, t)
        else:
            self._pinned.pop(spec.name, None)
        return t

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import tvm.runtime as rt

        self.check(feed)
        args = [self._device_tensor(s, feed[s.name], rt) for s in self.inputs]
        out = self._fn(*args)
        outs = [out] if hasattr(out, "numpy") else list(out)
        if self._local_cpu():  # zero-copy views (each keeps its tensor alive): a decoder step's 32000-wide
            return [np.from_dlpack(o) for o in outs]  # log-probabilities cost ~0.1 ms to copy
        return [o.numpy() for o in outs]

    def _local_cpu(self) -> bool:
        """The device is this process's CPU (not a board over RPC: those tensors must be copied over)."""
        try:
            return int(self.device.dlpack_device_type()) == 1  # kDLCPU; RPC devices carry a session mask
        except (AttributeError, TypeError, ValueError):
            return False
