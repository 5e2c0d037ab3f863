"""A second held-out text set for the embeddings' accuracy: 300 English UI strings from Django's .po catalogs.

Short (2 to 25 words, about 7 tokens), unlike both the calibration text (BBC News) and accuracy.py's reviews.
Compares each library's sentence embeddings with onnxruntime fp32 on the export accuracy.py made (mean and worst
cosine, same nearest neighbour); Django is only read (its wheel's catalogs), never imported for anything else.

    python examples/embeddings/accuracy.py                       # exports, compiles out/default.so
    python examples/embeddings/ui_strings.py examples/embeddings/out/default.so [LIB ...]
"""

from __future__ import annotations

import glob
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "minilm"))

import heads  # noqa: E402
from accuracy import encode, metrics, nn_agreement, ort_run  # noqa: E402


def ui_strings(n: int = 300, seed: int = 0) -> list[str]:
    """n distinct msgids of Django's pt_BR catalogs with 2 to 25 words and no format placeholders."""
    import django

    base = os.path.dirname(django.__file__)
    found = set()
    for f in sorted(glob.glob(f"{base}/**/locale/pt_BR/LC_MESSAGES/django.po", recursive=True)):
        with open(f, encoding="utf-8") as fh:
            for m in re.finditer(r'^msgid "(.+)"$', fh.read(), re.M):
                t = m.group(1).replace('\\"', '"')
                if "%" not in t and "{" not in t and 2 <= len(t.split()) <= 25:
                    found.add(t)
    items = sorted(found)
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))[:n]]


def main() -> int:
    libs = sys.argv[1:]
    if not libs:
        print(__doc__)
        return 2
    from compiler.api import load

    texts = ui_strings()
    feeds = encode(heads.tokenizer(), texts, 128)
    n = len(texts)
    print(f"{n} UI strings, mean {feeds['attention_mask'].sum() / n:.1f} tokens")
    ref = ort_run(os.path.join(HERE, "out", "pooled.onnx"), feeds).reshape(n, -1)
    for lib in libs:
        model = load(lib)
        e = np.concatenate([model({k: v[i] for k, v in feeds.items()})[0] for i in range(n)]).reshape(n, -1)
        mean, worst, wi = metrics(e, ref)
        print(f"{os.path.basename(lib):24s} mean {mean:.5f}  worst {worst:.5f} ({texts[wi]!r})  "
              f"same nearest neighbour {nn_agreement(e, ref):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
