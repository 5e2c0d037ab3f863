"""Load and run a compiled intformer library with the TVM runtime alone (no compiler imports).

This is all a deployment needs: `tvm.runtime`, NumPy and this file's imports (artifact, config, errors,
io_safety, progress).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import numpy as np

from compiler.artifact import MANIFEST_FUNC, Manifest
from compiler.errors import IntformerError
from compiler.io_safety import check_cpu_features, check_library
from compiler.progress import warn

_runtime_only = False  # import_runtime_only took effect: this process runs libraries only


@contextlib.contextmanager
def _torch_hidden():
    """`import torch` raises ImportError inside (a library probing for it goes on without it)."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None
    try:
        yield
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


def import_runtime_only() -> None:
    """In a process that only runs libraries on this machine (generate, perplexity, a benchmark), import TVM's
    runtime alone, before anything else imports TVM: the runtime library (3 MB) without the compiler's (260 MB,
    mapped and partly resident: `TVM_USE_RUNTIME_LIB=1`, read by tvm/base.py when TVM is first imported), and
    without torch, which tvm_ffi imports at its import for DLPack exchange with torch tensors (150 MB resident;
    intformer passes NumPy arrays only). Together about 300 MB of the resident set of a decoding process.
    A no-op once TVM is imported (the compiler's full TVM serves the runtime as well). The compiler cannot be
    imported afterwards in this process, nor RPC (compiler/tvm_compat.py): the caller knows it needs neither.
    (The runtime loader names TVM's runtime API itself: it does not import tvm_compat, which needs the compiler.)"""
    global _runtime_only
    if "tvm" in sys.modules:
        return
    saved = os.environ.get("TVM_USE_RUNTIME_LIB")
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    try:
        with _torch_hidden():
            import tvm.runtime.vm  # noqa: F401  (runtime-only TVM does not import its vm module by itself)
    finally:
        if saved is None:
            del os.environ["TVM_USE_RUNTIME_LIB"]
        else:
            os.environ["TVM_USE_RUNTIME_LIB"] = saved
    _runtime_only = True


def without_torch_if_runtime_only():
    """The context in which a runtime-only process (import_runtime_only) loads other libraries, so that they
    do not import torch either (transformers' tokenizers work without it; its models import it)."""
    return _torch_hidden() if _runtime_only else contextlib.nullcontext()


MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now (clean file pages are dropped, refaulted if read)


def release_read_only_pages(path: str) -> int:
    """Hand back to the kernel the read-only, non-executable pages of the loaded library `path` (bytes asked).

    Loading a library reads its serialized module (the VM's code and constants: the weights) through the
    mapping and copies the constants out, so the whole data segment stays resident, a second copy of the weights.
    Those pages are clean: released, they are read again from the file if ever touched (they are not: the copies
    serve). Code and writable pages are left alone. Linux only; elsewhere, or if madvise refuses, nothing
    happens (the pages are then reclaimed under memory pressure, as any clean page is)."""
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    try:
        real = os.path.realpath(path)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        asked = 0
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or parts[5].strip() != real or parts[1] != "r--p":
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if libc.madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
                    asked += hi - lo
        return asked
    except (OSError, AttributeError, ValueError):
        return 0


MAX_STAGING = 256  # reused input tensors per model, one per (input, shape): a ranged library's shapes


