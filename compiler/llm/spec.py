"""What a decoder-only LM library's manifest says about the model (its `llm` entry): the cache's shape, the
prefill chunk, the logits' scale and the tokenizer's files, so that `generate` and `perplexity` need only the
library. Imports no TVM (the runtime reads it on a board)."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from compiler.errors import IntformerError


@dataclass(frozen=True)
class LlmSpec:
    context: int  # cache positions: prompt + generated tokens
    chunk: int  # tokens per `prefill` call (shorter chunks are padded)
    vocab: int
    layers: int
    kv_heads: int
    head_dim: int
    logit_scale: float  # real logit = code * logit_scale
    eos: int | None
    model_type: str
    tokenizer: tuple[tuple[str, str], ...] = ()  # (file name, base64 bytes) of the saved tokenizer

    def cache_shape(self) -> tuple[int, int, int, int]:
        """The values' cache: (layers, KV heads, positions, head size)."""
        return (self.layers, self.kv_heads, self.context, self.head_dim)

    def keys_shape(self) -> tuple[int, int, int, int]:
        """The keys' cache, stored transposed (layers, KV heads, head size, positions): the scores' matmul reads
        it as it is (no transpose of the whole cache per step)."""
        return (self.layers, self.kv_heads, self.head_dim, self.context)

    def to_json(self) -> dict:
        return {"context": self.context, "chunk": self.chunk, "vocab": self.vocab, "layers": self.layers,
                "kv_heads": self.kv_heads, "head_dim": self.head_dim, "logit_scale": self.logit_scale,
                "eos": self.eos, "model_type": self.model_type, "tokenizer": dict(self.tokenizer)}

    @staticmethod
    def from_json(d: dict) -> LlmSpec:
        return LlmSpec(int(d["context"]), int(d["chunk"]), int(d["vocab"]), int(d["layers"]), int(d["kv_heads"]),
                       int(d["head_dim"]), float(d["logit_scale"]), None if d.get("eos") is None else int(d["eos"]),
                       str(d.get("model_type", "")), tuple(sorted((d.get("tokenizer") or {}).items())))


def pack_tokenizer(tokenizer, folder: str) -> tuple[tuple[str, str], ...]:
    """The tokenizer's files (save_pretrained into `folder`) as (name, base64) pairs."""
    tokenizer.save_pretrained(folder)
    out = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out.append((name, base64.b64encode(f.read()).decode("ascii")))
    return tuple(out)


def load_tokenizer(spec: LlmSpec, folder: str, where: str):
    """The tokenizer the library carries, written into `folder` and loaded with transformers."""
    if not spec.tokenizer:
        raise IntformerError(f"{where}: the library carries no tokenizer; recompile it with `intformer compile`")
    for name, data in spec.tokenizer:
        if os.path.basename(name) != name:
            raise IntformerError(f"{where}: the manifest names a tokenizer file outside its folder: {name!r}")
        with open(os.path.join(folder, name), "wb") as f:
            f.write(base64.b64decode(data))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # no "PyTorch was not found" without torch
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
