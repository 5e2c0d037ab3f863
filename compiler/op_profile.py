"""Per-kernel time breakdown of a compiled library, through the Relax VM's instrument hook (0.27 has no VM profiler).

Every VM Call instruction (a PrimFunc kernel or a VM builtin such as an allocation) is timed with a wall clock
between the hook's before/after calls, over `repeats` runs after one warm-up. Times are grouped by kernel name
(the PrimFunc symbol), and by family: the symbol with the per-layer numbers FuseOps appends removed, so the
six copies of a layer's softmax kernel add up to one row.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OpTime:
    name: str
    calls: int  # per run
    ms: float  # per run, summed over calls
    share: float  # of the summed time of all timed calls


@dataclass(frozen=True)
class OpProfile:
    library: str
    threads: int
    runs: int
    total_ms: float  # per run, sum of every timed call (hook overhead included: a few microseconds per call)
    wall_ms: float  # per run, median wall-clock time of an instrumented run
    kernels: tuple[OpTime, ...]  # by symbol, slowest first
    families: tuple[OpTime, ...]  # by family, slowest first


_OP_NUMBER = re.compile(r"^([a-z]+)\d+$")  # `add9`, `take4`; not `avx512vnni` nor `128x384x384`


def family(symbol: str) -> str:
    """`fused_add9_cast6_multiply3` -> `fused_add_cast_multiply`, with runs of a repeated op kept once."""
    parts = [_OP_NUMBER.sub(r"\1", p) for p in symbol.split("_")]
    out = [p for i, p in enumerate(parts) if p and (i == 0 or p != parts[i - 1])]
    return "_".join(out)


class _Recorder:
    def __init__(self):
        self.times: dict[str, list[float]] = defaultdict(list)
        self._start: list[float] = []
        self.on = False

    def __call__(self, func, symbol, before, ret, *args):
        if before:
            self._start.append(time.perf_counter())
        else:
            t = time.perf_counter() - self._start.pop()
            if self.on:
                self.times[str(symbol)].append(t)
        return 0  # VMInstrumentReturnKind.NO_OP


def _rows(groups: dict[str, list[float]], runs: int, total: float) -> tuple[OpTime, ...]:
    rows = [OpTime(name, len(ts) // runs, sum(ts) / runs * 1e3, sum(ts) / runs / total if total else 0.0)
            for name, ts in groups.items()]
    return tuple(sorted(rows, key=lambda r: -r.ms))


def profile_vm(vm, args, runs: int = 10, entry: str = "main") -> tuple[dict[str, list[float]], float]:
    """Time every Call of `vm[entry](*args)` over `runs` runs (after one warm-up): ({symbol: times}, wall ms)."""
    rec = _Recorder()
    vm.set_instrument(rec)
    fn = vm[entry]
    fn(*args)
    rec.on = True
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(*args)
        walls.append(time.perf_counter() - t0)
    rec.on = False
    return dict(rec.times), float(np.median(walls)) * 1e3


def op_breakdown(library: str, threads: int = 1, runs: int = 10) -> OpProfile:
    """Per-kernel times of one compiled library on this machine, inputs drawn as `intformer bench` draws them."""
    from compiler.bench import bench_inputs, tvm_threads
    from compiler.runtime import CompiledModel

    with tvm_threads(threads):  # set before TVM's runtime starts its thread pool
        import tvm.runtime as rt

        model = CompiledModel(library)
        feed = bench_inputs(model.manifest)
        args = [rt.tensor(np.ascontiguousarray(feed[s.name], dtype=s.dtype), model.device) for s in model.inputs]
        times, wall = profile_vm(model._vm, args, runs, model.manifest.entry)
    return summarize(library, threads, runs, times, wall)


def summarize(library: str, threads: int, runs: int, times: dict[str, list[float]], wall_ms: float) -> OpProfile:
    total = sum(sum(ts) for ts in times.values()) / runs
    fam: dict[str, list[float]] = defaultdict(list)
    for name, ts in times.items():
        fam[family(name)].extend(ts)
    return OpProfile(library, threads, runs, total * 1e3, wall_ms, _rows(times, runs, total), _rows(fam, runs, total))


def print_profile(prof: OpProfile, top: int = 25, width: int = 90) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    for title, rows in (("by kernel family (layer numbers removed)", prof.families), ("by kernel", prof.kernels)):
        t = Table(title=f"{os.path.basename(prof.library)}, {prof.threads} thread(s), {prof.runs} runs: time per "
                        f"run {prof.total_ms:.2f} ms in calls ({prof.wall_ms:.2f} ms wall), {title}")
        for col, just in (("kernel", "left"), ("calls", "right"), ("ms", "right"), ("share", "right"),
                          ("cumulative", "right")):
            t.add_column(col, justify=just)
        cum = 0.0
        for r in rows[:top]:
            cum += r.share
            name = r.name if len(r.name) <= width else r.name[: width - 3] + "..."
            t.add_row(name, str(r.calls), f"{r.ms:.3f}", f"{100 * r.share:.1f}%", f"{100 * cum:.1f}%")
        if len(rows) > top:
            rest = rows[top:]
            t.add_row(f"({len(rest)} more)", str(sum(r.calls for r in rest)), f"{sum(r.ms for r in rest):.3f}",
                      f"{100 * sum(r.share for r in rest):.1f}%", "100.0%")
        con.print(t)
