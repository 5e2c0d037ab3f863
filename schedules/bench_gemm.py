"""Benchmark of the int8 GEMM default schedule (not a test): `python -m schedules.bench_gemm [--threads 1 2]`.

Expects: run from the repository root on the machine to measure; gcc on PATH to measure the VNNI peak (else the
nominal 2 x 512-bit vpdpbusd per cycle at 3.9 GHz is assumed and said so).
Prints, per kernel, shape (M x K x N) and thread count: median wall ms of 20-call batches, GMAC/s and the share
of the peak: for the VNNI kernel (always measured, AMX host or not) the VNNI peak measured with the same number
of threads (an unrolled vpdpbusd loop on 24 independent zmm accumulators, best ~1 ms window); for the AMX kernel
(on a host with AMX-INT8) the nominal tile peak, 1024 MACs per cycle per core = 8x that measured VNNI peak;
the best single call of 1000 (on a shared machine: the calls that found the cores free); and process CPU ms
per call. Each (kernel, thread count) runs in its own subprocess with TVM_NUM_THREADS set before TVM's thread
pool starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

SHAPES = [(128, 384, 384), (128, 768, 768), (128, 384, 1536), (128, 1536, 384), (128, 768, 3072), (128, 3072, 768)]
NOMINAL_PEAK_PER_CORE = 2 * 64 * 3.9  # GMAC/s: 2 vpdpbusd zmm / cycle x 64 MACs x 3.9 GHz
AMX_OVER_VNNI = 8  # AMX-INT8: 1024 MACs / cycle / core (one 16x16x64 tdpbssd per 16 cycles) vs 2 x 64 for VNNI
# kernel -> LLVM attributes added to this host's target (LLVM may name an AMX CPU after an older core)
KERNELS = {"vnni": {}, "amx": {"mattr": ["+amx-tile", "+amx-int8"]}}

_PEAK_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static const long N = 100000;  /* ~1 ms per window */
static void *run(void *arg) {
  (void)arg;
  for (long i = 0; i < N; i++) {
    __asm__ volatile(
%s
      ::: "memory");
  }
  return 0;
}
int main(int argc, char **argv) {
  int T = argc > 1 ? atoi(argv[1]) : 1;
  double seconds = argc > 2 ? atof(argv[2]) : 1.0, best = 0, end;
  pthread_t th[64];
  run(0);  /* warm up (AVX-512 frequency license) */
  for (end = now() + seconds; now() < end;) {
    double t0 = now();
    for (int i = 0; i < T; i++) pthread_create(&th[i], 0, run, 0);
    for (int i = 0; i < T; i++) pthread_join(th[i], 0);
    double g = 24.0 * 64 * N * T / (now() - t0) * 1e-9;
    if (g > best) best = g;
  }
  printf("%%f\n", best);
  return 0;
}
"""


