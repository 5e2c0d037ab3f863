"""MetaSchedule tuning of a compiled model's integer kernels, with the XGBoost cost model.

Expects: the fused Relax module the build schedules (the compile pipeline's ``fuse`` stage: integer matmuls
already on the kernels of int8_matmul.py, which carry a ``intformer.kernel`` attribute naming their shape), and
a TVM target.

Guarantees:
- ``extract_tasks`` returns one ``TuneTask`` per distinct kernel of that module, weighted by how often the model
  calls it:
  - GEMM / batched-matmul kernels are tuned over a small, always-buildable space: the register tile
    (rows x weight blocks) and whether threads split rows or weight panels, applied by the very schedule of
    int8_matmul.py (tensorized with the project's intrinsics), so every candidate is exact and builds;
  - the other fused integer kernels (softmax, LayerNorm, requantize chains, ...) are tuned with MetaSchedule's
    own rules for the target; kernels that index one tensor by another's values (embedding gathers) are left
    out: random benchmark inputs would index out of bounds.
- ``tune`` runs MetaSchedule (evolutionary search, XGBoost cost model, gradient task scheduler) and writes every
  measured record to a target-keyed JSON database as soon as it is measured (schedules/database.py): an
  interrupted run keeps what it measured, and a second run only spends the trials each task still lacks.
- ``apply_database`` replaces every kernel that has a record for the target by its best tuned schedule; the
  function signature is unchanged (same buffers, same padding), so the Relax graph around it is untouched.
  A GEMM with a fused epilogue (schedules/gemm_epilogue.py) is tuned as its bare GEMM (the same task, whatever
  the epilogue) and rebuilt with the register tile and thread split its best record chose (``tuned_tile``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from compiler.tvm_compat import IRModule, PrimFunc, meta_schedule as ms, structural_hash
from schedules import int8_matmul as im
from schedules.database import TuningDatabase
from schedules.gemm_epilogue import EPILOGUE_ATTR, Epilogue

KERNEL_ATTR = im.KERNEL_ATTR  # "gemm M K N" or "bmm BT M K N"
SKIP_NAME_PARTS = ("take", "gather", "embedding")  # index by data: random inputs would read out of bounds
MAX_FUSED_BLOCKS = 12  # MetaSchedule's rules take minutes to even generate a space for a longer chain (the
#                        integer LayerNorm's isqrt is ~200 blocks); such kernels keep their default schedule
MIN_FUSED_ELEMENTS = 4096  # smaller kernels cost microseconds: not worth a trial
BUILDER_TIMEOUT = 300.0  # s: unrolled int8 kernels take long to build on 2 busy cores (tvm-0.27.md)
RUNNER_TIMEOUT = 60.0

log = logging.getLogger("intformer.tune")


@dataclass(frozen=True)
class TuneTask:
    name: str
    kind: str  # "gemm", "bmm" or "fused"
    workload: IRModule  # the unscheduled kernel, as the database keys it
    weight: int  # calls per inference
    gemm_options: tuple = ()  # ((mr...), (nr...), (m_split...)) choices of a GEMM task
    kernel: object = None  # its int8_matmul.GemmKernel

    def space(self):
        if self.kind == "fused":
            return "post-order-apply"  # MetaSchedule's rules for the target
        return ms.space_generator.ScheduleFn(_gemm_space_fn(self), sch_rules=[], postprocs=[], mutator_probs={})


@dataclass(frozen=True)
class TuneOptions:
    trials: int = 64  # measured candidates in total, over all tasks
    trials_per_iter: int = 16
    builder_timeout: float = BUILDER_TIMEOUT
    runner_timeout: float = RUNNER_TIMEOUT
    max_workers: int = 1  # parallel builds; 1 on a 2-core machine keeps the runner's timings honest
    runner: object = None  # a MetaSchedule Runner (e.g. RPC to a board); None: this machine
    builder_export: Optional[Callable] = None  # f_export for cross builds (a .so the device can load)
    seed: int = -1
    kernels: str = "matmul"  # which kernels: "matmul" (GEMMs and attention matmuls) or "all" (fused ones too)


# --kernels choices -> the task kinds they tune. The matmuls carry most of an encoder's time; the fused kernels
# (row groups, requantize chains) keep their default schedules unless asked: each row group's constants make it
# a task of its own (BERT-base: over 100), and MetaSchedule spends minutes per task on their design spaces.
KERNEL_SETS = {"matmul": ("gemm", "bmm"), "all": ("gemm", "bmm", "fused")}


@dataclass
class TuneProgress:
    """What a tuning run did, task by task (filled by the measure callback)."""

    trials: dict = field(default_factory=dict)  # task name -> measured candidates this run
    best_us: dict = field(default_factory=dict)  # task name -> best latency (us) this run
    errors: dict = field(default_factory=dict)  # task name -> failed candidates this run


# ---------------------------------------------------------------------------------------------------------
# Tasks


def _normalized(func) -> IRModule:
    return IRModule({"main": func.with_attr("global_symbol", "main")})


def _parse_kernel(attr: str) -> tuple[str, tuple[int, ...]]:
    kind, *dims = str(attr).split()
    return kind, tuple(int(d) for d in dims)


def _gemm_workload(kind: str, dims: tuple[int, ...], target):
    """(unscheduled compute, kernel, default mr) of an int8_matmul kernel: the same function the default
    schedule starts from, so a tuned schedule keeps its buffers (M padded to the default row tile)."""
    kern = im.select_kernel(target)
    if kind == "gemm":
        m, k, n = dims
        mr, _ = kern.tile(im._round_up(n, kern.lanes) // kern.lanes, m)
        return im._gemm_compute(m, k, n, kern, mr), kern, mr
    bt, m, k, n = dims
    kern = im._batch_kernel(im.select_batch_kernel(target))
    mr, _ = kern.tile(im._round_up(n, kern.lanes) // kern.lanes, m)
    return im._batch_compute(bt, m, k, n, kern, mr), kern, mr


def _gemm_options(kind: str, dims: tuple[int, ...], kern, mr0: int) -> tuple:
    """((mr choices), (nr choices), (m_split choices)): rows mr dividing the padded M (the buffers stay those of
    the default tile), weight blocks nr dividing N / lanes; m_split only where it is possible (no batch)."""
    m, n = (dims[0], dims[2]) if kind == "gemm" else (dims[1], dims[3])
    mp, n_blocks = im._round_up(m, mr0), im._round_up(n, kern.lanes) // kern.lanes
    budget = kern.register_budget()
    nrs = tuple(nr for nr in (1, 2, 3, 4) if n_blocks % nr == 0 and nr <= budget)
    mrs = tuple(mr for mr in range(1, min(im.MAX_TILE_ROWS, mp, budget) + 1) if mp % mr == 0)
    if kern.rows > 1:  # row-blocked (smmla): the tile's row count stays the default one, the columns are tuned
        mrs = (mr0,)
    return mrs, nrs, ((False, True) if kind == "gemm" else (False,))


def _gemm_space_fn(task: TuneTask):
    """The design spaces of a GEMM task: one per m_split choice, each sampling mr and nr (traced decisions, so
    the evolutionary search and the cost model explore them). A tile over the register budget is valid, only
    slow: measurement weeds it out."""
    (mrs, nrs, splits), kern = task.gemm_options, task.kernel
    intrin = kern.intrin.word_name if (task.kind == "bmm" and kern.intrin is not None) else None

    def apply(sch):
        spaces = []
        for m_split in splits:
            s = sch.copy()
            mr = mrs[0] if len(mrs) == 1 else s.sample_categorical(list(mrs), [1.0 / len(mrs)] * len(mrs))
            nr = s.sample_categorical(list(nrs), [1.0 / len(nrs)] * len(nrs))
            im._schedule_gemm(s, kern, mr, nr, intrin, m_split=m_split)
            spaces.append(s)
        return spaces

    return apply


def _why_not_tuned(name: str, func) -> str:
    """Why a fused kernel is left to its default schedule ('' if it is tuned)."""
    from compiler.tvm_compat import Schedule

    if any(p in name for p in SKIP_NAME_PARTS):
        return "indexes by data (random benchmark inputs would read out of bounds)"
    sch = Schedule(func)
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    elements = max((_iterations(b) for b in blocks), default=0)
    if elements < MIN_FUSED_ELEMENTS:
        return f"small ({elements} iterations)"
    if len(blocks) > MAX_FUSED_BLOCKS:
        return f"{len(blocks)} fused steps, too many for MetaSchedule's rules"
    return ""


def _iterations(block) -> int:
    n = 1
    for iv in block.iter_vars:
        ext = iv.dom.extent
        n *= int(ext.value) if hasattr(ext, "value") else 1
    return n


def extract_tasks(fused: IRModule, target, skipped: Optional[list] = None, kernels: str = "all") -> list[TuneTask]:
    """One TuneTask per distinct kernel of the fused module (the kernels the build makes; see the module
    docstring) among the kinds of ``KERNEL_SETS[kernels]``; the names of kernels left out, with why, are appended
    to ``skipped``."""
    kinds = KERNEL_SETS[kernels]
    from compiler.tvm_compat import structural_equal

    groups: dict[int, list] = {}  # hash -> [(workload, name, kind, gemm_info)], deduplicated structurally
    for gv, func in fused.functions.items():
        if not isinstance(func, PrimFunc):
            continue
        name = gv.name_hint
        attrs = func.attrs or {}
        if KERNEL_ATTR in attrs:
            kind, dims = _parse_kernel(attrs[KERNEL_ATTR])
            compute, kern, mr0 = _gemm_workload(kind, dims, target)
            work, info = _normalized(compute), (kind, dims, kern, mr0)
        elif attrs.get("tir.is_scheduled", False):
            if im.FIXED_ATTR in attrs and skipped is not None:
                skipped.append(f"{name[:60]}: {attrs[im.FIXED_ATTR]} (a fixed kernel, nothing to tune)")
            continue
        elif "fused" not in kinds:
            if skipped is not None:
                skipped.append(f"{name[:60]}: a fused kernel (tuned with --kernels all)")
            continue
        else:
            why = _why_not_tuned(name, func)
            if why:
                if skipped is not None:
                    skipped.append(f"{name[:60]}: {why}")
                continue
            work, info = _normalized(func), None
        bucket = groups.setdefault(structural_hash(work), [])
        for entry in bucket:
            if structural_equal(entry[0], work):
                entry[3] += 1
                break
        else:
            bucket.append([work, name, info, 1])
    tasks = []
    for bucket in groups.values():
        for work, name, info, count in bucket:
            if info is None:
                tasks.append(TuneTask(name, "fused", work, count))
                continue
            kind, dims, kern, mr0 = info
            tasks.append(TuneTask(f"{kind}_{'x'.join(map(str, dims))}", kind, work, count,
                                  _gemm_options(kind, dims, kern, mr0), kern))
    return sorted(tasks, key=lambda t: (t.kind == "fused", t.name))


# ---------------------------------------------------------------------------------------------------------
# Tuning


def _progress_callback(tasks: list[TuneTask], progress: TuneProgress, on_update: Optional[Callable]):
    from compiler.tvm_compat import derived_object

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            name = tasks[task_id].name
            for b, r in zip(builder_results, runner_results):
                progress.trials[name] = progress.trials.get(name, 0) + 1
                if b.error_msg or r.error_msg or not r.run_secs:
                    progress.errors[name] = progress.errors.get(name, 0) + 1
                    continue
                us = 1e6 * sum(float(s) for s in r.run_secs) / len(r.run_secs)
                progress.best_us[name] = min(progress.best_us.get(name, us), us)
            if on_update is not None:
                on_update(name, progress)

    return _Progress()


def tune(tasks: list[TuneTask], target, db: TuningDatabase, options: TuneOptions = TuneOptions(),
         on_update: Optional[Callable] = None) -> TuneProgress:
    """Spend ``options.trials`` measurements over ``tasks`` (by weight), minus what ``db`` already holds for
    each task; every measured record lands in ``db`` as it is measured."""
    progress = TuneProgress()
    done = {t.name: db.records_for(t.workload) for t in tasks}
    per_task = max(1, -(-options.trials // max(1, len(tasks))))  # a fair share, for the resume arithmetic
    todo = [t for t in tasks if done[t.name] < per_task]
    if not todo:
        return progress
    remaining = sum(per_task - done[t.name] for t in todo)
    budget = min(options.trials, remaining)
    contexts = [ms.TuneContext(mod=t.workload, target=target, space_generator=t.space(),
                               search_strategy="evolutionary", task_name=t.name, rand_state=options.seed,
                               num_threads="physical") for t in todo]
    builder = ms.builder.LocalBuilder(max_workers=options.max_workers, timeout_sec=options.builder_timeout,
                                      **({"f_export": options.builder_export} if options.builder_export else {}))
    runner = options.runner or ms.runner.LocalRunner(timeout_sec=options.runner_timeout)
    callbacks = ms.measure_callback.MeasureCallback.create("default") + [
        _progress_callback(todo, progress, on_update)]
    with db.work_dir() as work_dir:
        ms.tune_tasks(tasks=contexts, task_weights=[float(t.weight) for t in todo], work_dir=work_dir,
                      max_trials_global=budget, max_trials_per_task=per_task,
                      num_trials_per_iter=min(options.trials_per_iter, per_task), builder=builder, runner=runner,
                      database=db.ms_database, cost_model="xgb", measure_callbacks=callbacks,
                      task_scheduler="gradient")
    return progress


# ---------------------------------------------------------------------------------------------------------
# Applying a database


def _copy_attrs(new, attrs):
    """A tuned kernel keeps the replaced one's name, pattern and kernel attributes."""
    for key in ("global_symbol", "op_pattern", KERNEL_ATTR, EPILOGUE_ATTR):
        if key in attrs:
            new = new.with_attr(key, attrs[key])
    return new.with_attr("tir.is_scheduled", True)


