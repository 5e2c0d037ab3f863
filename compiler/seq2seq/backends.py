"""Backends that run a seq2seq model's two graphs for decode.py, and how a path on the command line picks one.

``BACKENDS`` maps a kind to (recognizer, opener): a bundle folder runs on onnxruntime fp32 (the reference); the
compiled library registers its own entry (the integer encoder and decoder step in one ``.so``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Optional

import numpy as np

from compiler.errors import IntformerError
from compiler.seq2seq.spec import Seq2SeqSpec, is_bundle, load_spec


class OrtBackend:
    """A bundle folder's fp32 ONNX graphs on onnxruntime (CPU)."""

    def __init__(self, bundle_dir: str, threads: int = 1):
        import onnxruntime as ort

        self.spec: Seq2SeqSpec = load_spec(bundle_dir)
        self.folder = bundle_dir
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sessions = []
        for name in (self.spec.encoder, self.spec.decoder):
            path = os.path.join(bundle_dir, name)
            if not os.path.isfile(path):
                raise IntformerError(f"{bundle_dir}: {name} is missing (named in seq2seq.json)")
            sessions.append(ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]))
        self._enc, self._dec = sessions
        batch = self._enc.get_inputs()[0].shape[0]
        self.batch_size = batch if isinstance(batch, int) else 0  # 0: not static (decoding refuses it)
        self._enc_outputs = [o.name for o in self._enc.get_outputs()]
        self._dec_inputs = [i.name for i in self._dec.get_inputs()]
        self._dec_outputs = [o.name for o in self._dec.get_outputs()]

    @property
    def vocab_path(self) -> str:
        return os.path.join(self.folder, self.spec.vocab)

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> dict[str, np.ndarray]:
        outs = self._enc.run(self._enc_outputs, {"src_ids": src_ids, "src_mask": src_mask})
        return dict(zip(self._enc_outputs, outs))

    def step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._dec.run(self._dec_outputs, {n: inputs[n] for n in self._dec_inputs})
        return dict(zip(self._dec_outputs, outs))


def _open_library(path: str, threads: int, remote):
    """A compiled encoder-decoder library (both entry points in one .so, vocabulary in its manifest)."""
    try:
        from compiler.seq2seq.backend_tvm import CompiledBackend
    except ImportError:
        raise IntformerError(f"{path}: running compiled translation libraries needs the compiled-library "
                             "backend (compiler/seq2seq/backend_tvm.py), missing from this installation") from None
    return CompiledBackend(path, remote)


def _is_library(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".so")


# kind -> (does this path hold that kind?, open it: (path, threads, remote) -> a decode.Backend with a vocabulary)
BACKENDS: dict[str, tuple[Callable[[str], bool], Callable]] = {
    "bundle": (is_bundle, lambda path, threads, remote: _local_only(OrtBackend(path, threads), remote, "bundle")),
    "library": (_is_library, _open_library),
}


def _local_only(backend, remote, kind: str):
    if remote is not None:
        raise IntformerError(f"--rpc/--tracker: a {kind} runs here on onnxruntime; compile it for a device first")
    return backend


def open_backend(path: str, threads: int = 1, remote: Optional[object] = None):
    """The backend for a bundle folder or a compiled translation library."""
    if not os.path.exists(path):
        raise IntformerError(f"{path}: no such file or folder (give a compiled .so or a seq2seq bundle folder)")
    for recognizes, opener in BACKENDS.values():
        if recognizes(path):
            return opener(path, threads, remote)
    raise IntformerError(f"{path}: not a seq2seq bundle folder (no seq2seq.json) nor a compiled translation "
                         "library (make one with `intformer import-marian` / `intformer compile MODEL_DIR`)")
