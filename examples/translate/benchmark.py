"""Translation benchmark (a script that prints figures, not a test): on the held-out Django sentences, BLEU,
sentences per second and ms per target token of intformer's integer library against onnxruntime fp32 (the
imported bundle) and onnxruntime int8 (`quantize_dynamic` of the same two graphs), 1 and 2 threads, in one run.

    PYTHONPATH=. python examples/translate/benchmark.py --library enpt.so [--bundle BUNDLE] [--threads 1 2]

The bundle must have the library's shapes (batch, source and target lengths); by default the package's en->pt
model is imported at the shapes `intformer compile MODEL_DIR` uses (batch 8, S 64, T 128). Each configuration runs
in its own process (TVM's thread pool size is fixed when it starts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def quantized_bundle(bundle: str, out: str) -> str:
    """A copy of the bundle whose two graphs are onnxruntime `quantize_dynamic` int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compiler.seq2seq.spec import load_spec

    if os.path.isdir(out):
        return out
    shutil.copytree(bundle, out)
    spec = load_spec(bundle)
    for graph in (spec.encoder, spec.decoder):
        quantize_dynamic(os.path.join(bundle, graph), os.path.join(out, graph), weight_type=QuantType.QInt8)
    return out


def run_one(model: str, threads: int, direction: str) -> dict:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), INTFORMER_QUIET="1",
               PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "evaluate_bleu.py"), "--model", model, "--threads",
                           str(threads), "--direction", direction], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{model}, {threads} thread(s) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def main() -> int:
    sys.path.insert(0, ROOT)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", required=True, help="the compiled library (intformer compile MODEL_DIR ...)")
    ap.add_argument("--bundle", help="fp32 bundle of the same shapes (default: import the package's model)")
    ap.add_argument("--direction", default="en-pt", choices=["en-pt", "pt-en"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--work", default="/tmp/intformer-translate-bench")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    bundle = a.bundle
    if bundle is None:
        from compiler.seq2seq.marian import import_marian
        from examples.translate.evaluate_bleu import package_model_dir

        bundle = os.path.join(a.work, f"bundle-{a.direction}")
        if not os.path.isdir(bundle):
            import_marian(package_model_dir(a.direction), bundle, 8, 64, 128)
    qbundle = quantized_bundle(bundle, os.path.join(a.work, f"bundle-{a.direction}-ort-int8"))
    engines = {"intformer int8": a.library, "onnxruntime fp32": bundle, "onnxruntime int8": qbundle}
    rows = []
    for threads in a.threads:
        for name, model in engines.items():
            print(f"{name}, {threads} thread(s)", flush=True)
            r = run_one(model, threads, a.direction)
            rows.append({"engine": name, "threads": threads, "bleu": r["bleu"], "seconds": r["seconds"],
                         "sentences": r["sentences"], "tokens": r["target_tokens"]})
    from rich.console import Console
    from rich.table import Table

    fp32_bleu = {r["threads"]: r["bleu"] for r in rows if r["engine"] == "onnxruntime fp32"}
    t = Table(title=f"{a.direction}, {rows[0]['sentences']} held-out sentences, greedy")
    for col in ("engine", "threads", "BLEU", "BLEU vs fp32", "sentences/s", "ms/token"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["engine"], str(r["threads"]), f"{r['bleu']:.2f}",
                  f"{100 * r['bleu'] / fp32_bleu[r['threads']]:.1f}%", f"{r['sentences'] / r['seconds']:.1f}",
                  f"{1000 * r['seconds'] / max(r['tokens'], 1):.2f}")
    Console().print(t)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