def tuned_tile(trace, kind: str, dims: tuple[int, ...], target) -> tuple[int, int, bool]:
    """(mr, nr, m_split) a GEMM task's record chose: its sampled decisions (mr when it had a choice, then nr), and
    m_split from the main loop's parallelization (threads split rows: the row loop itself; else a fused loop)."""
    _, kern, mr0 = _gemm_workload(kind, dims, target)
    (mrs, _, _) = _gemm_options(kind, dims, kern, mr0)
    sampled = [int(inst.attrs[0][int(trace.decisions[inst])]) for inst in trace.insts
               if inst.kind.name == "SampleCategorical"]
    mr, nr = (mrs[0], sampled[0]) if len(mrs) == 1 else sampled[:2]
    fused = [out for inst in trace.insts if inst.kind.name == "Fuse" for out in inst.outputs]
    parallel = next(inst for inst in trace.insts if inst.kind.name == "Parallel")
    return mr, nr, not any(parallel.inputs[0].same_as(out) for out in fused)


def _with_tuned_tile(kind: str, dims: tuple[int, ...], attrs, trace, target):
    """A GEMM kernel with a fused epilogue, scheduled with the tile its bare GEMM's record chose."""
    epilogue = Epilogue.from_json(str(attrs[EPILOGUE_ATTR]))
    return im.gemm_primfunc(*dims, im.select_kernel(target), epilogue, tuned_tile(trace, kind, dims, target))


