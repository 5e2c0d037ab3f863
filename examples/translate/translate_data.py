"""Real English -> Brazilian Portuguese sentence pairs from Django's translation catalogs (PyPI ``django``).

Each ``pt_BR/LC_MESSAGES/*.po`` catalog pairs an English ``msgid`` with its translation ``msgstr``. Kept: entries
that are not fuzzy, not plural, not format-heavy (no ``%(name)s``/``%s``/``{x}`` placeholders, no HTML, no
newlines), at least ``min_words`` words long; deduplicated by source text. A fixed split gives calibration
sentences (sources only) and a held-out test set.
"""

from __future__ import annotations

import ast
import glob
import importlib.util
import os
import re

import numpy as np

_FORMAT = re.compile(r"%(\([^)]*\))?[-#0 +]*\d*(\.\d+)?[sdifrxXeEgGc%]|\{[^}]*\}|<[^>]+>|\\n|\n|\t")


def _unquote(s: str) -> str:
    return ast.literal_eval(s) if s.startswith('"') else ""


def parse_po(path: str) -> list[dict]:
    """Entries of a .po file (blocks separated by blank lines): {'flags': set, 'msgctxt', 'msgid',
    'msgid_plural', 'msgstr': [str, ...]}; obsolete (``#~``) entries are skipped."""
    with open(path, encoding="utf-8") as f:
        blocks = re.split(r"\n\s*\n", f.read())
    entries = []
    for block in blocks:
        entry: dict = {"flags": set(), "msgstr": []}
        key = None
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("#,"):
                entry["flags"].update(x.strip() for x in line[2:].split(","))
                continue
            m = re.match(r"(msgctxt|msgid_plural|msgid|msgstr(?:\[\d+\])?)\s+(\".*\")$", line)
            if m:
                key = m.group(1)
                if key.startswith("msgstr"):
                    entry["msgstr"].append(_unquote(m.group(2)))
                else:
                    entry[key] = _unquote(m.group(2))
            elif line.startswith('"') and key is not None:
                if key.startswith("msgstr"):
                    entry["msgstr"][-1] += _unquote(line)
                else:
                    entry[key] += _unquote(line)
        if "msgid" in entry:
            entries.append(entry)
    return entries


def django_catalogs(lang: str = "pt_BR") -> list[str]:
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.origin:
        raise SystemExit("the Django package is needed for the en->pt_BR pairs: pip install django")
    root = os.path.dirname(spec.origin)
    return sorted(glob.glob(os.path.join(root, "**", lang, "LC_MESSAGES", "*.po"), recursive=True))


def django_pairs(lang: str = "pt_BR", min_words: int = 3) -> list[tuple[str, str]]:
    """(English, translation) pairs, deduplicated by English text, in catalog order."""
    seen, pairs = set(), []
    for path in django_catalogs(lang):
        for e in parse_po(path):
            src, tgt = e.get("msgid", ""), (e.get("msgstr") or [""])
            if ("fuzzy" in e["flags"] or "msgid_plural" in e or len(tgt) != 1 or not src or not tgt[0]
                    or _FORMAT.search(src) or _FORMAT.search(tgt[0]) or len(src.split()) < min_words):
                continue
            src, t = " ".join(src.split()), " ".join(tgt[0].split())
            if src in seen:
                continue
            seen.add(src)
            pairs.append((src, t))
    return pairs


def split_pairs(pairs: list, n_test: int, seed: int = 0) -> tuple[list, list]:
    """(calibration, held-out test): a fixed random split, test first n_test of the permutation."""
    idx = np.random.default_rng(seed).permutation(len(pairs))
    test = [pairs[i] for i in sorted(idx[:n_test])]
    calib = [pairs[i] for i in sorted(idx[n_test:])]
    return calib, test
