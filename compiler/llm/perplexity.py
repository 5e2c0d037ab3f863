"""The perplexity protocol of issue 15, for any model that maps a token sequence to its logits.

Each line of the text is one document, tokenized with no special tokens added and truncated to max_len tokens;
every token after the first is predicted from the tokens before it (one forward over the document, causal);
perplexity = exp(total negative log-likelihood / number of predicted tokens). Documents of fewer than two tokens
predict nothing and so do not count."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_LEN = 128


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    tokens: int  # the number of predicted tokens
    nll: float  # their total negative log-likelihood (nats)
    documents: int

    def to_json(self) -> dict:
        return {"ppl": self.ppl, "tokens": self.tokens}


def read_documents(path: str) -> list[str]:
    """One document per line (the line ending removed, nothing else)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return [ln.rstrip("\r\n") for ln in f]


def document_tokens(tokenizer, text: str, max_len: int = DEFAULT_MAX_LEN) -> list[int]:
    """The protocol's tokenization: no special tokens added, truncated to max_len."""
    return list(tokenizer.encode(text, add_special_tokens=False))[:max_len]


def sequence_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Sum over t >= 1 of -log softmax(logits[t - 1])[ids[t]], in float64 (logits: (len, vocab))."""
    z = np.asarray(logits, dtype=np.float64)[:-1]
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    return float(-np.sum(logp[np.arange(len(ids) - 1), np.asarray(ids)[1:]]))


def perplexity(documents: Iterable[str], tokenizer, logits_fn: Callable[[np.ndarray], np.ndarray],
               max_len: int = DEFAULT_MAX_LEN) -> Perplexity:
    """logits_fn(ids int32 (len,)) -> logits (len, vocab) of one causal forward over a whole document."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 (one token predicted), got {max_len}")
    nll, tokens, docs = 0.0, 0, 0
    for text in documents:
        ids = document_tokens(tokenizer, text, max_len)
        if len(ids) < 2:
            continue
        ids = np.asarray(ids, dtype=np.int32)
        nll += sequence_nll(logits_fn(ids), ids)
        tokens += len(ids) - 1
        docs += 1
    if tokens == 0:
        raise ValueError("no document has two tokens: nothing to predict")
    return Perplexity(math.exp(nll / tokens), tokens, nll, docs)