class CompiledModel:
    """A loaded library: `model(feed) -> list of output arrays`."""

    def __init__(self, path: str, device=None, module=None, entry: str = "", manifest: Manifest | None = None):
        """module: the loaded library (another entry point of it); manifest: its manifest, read already (a
        language model's carries its tokenizer: megabytes of JSON, not parsed again per entry point)."""
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
            release_read_only_pages(path)
        self.path = path
        self.module = module  # the loaded library (another entry point of it: CompiledModel(..., module=...))
        self.device = device if device is not None else rt.cpu()
        self._pinned: dict = {}  # input name -> (read-only array, its device tensor)
        self._aliases: dict = {}  # input name -> (array, the device tensor whose memory it views)
        self._staging: dict = {}  # (input name, shape) -> (device tensor, a NumPy view of it): local CPU only
        try:
            self._vm = rt.vm.VirtualMachine(module, self.device)
            self.manifest = manifest if manifest is not None else Manifest.from_json(
                json.loads(str(self._vm[MANIFEST_FUNC]())))
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
        # per input: its spec, its index bounds, the shapes in its ranges seen already (check, per call)
        self._checks = [(spec, self._io[2].get(spec.name), set()) for spec in self._io[0]]
        self._local = self._local_cpu()

    def check(self, feed: dict[str, np.ndarray]) -> None:
        """Names, shapes and index ranges of one sample: ids outside an embedding table would read out of
        bounds in the compiled gather, so they are an error here. (Per call: a few microseconds, a 16-token
        sentence's call takes a millisecond: shapes once accepted are remembered, bounds read with the array's
        own min / max.)"""
        for s, bounds, accepted in self._checks:
            if s.name not in feed:
                raise IntformerError(f"missing input '{s.name}'; the library takes {[i.name for i in self.inputs]}")
            a = feed[s.name]
            shape = a.shape if isinstance(a, np.ndarray) else tuple(np.shape(a))
            if shape != s.shape and shape not in accepted:
                if not (s.ranges and s.accepts(shape)):
                    raise IntformerError(f"input '{s.name}' has shape {shape}, the library was compiled "
                                         f"for {s.shape_text() if s.ranges else s.shape}")
                if len(accepted) < MAX_STAGING:
                    accepted.add(shape)
            if bounds and np.size(a):
                a = a if isinstance(a, np.ndarray) else np.asarray(a)
                lo, hi = a.min(), a.max()
                if lo < bounds[0] or hi > bounds[1]:
                    raise IntformerError(f"input '{s.name}' has values out of range [{bounds[0]}, {bounds[1]}] "
                                         f"(min {lo}, max {hi}): the model's table has {bounds[1] + 1} rows")

    @property
    def inputs(self):
        return self._io[0]

    @property
    def outputs(self):
        return self._io[1]

    def alias_input(self, name: str, array: np.ndarray, tensor) -> None:
        """Pass `tensor` for input `name` whenever the feed gives `array` itself, `array` being a view of the
        tensor's memory (device_view): a state the caller updates in place (an LM's KV cache) then costs no copy
        per call."""
        self._aliases[name] = (array, tensor)

    def _device_tensor(self, spec, value, rt, staged: list):
        """The input on the device. A read-only array passed again (the same object: a decoder's encoder outputs
        and source mask, step after step) is uploaded once; anything writable is uploaded on every call, but for
        an aliased array (alias_input), whose device tensor is its own memory. A reused staging tensor's NumPy
        view is appended to `staged`."""
        alias = self._aliases.get(spec.name)
        if alias is not None and alias[0] is value:
            return alias[1]
        hit = self._pinned.get(spec.name)
        if hit is not None and hit[0] is value:
            return hit[1]
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            t = rt.tensor(np.ascontiguousarray(value, dtype=spec.dtype), self.device)
            self._pinned[spec.name] = (value, t)
            return t
        self._pinned.pop(spec.name, None)
        if not self._local:
            return rt.tensor(np.ascontiguousarray(value, dtype=spec.dtype), self.device)
        # a tensor per (input, shape), reused: a new one per call cost ~0.1-0.2 ms a call (measured on a
        # 300-text workload, Zen 4), a copy into its memory ~1 us
        key = (spec.name, np.shape(value))
        hit = self._staging.get(key)
        if hit is None:
            if len(self._staging) >= MAX_STAGING:
                self._staging.clear()
            hit = self._staging[key] = self.device_view(np.shape(value), spec.dtype)
        hit[1][...] = value
        staged.append(hit[1])
        return hit[0]

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import tvm.runtime as rt

        self.check(feed)
        staged = []  # the reused input tensors this call writes, as NumPy views
        out = self._fn(*[self._device_tensor(s, feed[s.name], rt, staged) for s in self.inputs])
        outs = [out] if hasattr(out, "numpy") else list(out)
        if self._local:  # zero-copy views (each keeps its tensor alive): a decoder step's 32000-wide
            # log-probabilities cost ~0.1 ms to copy; an output sharing memory with a reused input tensor (the
            # input itself, a reshape of it) is copied: the next call writes there
            arrays = [np.from_dlpack(o) for o in outs]
            return [a.copy() if any(np.may_share_memory(a, v) for v in staged) else a for a in arrays]
        return [o.numpy() for o in outs]

    def device_view(self, shape: tuple, dtype: str):
        """(a zeroed tensor on this model's device, a writable NumPy view of its memory) on the local CPU, else
        None (a remote device's memory is not this process's)."""
        if not self._local_cpu():
            return None
        import tvm.runtime as rt

        tensor = rt.empty(shape, dtype, self.device)
        view = np.from_dlpack(tensor)
        view[...] = 0
        return tensor, view

    def _local_cpu(self) -> bool:
        """The device is this process's CPU (not a board over RPC: those tensors must be copied over)."""
        try:
            return int(self.device.dlpack_device_type()) == 1  # kDLCPU; RPC devices carry a session mask
        except (AttributeError, TypeError, ValueError):
            return False
