"""The speed benchmark of intformer on this machine (a script that prints figures, not a test).

In one run, for BERT-base (random weights) at seq 128 and 32 and all-MiniLM-L6-v2 (real weights) at seq 128,
batch 1, 1 and 2 threads: median latency of intformer int8 (tuned if --db holds records for this machine, else
the default schedules), onnxruntime fp32, onnxruntime int8 (quantize_dynamic) and OpenVINO int8 (nncf, when
`pip install '.[peers]'` installed it), with ratios; the GEMM
microbenchmark against this CPU's measured VNNI peak; the per-kernel time breakdown of each compiled model; and
how long a compile takes (from the warm database when there is one).

    python examples/benchmark/run.py [--models bert-base-128 bert-base-32 minilm-128] [--threads 1 2]
                                     [--db DIR] [--tune-trials N] [--json OUT.json]

Each timing runs in its own process (TVM's thread pool size is fixed when it starts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "intformer", "benchmark")
CALIB_SAMPLES = 8


def export_bert_base(path: str) -> str:
    """BERT-base (12 layers, 768 hidden, 3072 FFN) with random weights, as users export it."""
    import torch
    import transformers as tf

    from examples.minilm.export import export_encoder

    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(), add_pooling_layer=False).eval()
    ids = torch.randint(0, 30522, (1, 128))
    return export_encoder(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), path)


def bert_calibration(seq: int, n: int = CALIB_SAMPLES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 30000, (n, 1, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    for i in range(n):  # some padding, as real batches have
        mask[i, 0, rng.integers(seq // 2, seq + 1):] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def minilm_calibration(seq: int, n: int = CALIB_SAMPLES) -> dict[str, np.ndarray]:
    from examples.minilm import minilm_data as data
    from examples.minilm.export import tokenizer

    calib, _ = data.split(data.bbc_news(), n, 0)
    return data.encode(tokenizer(), [t for _, t in calib], seq)


MODELS = {  # name -> (onnx file, exporter, seq, calibration maker)
    "bert-base-128": ("bert-base.onnx", export_bert_base, 128, bert_calibration),
    "bert-base-32": ("bert-base.onnx", export_bert_base, 32, bert_calibration),
    "minilm-128": ("minilm.onnx", lambda p: __import__("examples.minilm.export", fromlist=["export"]).export(p),
                   128, minilm_calibration),
}


def prepare(name: str) -> tuple[str, str, int]:
    fname, exporter, seq, calib = MODELS[name]
    os.makedirs(CACHE, exist_ok=True)
    model = os.path.join(CACHE, fname)
    if not os.path.exists(model):
        print(f"exporting {fname}", flush=True)
        exporter(model)
    npz = os.path.join(CACHE, f"{name}-calib.npz")
    if not os.path.exists(npz):
        np.savez(npz, **calib(seq))
    return model, npz, seq


def _cli(*args: str) -> float:
    """Run `intformer ARGS` here; seconds taken."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compiler.cli", *args], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def _worker(library: str, model: str, threads: int, per_op: bool) -> dict:
    code = (f"import json,sys; sys.path.insert(0, {ROOT!r})\n"
            "from compiler.bench import run_bench\n"
            f"rep = run_bench({library!r}, threads={threads:d}, model={model!r})\n"
            "out = {r.name: r.median_ms for r in rep.rows}\n")
    if per_op:
        code += ("from compiler.op_profile import op_breakdown\n"
                 f"prof = op_breakdown({library!r}, threads={threads:d})\n"
                 "out['per_op'] = [(k.name, k.ms, k.share) for k in prof.families[:12]]\n")
    code += "print('RESULT ' + json.dumps(out))\n"
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), INTFORMER_QUIET="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"timing {library} failed:\n{proc.stderr[-2000:]}")


