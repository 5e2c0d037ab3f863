"""Benchmark of the int8 GEMM default schedule (not a test): `python -m schedules.bench_gemm [--threads 1 2]`.

Expects: run from the repository root on the machine to measure; gcc on PATH to measure the VNNI peak (else the
nominal 2 x 512-bit vpdpbusd per cycle at 3.9 GHz is assumed and said so).
Prints, per shape (M x K x N) and thread count: median wall ms, GMAC/s and the share of the VNNI peak measured with
the same number of threads (an unrolled vpdpbusd loop on 24 independent zmm accumulators); and the same per
CPU-second (process CPU time), which stays meaningful when another process shares the cores (with 2 threads it
also counts TVM's pool threads spinning). Each thread count runs in its own subprocess with TVM_NUM_THREADS set
before TVM's thread pool starts.
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

_PEAK_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double clk(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double now(void) { return clk(CLOCK_MONOTONIC); }
static long N = 20000000;
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
  pthread_t th[64];
  run(0);  /* warm up (frequency license) */
  double t0 = now(), c0 = clk(CLOCK_PROCESS_CPUTIME_ID);
  for (int i = 0; i < T; i++) pthread_create(&th[i], 0, run, 0);
  for (int i = 0; i < T; i++) pthread_join(th[i], 0);
  double macs = 24.0 * 64 * N * T * 1e-9;
  printf("%%f %%f\n", macs / (now() - t0), macs / (clk(CLOCK_PROCESS_CPUTIME_ID) - c0));
  return 0;
}
"""


def measure_vnni_peak(threads: int) -> tuple[float, float, str]:
    """(wall GMAC/s, GMAC per CPU-second, how) of back-to-back independent zmm vpdpbusd on `threads` threads.

    The CPU-time figure is the per-core peak even when another process shares the cores."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    nominal = (NOMINAL_PEAK_PER_CORE * threads, NOMINAL_PEAK_PER_CORE, "nominal")
    if gcc is None:
        return nominal
    body = "\n".join(f'      "vpdpbusd %%zmm1, %%zmm0, %%zmm{r}\\n\\t"' for r in range(4, 28))
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "peak.c"), os.path.join(d, "peak")
        with open(src, "w") as f:
            f.write(_PEAK_C % body)
        try:
            subprocess.run([gcc, "-O2", "-pthread", src, "-o", exe], check=True, capture_output=True)
            runs = [subprocess.run([exe, str(threads)], check=True, capture_output=True, text=True).stdout.split()
                    for _ in range(3)]
            wall, cpu = max(float(r[0]) for r in runs), max(float(r[1]) for r in runs)
        except (subprocess.CalledProcessError, ValueError, IndexError, OSError):
            return nominal
    return wall, cpu, "measured"


def _worker(shapes, number: int, repeat: int) -> None:
    """Runs inside the subprocess (TVM_NUM_THREADS already set): one JSON line per shape."""
    import numpy as np
    import tvm

    from schedules.int8_matmul import gemm_args, gemm_out_shape, gemm_primfunc, select_kernel

    host = tvm.target.codegen.llvm_get_system_cpu()
    target = tvm.target.Target({"kind": "llvm", "mcpu": host, "mtriple": "x86_64-linux-gnu",
                                "num-cores": os.cpu_count()})
    kern = select_kernel(target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        lib = tvm.tirx.build(gemm_primfunc(m, k, n, kern), target)
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
        print(json.dumps({"shape": [m, k, n], "ms": float(np.median(wall)) * 1e3, "min_ms": float(min(wall)) * 1e3,
                          "cpu_ms": float(np.median(cpu)) * 1e3, "isa": kern.isa, "exact": exact}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--number", type=int, default=20, help="calls per timed repeat")
    p.add_argument("--repeat", type=int, default=15, help="timed repeats (the median is reported)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(SHAPES, args.number, args.repeat)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results: dict[int, dict] = {}
    for t in args.threads:
        peak, peak_cpu, how = measure_vnni_peak(t)
        env = dict(os.environ, TVM_NUM_THREADS=str(t), PYTHONPATH=root)
        proc = subprocess.run([sys.executable, "-m", "schedules.bench_gemm", "--worker", "--number",
                               str(args.number), "--repeat", str(args.repeat)],
                              cwd=root, env=env, check=True, capture_output=True, text=True)
        rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        results[t] = {tuple(r["shape"]): r for r in rows}
        print(f"threads={t}: VNNI peak {peak:.0f} GMAC/s wall, {peak_cpu:.0f} GMAC per CPU-s ({how}); "
              f"kernel {rows[0]['isa'] if rows else '?'}")
        print(f"  {'M x K x N':>18} {'median ms':>10} {'GMAC/s':>8} {'% peak':>7} {'min ms':>8} {'cpu ms':>8}"
              f" {'GMAC/cpu-s':>10} {'% core peak':>11} {'exact':>6}")
        for r in rows:
            m, k, n = r["shape"]
            gmacs, gmacs_cpu = m * k * n / r["ms"] * 1e-6, m * k * n / r["cpu_ms"] * 1e-6
            print(f"  {f'{m} x {k} x {n}':>18} {r['ms']:10.4f} {gmacs:8.1f} {100 * gmacs / peak:6.1f}%"
                  f" {r['min_ms']:8.4f} {r['cpu_ms']:8.4f} {gmacs_cpu:10.1f} {100 * gmacs_cpu / peak_cpu:10.1f}% {r['exact']!s:>6}")
    if 1 in results and len(results) > 1:
        print("speed-up over 1 thread:")
        for t, rows in results.items():
            if t == 1:
                continue
            ups = [f"{'x'.join(map(str, s))}: {results[1][s]['ms'] / r['ms']:.2f}x" for s, r in rows.items()]
            print(f"  threads={t}: " + ", ".join(ups))


if __name__ == "__main__":
    main()
