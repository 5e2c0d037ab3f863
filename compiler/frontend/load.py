"""Load an ONNX file with errors that name the file and the fix."""

from __future__ import annotations

import hashlib
import os

import onnx

from compiler.errors import IntformerError


def load_onnx(path: str) -> onnx.ModelProto:
    """Read and check an ONNX model (external data beside it is loaded too)."""
    if not os.path.exists(path):
        raise IntformerError(f"{path}: no such file")
    if os.path.isdir(path):
        raise IntformerError(f"{path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(path, load_external_data=True)
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise IntformerError(f"{path}: not a readable ONNX model ({first})") from None
    if not model.graph.node:
        raise IntformerError(f"{path}: not an ONNX model (no graph nodes found)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise IntformerError(f"{path}: invalid ONNX model: {first}") from None
    return model


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