def measure_vnni_peak(threads: int, seconds: float = 1.5) -> tuple[float, str]:
    """(GMAC/s, how): the best ~1 ms window of back-to-back independent zmm vpdpbusd on `threads` threads
    (the best window is the one where no other process held the cores)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    nominal = (NOMINAL_PEAK_PER_CORE * threads, "nominal 2/cycle x 3.9 GHz")
    if gcc is None:
        return nominal
    body = "\n".join(f'      "vpdpbusd %%zmm1, %%zmm0, %%zmm{r}\\n\\t"' for r in range(4, 28))
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "peak.c"), os.path.join(d, "peak")
        with open(src, "w") as f:
            f.write(_PEAK_C % body)
        try:
            subprocess.run([gcc, "-O2", "-pthread", src, "-o", exe], check=True, capture_output=True)
            out = subprocess.run([exe, str(threads), str(seconds)], check=True, capture_output=True, text=True)
            return float(out.stdout), "measured"
        except (subprocess.CalledProcessError, ValueError, OSError):
            return nominal


def _worker(shapes, number: int, repeat: int, best_of: int, kernel: str) -> None:
    """Runs inside the subprocess (TVM_NUM_THREADS already set): one JSON line per shape."""
    import numpy as np
    import tvm

    from compiler.tvm_compat import build_tir, host_cpu_name, make_target
    from schedules.int8_matmul import gemm_args, gemm_out_shape, gemm_primfunc, select_kernel

    target = make_target({"kind": "llvm", "mcpu": host_cpu_name(), "mtriple": "x86_64-linux-gnu",
                          "num-cores": os.cpu_count(), **KERNELS[kernel]})
    kern = select_kernel(target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        lib = build_tir(gemm_primfunc(m, k, n, kern), target)
        a = rng.integers(-128, 128, (m, k)).astype(np.int8)
        w = rng.integers(-128, 128, (k, n)).astype(np.int8)
        out = tvm.runtime.tensor(np.zeros(gemm_out_shape(m, n, kern), np.int32), dev)
        args = [tvm.runtime.tensor(a, dev)] + [tvm.runtime.tensor(v, dev) for v in gemm_args(w, kern)] + [out]
        lib(*args)
        exact = bool(np.array_equal(out.numpy()[:m, :n], a.astype(np.int32) @ w.astype(np.int32)))
        ev = lib.time_evaluator(lib.entry_name, dev, number=number, repeat=1, min_repeat_ms=0)
        wall, cpu = [], []
        for _ in range(repeat):
            c0 = time.process_time()
            wall.append(ev(*args).results[0])
            cpu.append((time.process_time() - c0) / (number + 1))  # time_evaluator adds one warm-up call
        single = lib.time_evaluator(lib.entry_name, dev, number=1, repeat=best_of)(*args).results
        print(json.dumps({"shape": [m, k, n], "ms": float(np.median(wall)) * 1e3, "min_ms": float(min(single)) * 1e3,
                          "cpu_ms": float(np.median(cpu)) * 1e3, "isa": kern.isa, "exact": exact}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--number", type=int, default=20, help="calls per timed repeat")
    p.add_argument("--repeat", type=int, default=15, help="timed repeats (the median is reported)")
    p.add_argument("--best-of", type=int, default=1000, help="single calls timed for the best-call column")
    p.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=None,
                   help="default: vnni, and amx on a host that has AMX-INT8")
    p.add_argument("--worker", choices=list(KERNELS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(SHAPES, args.number, args.repeat, args.best_of, args.worker)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    kernels = args.kernels or ["vnni"] + (["amx"] if _host_has_amx() else [])
    for kernel in kernels:
        _measure(kernel, args, root)


def _host_has_amx() -> bool:
    from targets import resolve_target

    return "amx_int8" in resolve_target("host").isa


def _measure(kernel: str, args, root: str) -> None:
    results: dict[int, dict] = {}
    for t in args.threads:
        peak, how = measure_vnni_peak(t)
        if kernel == "amx":
            peak, how = peak * AMX_OVER_VNNI, f"AMX nominal 1024 MAC/cycle = {AMX_OVER_VNNI}x the VNNI peak {how}"
        else:
            how = f"VNNI peak {how}"
        env = dict(os.environ, TVM_NUM_THREADS=str(t), PYTHONPATH=root)
        proc = subprocess.run([sys.executable, "-m", "schedules.bench_gemm", "--worker", kernel, "--number",
                               str(args.number), "--repeat", str(args.repeat), "--best-of", str(args.best_of)],
                              cwd=root, env=env, check=True, capture_output=True, text=True)
        rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        results[t] = {tuple(r["shape"]): r for r in rows}
        print(f"threads={t}: kernel {rows[0]['isa'] if rows else '?'}; peak {peak:.0f} GMAC/s ({how})")
        print(f"  {'M x K x N':>18} {'median ms':>10} {'GMAC/s':>8} {'% peak':>7} {'best ms':>8} {'GMAC/s':>8}"
              f" {'% peak':>7} {'cpu ms':>8} {'exact':>6}")
        for r in rows:
            m, k, n = r["shape"]
            macs = m * k * n * 1e-6
            print(f"  {f'{m} x {k} x {n}':>18} {r['ms']:10.4f} {macs / r['ms']:8.1f}"
                  f" {100 * macs / r['ms'] / peak:6.1f}% {r['min_ms']:8.4f} {macs / r['min_ms']:8.1f}"
                  f" {100 * macs / r['min_ms'] / peak:6.1f}%"
                  f" {r['cpu_ms']:8.4f} {r['exact']!s:>6}")
    if 1 in results and len(results) > 1:
        print(f"{kernel}: speed-up over 1 thread:")
        for t, rows in results.items():
            if t == 1:
                continue
            for key, label in (("ms", "median"), ("min_ms", "best call")):
                ups = [f"{'x'.join(map(str, s))}: {results[1][s][key] / r[key]:.2f}x" for s, r in rows.items()]
                print(f"  threads={t} ({label}): " + ", ".join(ups))


if __name__ == "__main__":
    main()