def apply_database(mod: IRModule, target, db: TuningDatabase) -> tuple[IRModule, int]:
    """Kernels of the fused ``mod`` that have a record in ``db`` -> their best tuned schedule.

    Returns (module, number of kernels replaced)."""
    replaced = 0
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, PrimFunc):
            continue
        attrs = func.attrs or {}
        if KERNEL_ATTR in attrs:
            kind, dims = _parse_kernel(attrs[KERNEL_ATTR])
            work = _normalized(_gemm_workload(kind, dims, target)[0])
            if EPILOGUE_ATTR in attrs:  # tuned as the bare GEMM: rebuilt with its tile, the epilogue kept
                trace = db.best_trace(work, target)
                if trace is not None:
                    updates[gv] = _copy_attrs(_with_tuned_tile(kind, dims, attrs, trace, target), attrs)
                    replaced += 1
                continue
        elif attrs.get("tir.is_scheduled", False):
            continue
        else:
            work = _normalized(func)
        sch = db.best_schedule(work, target)
        if sch is None:
            continue
        updates[gv] = _copy_attrs(sch.mod["main"].without_attr("global_symbol"), attrs)  # the workload's "main"
        replaced += 1
    for gv, new in updates.items():
        mod[gv] = new
    if replaced:
        log.info("applied %d tuned kernels", replaced)
    return mod, replaced


__all__ = ["TuneOptions", "TuneProgress", "TuneTask", "apply_database", "extract_tasks", "tune", "tuned_tile",
           "KERNEL_ATTR"]
