"""Greedy decoding with a prefill and then one decode step per token through a cache: the loop `generate` will
run, here over any `step(ids, positions) -> logits` (the integer reference against its int8 KV cache, or the
fp32 reference against its float cache)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def greedy(step: Callable[[np.ndarray, np.ndarray], np.ndarray], prompt: list[int], new_tokens: int,
           eos: int | None = None) -> list[int]:
    """The prompt as one prefill chunk, then each chosen token as one decode step at its position."""
    if not prompt:
        raise ValueError("greedy decoding needs a prompt of at least one token")
    ids = np.asarray(prompt, dtype=np.int32)
    logits = step(ids, np.arange(len(ids), dtype=np.int32))
    out: list[int] = []
    pos = len(ids)
    for _ in range(new_tokens):
        tok = int(np.argmax(logits[-1]))
        out.append(tok)
        if tok == eos or len(out) == new_tokens:
            break
        logits = step(np.array([tok], np.int32), np.array([pos], np.int32))
        pos += 1
    return out


def agreement(a: list[int], b: list[int]) -> int:
    """How many leading tokens two generations share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
