"""Latency benchmark: a compiled library against onnxruntime fp32 and int8 (quantize_dynamic) and, when it is
installed, OpenVINO int8 (nncf), in one run.

Medians of wall-clock time per batch; inputs are drawn from the ranges seen in calibration.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from compiler.progress import status

MIN_RUNS, MAX_RUNS, MIN_SECONDS = 5, 100, 3.0


@dataclass(frozen=True)
class BenchRow:
    name: str
    median_ms: float
    runs: int


@dataclass(frozen=True)
class BenchReport:
    library: str
    threads: int
    input_shapes: dict
    rows: tuple[BenchRow, ...]


def bench_inputs(manifest, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for s in manifest.inputs:
        lo, hi = manifest.input_ranges.get(s.name, (0, 1))
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            feed[s.name] = rng.uniform(lo, hi, size=s.shape).astype(dt)
        else:
            feed[s.name] = rng.integers(int(lo), int(hi) + 1, size=s.shape).astype(dt)
    return feed


def time_fn(fn, repeats: int = 0) -> tuple[float, int]:
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        n = len(times)
        if repeats and n >= repeats:
            break
        if not repeats and ((n >= MIN_RUNS and time.perf_counter() - start >= MIN_SECONDS) or n >= MAX_RUNS):
            break
    return statistics.median(times) * 1e3, len(times)


def run_bench(library: str, threads: int = 1, model: str | None = None, repeats: int = 0,
              remote=None) -> BenchReport:
    """Median latency of a library, here or (with `remote`, a targets.remote.RemoteSpec) timed on the device."""
    if remote is not None:
        return _run_remote_bench(library, threads, model, repeats, remote)
    from compiler.io_safety import check_threads

    check_threads(threads)
    with tvm_threads(threads):
        return _run_local_bench(library, threads, model, repeats)


@contextlib.contextmanager
def tvm_threads(threads: int):
    """TVM_NUM_THREADS=threads while the block runs, the previous value (or its absence) restored after: TVM's
    runtime reads it when its thread pool starts (the first parallel kernel of the process), and nothing after the
    block (a subprocess, another library) inherits it."""
    old = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = old


def _run_local_bench(library: str, threads: int, model, repeats: int) -> BenchReport:
    from compiler.runtime import CompiledModel

    lib = CompiledModel(library)
    feed = bench_inputs(lib.manifest)
    rows = []
    status(f"timing {os.path.basename(library)} ({threads} thread(s))")
    ms, n = time_fn(lambda: lib(feed), repeats)
    rows.append(BenchRow("intformer int8", ms, n))
    if model:
        from compiler.api import _ort_session

        sess = _ort_session(model, threads)
        names = [i.name for i in sess.get_inputs()]
        ort_feed = {k: feed[k] for k in names}
        status("timing onnxruntime fp32")
        ms, n = time_fn(lambda: sess.run(None, ort_feed), repeats)
        rows.append(BenchRow("onnxruntime fp32", ms, n))
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(prefix="intformer-bench-") as tmp:
            q = os.path.join(tmp, "int8.onnx")
            status("quantizing with onnxruntime quantize_dynamic")
            quantize_dynamic(model, q, weight_type=QuantType.QInt8)
            qsess = _ort_session(q, threads)
            status("timing onnxruntime int8")
            ms, n = time_fn(lambda: qsess.run(None, ort_feed), repeats)
            rows.append(BenchRow("onnxruntime int8 (quantize_dynamic)", ms, n))
        from compiler.workload import openvino_available, openvino_int8

        if openvino_available():  # optional peer: pip install 'intformer[peers]'
            status("quantizing with OpenVINO nncf")
            calib = [{k: v for k, v in bench_inputs(lib.manifest, seed=s).items() if k in ort_feed}
                     for s in range(1, 9)]
            ov = openvino_int8(model, threads, calib)
            status("timing OpenVINO int8")
            ms, n = time_fn(lambda: ov(ort_feed), repeats)
            rows.append(BenchRow("OpenVINO int8 (nncf)", ms, n))
        else:
            status("OpenVINO not installed (pip install 'intformer[peers]'): not timed")
    return BenchReport(library, threads, {s.name: list(s.shape) for s in lib.inputs}, tuple(rows))


REMOTE_RUNS = 10  # timed runs on a device when --repeats is not given


def _run_remote_bench(library: str, threads: int, model, repeats: int, remote) -> BenchReport:
    from compiler.device import RemoteModel
    from compiler.errors import IntformerError

    if model:
        raise IntformerError("--model times onnxruntime on this machine; it cannot be combined with --rpc/--tracker")
    lib = RemoteModel(library, remote)
    lib.set_threads(threads)
    feed = bench_inputs(lib.manifest)
    runs = repeats or REMOTE_RUNS
    status(f"timing {os.path.basename(library)} on {remote.where} ({threads} thread(s), {runs} runs)")
    times = lib.time(feed, runs)
    row = BenchRow(f"intformer int8 on {remote.where}", statistics.median(times) * 1e3, len(times))
    return BenchReport(library, threads, {s.name: list(s.shape) for s in lib.inputs}, (row,))


def print_report(rep: BenchReport) -> None:
    from rich.console import Console
    from rich.table import Table

    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in rep.input_shapes.items())
    t = Table(title=f"latency, {rep.threads} thread(s), batch of {shapes}")
    t.add_column("engine")
    t.add_column("median ms", justify="right")
    t.add_column("runs", justify="right")
    t.add_column("time vs intformer", justify="right")
    ours = rep.rows[0].median_ms
    for r in rep.rows:
        t.add_row(r.name, f"{r.median_ms:.2f}", str(r.runs), f"{r.median_ms / ours:.2f}x")
    Console().print(t)
