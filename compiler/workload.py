"""Many texts: the total time of a workload of samples of different lengths, each at its own length, against
onnxruntime int8 (quantize_dynamic) and OpenVINO int8 (nncf, when installed) on the same samples.

A workload is an .npz in the input convention (leading sample axis, each sample a batch of one, padded to a
common length) whose attention mask marks each sample's length. At 1 thread the engines take turns text by text
in one process (a shared machine then slows them alike); at more threads every engine runs in its own process
(a thread pool of one engine spins after its run and steals the other's core on 2 cores). Latency mode sends one text at
a time at its own length; throughput mode sorts the texts by length and sends batches of similar length, each
padded to its longest member.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from compiler.errors import IntformerError

ENGINES = ("intformer", "onnxruntime int8", "openvino int8")
PASSES = 3  # timed passes over the whole workload (after one warm-up pass); the median total is reported


@dataclass(frozen=True)
class WorkloadRow:
    engine: str
    total_ms: float  # median over passes of the time for every sample (the best round's, with several)
    tokens: int  # real tokens (sum of the lengths)
    batches: int
    note: str = ""
    rounds_ms: tuple[float, ...] = ()  # every round's total (separate processes, several rounds)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / (self.total_ms / 1e3) if self.total_ms else 0.0


@dataclass(frozen=True)
class WorkloadReport:
    workload: str
    threads: int
    samples: int
    mean_tokens: float
    batch: int
    rows: tuple[WorkloadRow, ...]


def load_workload(path: str) -> list[dict[str, np.ndarray]]:
    """The samples of a workload .npz, each cut to its own length (the attention mask's last 1)."""
    if not os.path.exists(path):
        raise IntformerError(f"{path}: no such file")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    masks = [k for k in arrays if "mask" in k.lower()]
    if not masks:
        raise IntformerError(f"{path}: a workload needs an attention mask array marking each sample's length; "
                             f"it has {sorted(arrays)}")
    mask = arrays[masks[0]]
    seq = mask.shape[-1]
    out = []
    for i in range(mask.shape[0]):
        m = mask[i].reshape(-1, seq)
        nz = np.nonzero(m.any(axis=0))[0]
        length = int(nz[-1]) + 1 if nz.size else 1
        out.append({k: (v[i][..., :length] if v.shape[-1] == seq else v[i]) for k, v in arrays.items()})
    return out


def batches(samples: list[dict], batch: int) -> list[dict[str, np.ndarray]]:
    """batch 1: the samples as they are. Otherwise: sorted by length, groups of `batch` padded to their longest."""
    if batch <= 1:
        return samples
    order = sorted(range(len(samples)), key=lambda i: _length(samples[i]))
    out = []
    for k in range(0, len(order), batch):
        group = [samples[i] for i in order[k:k + batch]]
        top = max(_length(s) for s in group)
        out.append({n: np.concatenate([np.pad(s[n], [(0, 0)] * (s[n].ndim - 1) + [(0, top - s[n].shape[-1])])
                                       for s in group]) for n in group[0]})
    return out


def _length(sample: dict) -> int:
    m = [v for k, v in sample.items() if "mask" in k.lower()][0]
    return int(m.shape[-1])


def _tokens(samples) -> int:
    return int(sum(int(np.count_nonzero([v for k, v in s.items() if "mask" in k.lower()][0])) for s in samples))


def _time_passes(fn, feeds) -> float:
    for f in feeds:  # warm-up: every shape once
        fn(f)
    totals = []
    for _ in range(PASSES):
        t0 = time.perf_counter()
        for f in feeds:
            fn(f)
        totals.append(time.perf_counter() - t0)
    return statistics.median(totals) * 1e3


def make_runner(engine: str, library: str, model: str | None, workload: str, threads: int, batch: int,
                calibration: str | None = None):
    """(feed -> outputs, the engine's feeds) for one engine, in this process (the caller sets the threads)."""
    feeds = batches(load_workload(workload), batch)
    if engine == "intformer":
        from compiler.runtime import CompiledModel

        lib = CompiledModel(library)
        names = [s.name for s in lib.inputs]
        feeds = [_fit(lib.inputs, {n: f[n] for n in names}) for f in feeds]
        for f in feeds[:1]:
            lib.check(f)
        return lib, feeds
    if engine == "onnxruntime int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from compiler.api import _ort_session

        with tempfile.TemporaryDirectory(prefix="intformer-workload-") as tmp:
            q = os.path.join(tmp, "int8.onnx")
            quantize_dynamic(model, q, weight_type=QuantType.QInt8)
            sess = _ort_session(q, threads)
        names = [i.name for i in sess.get_inputs()]
        return (lambda f: sess.run(None, f)), [{n: f[n] for n in names} for f in feeds]
    if engine == "openvino int8":
        return openvino_int8(model, threads, load_workload(calibration or workload)[:64]), feeds
    raise IntformerError(f"unknown engine '{engine}'; known: {', '.join(ENGINES)}")


def time_engine(engine: str, library: str, model: str | None, workload: str, threads: int, batch: int,
                calibration: str | None = None) -> dict:
    """One engine's total time on the workload, in this process."""
    fn, feeds = make_runner(engine, library, model, workload, threads, batch, calibration)
    return {"engine": engine, "total_ms": _time_passes(fn, feeds), "batches": len(feeds)}


def time_interleaved(engines, library: str, model: str | None, workload: str, batch: int,
                     calibration: str | None = None) -> list[dict]:
    """1 thread: every engine in this process, text by text in turn (each text's runs back to back, so a
    machine shared with other jobs slows every engine alike); the median over passes of each total."""
    runners = [(e, *make_runner(e, library, model, workload, 1, batch, calibration)) for e in engines]
    for _, fn, feeds in runners:  # warm-up: every shape once
        for f in feeds:
            fn(f)
    totals = {e: [] for e in engines}
    for _ in range(PASSES):
        acc = dict.fromkeys(engines, 0.0)
        for k in range(len(runners[0][2])):
            for e, fn, feeds in runners:
                t0 = time.perf_counter()
                fn(feeds[k])
                acc[e] += time.perf_counter() - t0
        for e in engines:
            totals[e].append(acc[e])
    return [{"engine": e, "total_ms": statistics.median(totals[e]) * 1e3, "batches": len(runners[0][2])}
            for e in engines]


def _fit(specs, feed: dict) -> dict:
    """A library of fixed shapes gets each sample zero-padded to its shape (what a user of it has to do)."""
    out = {}
    for s in specs:
        a = feed[s.name]
        if not s.ranges and a.shape != s.shape and a.ndim == len(s.shape) and all(
                n <= t for n, t in zip(a.shape, s.shape)):
            a = np.pad(a, [(0, t - n) for n, t in zip(a.shape, s.shape)])
        out[s.name] = a
    return out


def openvino_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def openvino_int8(model: str, threads: int, calibration: list[dict]):
    """OpenVINO with nncf int8 post-training quantization (calibrated on the given feeds, e.g. samples at their
    own lengths; the model keeps its dynamic axes): a function feed -> outputs."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        raise IntformerError("OpenVINO is not installed: pip install 'intformer[peers]' "
                             "(openvino==2026.4.1 nncf==3.4.0)") from None
    core = ov.Core()
    m = core.read_model(model)
    names = [i.get_any_name() for i in m.inputs]
    calib = [{n: s[n] for n in names} for s in calibration]
    q = nncf.quantize(m, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER,
                      subset_size=len(calib))
    compiled = core.compile_model(q, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                             "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    return lambda f: req.infer({n: f[n] for n in names})


def run_workload(library: str, workload: str, threads: int = 1, model: str | None = None, batch: int = 1,
                 engines=ENGINES, calibration: str | None = None, interleave: bool = True,
                 rounds: int = 1) -> WorkloadReport:
    """At 1 thread the engines take turns text by text in one process (interleave); otherwise each engine runs
    in its own process, ``rounds`` times in turn (the engines alternate, each round in fresh processes) and
    each engine's best round counts: on a shared machine a neighbour's load can slow every call of one process
    for seconds (Zen 4 under KVM, 2 threads: 1.6x for a whole run, then back), which one run per engine would
    charge to whichever engine ran then. Engines that cannot run (no --model, OpenVINO missing) are left out
    or noted."""
    from compiler.progress import status

    if rounds < 1 or (rounds > 1 and threads == 1 and interleave):
        raise ValueError(f"rounds={rounds}: at least 1, and several only with each engine in its own process "
                         "(threads > 1 or interleave=False)")
    samples = load_workload(workload)
    tokens = _tokens(samples)
    rows = []
    engines = [e for e in engines if e == "intformer" or model]
    if not openvino_available() and "openvino int8" in engines:
        engines.remove("openvino int8")
        rows_missing = [WorkloadRow("openvino int8", float("nan"), tokens, 0,
                                    note="not installed: pip install 'intformer[peers]'")]
    else:
        rows_missing = []
    if threads == 1 and interleave:
        status(f"timing {', '.join(engines)} on {len(samples)} samples, text by text in turn (1 thread)")
        code = ("import json\nfrom compiler.workload import time_interleaved\n"
                f"r = time_interleaved({tuple(engines)!r}, {library!r}, {model!r}, {workload!r}, {batch}, "
                f"{calibration!r})\nprint('RESULT ' + json.dumps(r))\n")
        for r in _subprocess(code, threads):
            rows.append(WorkloadRow(r["engine"], r["total_ms"], tokens, r["batches"]))
        return WorkloadReport(workload, threads, len(samples), tokens / len(samples), batch,
                              tuple(rows + rows_missing))
    totals: dict[str, list[float]] = {e: [] for e in engines}
    batches_of: dict[str, int] = {}
    failed: dict[str, str] = {}  # an engine that fails a round is not run again: its error is its row
    for k in range(rounds):  # each round: every engine once, in turn, each in a fresh process
        for engine in (e for e in engines if e not in failed):
            status(f"timing {engine} on {len(samples)} samples ({threads} thread(s), batch {batch})"
                   + (f", round {k + 1}/{rounds}" if rounds > 1 else ""))
            code = ("import json\nfrom compiler.workload import time_engine\n"
                    f"r = time_engine({engine!r}, {library!r}, {model!r}, {workload!r}, {threads}, {batch}, "
                    f"{calibration!r})\nprint('RESULT ' + json.dumps([r]))\n")
            try:
                (r,) = _subprocess(code, threads)
                totals[engine].append(r["total_ms"])
                batches_of[engine] = r["batches"]
            except IntformerError as e:
                failed[engine] = (f"round {k + 1}: " if rounds > 1 else "") + str(e)[:160]
    for engine in engines:
        if engine in failed:
            rows.append(WorkloadRow(engine, float("nan"), tokens, 0, note=failed[engine],
                                    rounds_ms=tuple(totals[engine])))
        else:
            t = totals[engine]
            note = "rounds: " + ", ".join(f"{v:.0f}" for v in t) + " ms (best shown)" if len(t) > 1 else ""
            rows.append(WorkloadRow(engine, min(t), tokens, batches_of[engine], note=note, rounds_ms=tuple(t)))
    return WorkloadReport(workload, threads, len(samples), tokens / len(samples), batch, tuple(rows + rows_missing))


def _subprocess(code: str, threads: int) -> list[dict]:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), INTFORMER_QUIET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise IntformerError((proc.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(line[0][7:])


def print_workload(rep: WorkloadReport) -> None:
    from rich.console import Console
    from rich.table import Table

    mode = "one text at a time" if rep.batch <= 1 else f"batches of up to {rep.batch} texts of similar length"
    t = Table(title=f"{os.path.basename(rep.workload)}: {rep.samples} samples at their own lengths (mean "
                    f"{rep.mean_tokens:.1f} tokens), {mode}, {rep.threads} thread(s)")
    for col in ("engine", "total ms", "tokens/s", "time vs intformer", "note"):
        t.add_column(col, justify="right" if col not in ("engine", "note") else "left")
    ours = rep.rows[0].total_ms
    for r in rep.rows:
        ok = r.total_ms == r.total_ms
        t.add_row(r.engine, f"{r.total_ms:.1f}" if ok else "-", f"{r.tokens_per_s:.0f}" if ok else "-",
                  f"{r.total_ms / ours:.2f}x" if ok else "-", r.note)
    Console().print(t)


def to_json(rep: WorkloadReport) -> dict:
    return {"workload": rep.workload, "threads": rep.threads, "samples": rep.samples,
            "mean_tokens": rep.mean_tokens, "batch": rep.batch,
            "rows": [{"engine": r.engine, "total_ms": r.total_ms, "tokens_per_s": r.tokens_per_s,
                      "batches": r.batches, "note": r.note, "rounds_ms": list(r.rounds_ms)} for r in rep.rows]}