def _has_host_records(db: str) -> bool:
    """True if ``db`` holds a folder for this machine's target (its key changes with the target, e.g. when the
    host gains AMX); otherwise the benchmark says so and compiles with the default schedules."""
    from compiler.errors import IntformerError
    from schedules.database import TuningDatabase
    from targets import resolve_target

    spec = resolve_target("host")
    try:
        TuningDatabase(db, spec.tvm_target(), spec.name, create=False)
        return True
    except IntformerError as e:
        print(f"{e}: timing the default schedules", flush=True)
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--db", help="tuning database: applied when it has records for this machine")
    p.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="tune each model with N trials into --db first (default 0: no tuning)")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM microbenchmark")
    p.add_argument("--json", metavar="OUT.json", help="also write the figures as JSON")
    a = p.parse_args()
    if a.tune_trials and not a.db:
        p.error("--tune-trials needs --db")
    results = {"models": {}, "machine": os.uname().machine}
    for name in a.models:
        model, npz, seq = prepare(name)
        shapes = [f"{n}=1x{seq}" for n in ("input_ids", "attention_mask", "token_type_ids")]
        common = [model, "--calibration-data", npz, *sum((["--input-shape", s] for s in shapes), [])]
        lib = os.path.join(CACHE, f"{name}.so")
        entry = {}
        if a.tune_trials:
            entry["tune_s"] = _cli("tune", *common, "--db", a.db, "--trials", str(a.tune_trials))
        use_db = bool(a.db) and _has_host_records(a.db)
        entry["compile_s"] = _cli("compile", *common, "-o", lib, *(["--db", a.db] if use_db else []))
        entry["tuned"] = use_db
        for t in a.threads:
            print(f"timing {name}, {t} thread(s)", flush=True)
            entry[f"{t}T"] = _worker(lib, model, t, per_op=True)
        results["models"][name] = entry
    if not a.no_gemm:
        gemm = subprocess.run([sys.executable, "-m", "schedules.bench_gemm", "--threads", *map(str, a.threads)],
                              cwd=ROOT, capture_output=True, text=True)
        results["gemm"] = gemm.stdout
    report(results, a.threads)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def report(results: dict, threads: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="median latency, batch 1 (ms); ratio = engine / intformer")
    for col in ("model", "threads", "intformer int8", "ORT fp32", "ORT int8", "OpenVINO int8", "fp32 / ours",
                "int8 / ours", "OpenVINO / ours", "ours 1T / this"):
        t.add_column(col, justify="right")
    for name, e in results["models"].items():
        one = e.get("1T", {}).get("intformer int8")
        for th in threads:
            r = e[f"{th}T"]
            ours, fp, q = r["intformer int8"], r["onnxruntime fp32"], r["onnxruntime int8 (quantize_dynamic)"]
            ov = r.get("OpenVINO int8 (nncf)")  # when OpenVINO is installed (pip install '.[peers]')
            t.add_row(name + (" (tuned)" if e["tuned"] else ""), str(th), f"{ours:.2f}", f"{fp:.2f}", f"{q:.2f}",
                      f"{ov:.2f}" if ov else "-", f"{fp / ours:.2f}x", f"{q / ours:.2f}x",
                      f"{ov / ours:.2f}x" if ov else "-", f"{one / ours:.2f}x" if one else "-")
    con.print(t)
    for name, e in results["models"].items():
        extra = f", tuning {e['tune_s']:.0f} s" if "tune_s" in e else ""
        con.print(f"{name}: compile {e['compile_s']:.0f} s{' from the warm database' if e['tuned'] else ''}{extra}")
        for th in threads:
            ops = e[f"{th}T"].get("per_op") or []
            if ops:
                con.print(f"  top kernels, {th} thread(s): " + "; ".join(
                    f"{k[:48]} {ms:.2f} ms ({100 * share:.0f}%)" for k, ms, share in ops[:8]))
    if results.get("gemm"):
        con.print(results["gemm"])


if __name__ == "__main__":
    sys.exit(main())
