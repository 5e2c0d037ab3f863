"""Calibration of an integer LLaMA: real prefill and decode steps of the fp32 reference on text, recording the
per-channel minimum and maximum of every tensor the integer model quantizes. Per-channel statistics let the
smoothing factors be chosen afterwards and the smoothed tensors' ranges be derived without a second pass
(smoothing divides channels by positive constants)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compiler.llm.fp32 import Fp32Llama
from compiler.llm.weights import LlamaWeights

SAMPLED = ("attn_in", "attn_out", "ffn_in", "ffn_mid", "final")  # the inputs of smoothed matmuls
SAMPLE_ROWS = 512  # rows kept per sampled tensor (a deterministic subsample of every recorded row)
UNRECORDED = ("probs",)  # attention probabilities: fixed scale (1/255), rows of varying length
DECODE_STEPS = 8  # per document: the last tokens go through the cache one at a time, the rest as one prefill


@dataclass
class Ranges:
    """(name, layer) -> per-channel min and max over every recorded token. Tensors of shape (heads, seq, d) are
    recorded as (seq, heads * d)."""

    lo: dict = field(default_factory=dict)
    hi: dict = field(default_factory=dict)
    tokens: int = 0
    rows: dict = field(default_factory=dict)  # (name, layer) -> list of float32 row blocks (SAMPLED names)

    def record(self, name: str, layer: int, x: np.ndarray) -> None:
        if name in UNRECORDED:
            return
        if x.ndim == 3:
            x = x.transpose(1, 0, 2).reshape(x.shape[1], -1)
        key = (name, layer)
        lo, hi = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
        if key in self.lo:
            lo, hi = np.minimum(lo, self.lo[key]), np.maximum(hi, self.hi[key])
        self.lo[key], self.hi[key] = lo, hi
        if name in SAMPLED:
            self.rows.setdefault(key, []).append(x.astype(np.float32))

    def samples(self, name: str, layer: int, n: int = SAMPLE_ROWS) -> np.ndarray | None:
        """Up to n recorded rows of a SAMPLED tensor, evenly spread over all of them, always with the row of the
        largest magnitude (the rare tokens with massive activations decide the ranges)."""
        blocks = self.rows.get((name, layer))
        if not blocks:
            return None
        x = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        self.rows[(name, layer)] = [x]
        if len(x) <= n:
            return x
        keep = set(np.linspace(0, len(x) - 1, n - 1).round().astype(int).tolist())
        keep.add(int(np.abs(x).max(axis=1).argmax()))
        return x[sorted(keep)]

    def absmax(self, name: str, layer: int) -> np.ndarray:
        """Per channel."""
        return np.maximum(np.abs(self.lo[(name, layer)]), np.abs(self.hi[(name, layer)]))

    def names(self, name: str) -> list:
        return [k for k in self.lo if k[0] == name]


def calibrate(w: LlamaWeights, documents: list[np.ndarray], decode_steps: int = DECODE_STEPS) -> Ranges:
    """Run each token document (int ids) through the fp32 reference: its first tokens as one prefill chunk, its
    last `decode_steps` tokens one decode step at a time from the cache."""
    ranges = Ranges()
    max_len = max((len(d) for d in documents), default=1)
    ref = Fp32Llama(w, max_len, record=ranges.record)
    for ids in documents:
        ids = np.asarray(ids, dtype=np.int32)
        if len(ids) == 0:
            continue
        ref.reset()
        split = max(len(ids) - decode_steps, 1)
        ref.forward(ids[:split], np.arange(split, dtype=np.int32))
        for t in range(split, len(ids)):
            ref.forward(ids[t:t + 1], np.array([t], np.int32))
        ranges.tokens += len(ids)
    if not ranges.tokens:
        raise ValueError("calibration needs at least one token")
    return ranges
