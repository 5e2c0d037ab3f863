"""The compile pipeline: one flat, named list of stages from the ONNX file to the executable, read top to bottom.

Each stage takes the frozen `CompileState` and returns a new one (dataclasses.replace), and names the phase it
takes and the phase it gives (compiler/state.py: Graph -> CalibratedGraph -> RelaxModule -> IntegerModule ->
ScheduledModule -> Artifact); the runner checks both between stages, so a stage run out of place, or one that
forgot to set what it promises, fails at that stage with the fields it lacks. The build's steps
(legalization, row groups, fusion, tuned kernels, default schedules, shared kernels, code generation) are stages
like the others, so `tune` runs the same list up to `fuse`. With `CompileOptions.dump_ir`, the state's graph is
written after every stage (the ONNX graph, then the Relax module, last the VM's instructions), so a wrong number
can be chased stage by stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple, Optional

import onnx

from compiler.config import CompileOptions
from compiler.progress import status
from compiler.state import (
    ARTIFACT,
    CALIBRATED,
    GRAPH,
    INTEGER,
    RELAX,
    SCHEDULED,
    SHAPED,
    SOURCE,
    CompileState,
    Phase,
    Seq2SeqParts,
)

if TYPE_CHECKING:
    from targets import TargetSpec


class Stage(NamedTuple):
    """One named step: `run` maps a state holding at least `takes` to one holding at least `gives`."""

    name: str
    run: Callable[[CompileState], CompileState]
    takes: Phase
    gives: Phase


Stages = list[Stage]


def _stage_groups() -> tuple[Stages, Stages, Stages]:
    """(per graph up to calibration, per graph after it, per module)."""
    from compiler import stages as s

    front = [
        Stage("load", s.load, SOURCE, GRAPH),                    # read + check the ONNX file
        Stage("pin_shapes", s.pin_shapes, GRAPH, SHAPED),        # static input shapes from the model or --input-shape
        Stage("check_ops", s.check_ops, SHAPED, SHAPED),         # custom/unknown ops: one error listing all
        Stage("simplify", s.simplify, SHAPED, SHAPED),           # fold shape arithmetic, Gemm -> MatMul
        Stage("check_import", s.check_import, SHAPED, SHAPED),   # every remaining op has a Relax converter
        Stage("calibrate", s.calibrate, SHAPED, CALIBRATED),     # ranges: --calibration-data, a table, or synthetic
    ]
    back = [
        Stage("smooth", s.smooth, CALIBRATED, CALIBRATED),       # per-channel activation ranges into the weights
        Stage("annotate", s.annotate, CALIBRATED, CALIBRATED),   # int8 Q/DQ around every MatMul from the ranges
        Stage("quantize_io", s.quantize_io, CALIBRATED, CALIBRATED),  # int8 across graphs or steps (seq2seq)
        Stage("import", s.import_relax, CALIBRATED, RELAX),      # ONNX -> Relax
        Stage("integerize", s.integerize, RELAX, RELAX),         # Relax passes: integer matmuls + fixed point
        Stage("verify", s.verify, RELAX, INTEGER),               # op/dtype report; every MatMul int8
    ]
    module = [
        Stage("schedule", s.schedule, INTEGER, SCHEDULED),       # int8 matmuls -> scheduled kernels (VNNI, ...)
        *_build_stages(),
    ]
    return front, back, module


def _build_stages() -> Stages:
    """The build, from the scheduled module to the executable (compiler/build.py)."""
    from compiler import stages as s

    return [
        Stage("manifest", s.manifest, SCHEDULED, SCHEDULED),     # names, shapes, scales, target, versions, hashes
        Stage("pair_requantize", s.pair_requantize, SCHEDULED, SCHEDULED),  # x86: row requantizations in int32
        Stage("legalize", s.legalize, SCHEDULED, SCHEDULED),     # Relax ops -> TIR kernels (LegalizeOps)
        Stage("fuse_rows", s.fuse_rows, SCHEDULED, SCHEDULED),   # softmax, LayerNorm, lookups: a kernel per row group
        Stage("fuse", s.fuse, SCHEDULED, SCHEDULED),             # FuseOps + FuseTIR: the library's kernels (`tune`)
        Stage("apply_db", s.apply_db, SCHEDULED, SCHEDULED),     # kernels with a --db record -> tuned schedules
        Stage("default_schedule", s.default_schedule, SCHEDULED, SCHEDULED),  # the rest: the default schedule
        Stage("share_kernels", s.share_kernels, SCHEDULED, SCHEDULED),  # one kernel per class equal but for constants
        Stage("share_buckets", s.share_buckets, SCHEDULED, SCHEDULED),  # ranged: one kernel per site over all lengths
        Stage("bound_rows", s.bound_rows, SCHEDULED, SCHEDULED),  # ranged: row kernels over the input's rows only
        Stage("codegen", s.codegen, SCHEDULED, ARTIFACT),        # kernels + VM plan + int8 constants
    ]


def _stages() -> Stages:
    front, back, module = _stage_groups()
    return front + back + module


def stage_names() -> list[str]:
    return [st.name for st in _stages()]


def resolve_target_spec(options: CompileOptions) -> TargetSpec:
    """The TargetSpec of ``options.target``, its toolchain checked (what the stages will build for)."""
    from targets import resolve_target
    from targets.toolchain import require_toolchain

    spec = resolve_target(options.target)
    require_toolchain(spec)  # before the stages: a missing cross compiler fails now, not after the build
    return spec


def _run(state: CompileState, stages: Stages, first: int = 0, total: int = 0, label: str = "",
         until: Optional[str] = None) -> CompileState:
    for i, (name, stage, takes, gives) in enumerate(stages):
        status(f"[{first + i + 1}/{total or len(stages)}] {label}{name}")
        _require(state, takes, name, "takes")
        state = stage(state)
        _require(state, gives, name, "gives")
        prefix = label.strip(": ").replace(" ", "_")
        _dump(state, first + i, f"{prefix}{'_' if label else ''}{name}")
        if name == until:
            break
    return state


def run_pipeline(model_path: str, options: CompileOptions, until: Optional[str] = None) -> CompileState:
    """Run the stages in order; ``until``: stop after that stage (e.g. "fuse": the kernels `tune` tunes)."""
    from compiler.ranged import has_ranges

    if has_ranges(options.input_shapes):
        return run_ranged_pipeline(model_path, options, until)
    state = CompileState(model_path=model_path, options=options, target_spec=resolve_target_spec(options))
    return _run(state, _stages(), until=until)


def run_ranged_pipeline(model_path: str, options: CompileOptions, until: Optional[str] = None) -> CompileState:
    """Ranged input dims (compiler/ranged.py): the front stages and calibration once at the largest shape, the
    per-graph stages once per bucket (the same calibration table: equal int8 weights, stored once), the bucket
    functions linked into one module, then a dispatching `main` and one build."""
    from compiler import ranged, stages as s

    target = resolve_target_spec(options)
    front, back, module = _stage_groups()
    top = CompileState(model_path=model_path, options=options, target_spec=target)
    top = _run(top, front, label="largest shape: ")
    ranged.require_mask(top.inputs)
    bucket_list = ranged.buckets(ranged.bucket_sizes(top.inputs, options.buckets))
    status(f"compiling {len(bucket_list)} buckets: " + ", ".join(ranged.bucket_name(b)[5:] for b in bucket_list))
    uncalibrated = [st for st in front if st.name != "calibrate"]
    done = []
    for b in bucket_list:
        label = f"{ranged.bucket_name(b)[5:]}: "
        shapes = ranged.concrete_shapes(top.inputs, b)
        if shapes == tuple((i.name, i.shape) for i in top.inputs):
            st = top
        else:
            st = CompileState(model_path=model_path, options=replace(options, input_shapes=shapes),
                              target_spec=target)
            st = _run(st, uncalibrated, label=label)
            st = replace(st, table=top.table, table_sha256=top.table_sha256)
        done.append((b, _run(st, back, label=label)))
    linked = s.link_buckets(top, done)
    stages = [Stage("share_constants", s.share_constants, INTEGER, INTEGER), *module[:1],
              Stage("dispatch", s.dispatch, SCHEDULED, SCHEDULED), *_build_stages()]
    return _run(linked, stages, until=until)


def resume_pipeline(state: CompileState, after: str, until: Optional[str] = None) -> CompileState:
    """Run the stages that follow `after` on a state run_pipeline(..., until=after) returned."""
    stages = _stages()
    names = [st.name for st in stages]
    return _run(state, stages[names.index(after) + 1:], first=names.index(after) + 1, total=len(stages),
                until=until)


def run_seq2seq_pipeline(bundle: str, options: CompileOptions, calibration_text: str) -> CompileState:
    """An encoder-decoder bundle -> one module with `encoder` and `decoder` entry points: the per-graph stages
    for each graph, calibrated on text (the decoder on the states of real fp32 decoding), one int8 scale agreed
    for every tensor crossing graphs or steps, then the two integer functions linked and built together."""
    from compiler import stages as s
    from compiler.seq2seq.calibration import record_feeds
    from compiler.seq2seq.spec import load_spec

    spec = load_spec(bundle)
    target = resolve_target_spec(options)
    feeds = record_feeds(bundle, spec, calibration_text)
    front, back, module = _stage_groups()
    total = 2 * (len(front) + len(back)) + len(module)
    graphs = {"encoder": (spec.encoder, feeds.encoder), "decoder": (spec.decoder, feeds.decoder)}
    states = {}
    for k, (name, (path, samples)) in enumerate(graphs.items()):
        parts = Seq2SeqParts(samples=tuple(samples), samples_source=f"{feeds.sentences} sentences of text")
        st = CompileState(model_path=os.path.join(bundle, path), options=options, target_spec=target, seq2seq=parts)
        states[name] = _run(st, front, k * len(front), total, f"{name}: ")
    states = s.agree_crossings(states, spec)  # one int8 scale per tensor crossing graphs or steps
    for k, name in enumerate(graphs):
        states[name] = _run(states[name], back, 2 * len(front) + k * len(back), total, f"{name}: ")
    linked = s.link(states, spec, bundle)  # both integer functions in one module
    return _run(linked, module, total - len(module), total)


def run_llm_pipeline(model_path: str, options: CompileOptions, calibration_text: str, context: int
                     ) -> CompileState:
    """A decoder-only LM (GGUF file or transformers folder) -> one module with `prefill` and `decode` entry
    points: loaded, calibrated on text and made integer by compiler/llm/build.py (its NumPy twin is the
    specification), then the module stages as for any other model."""
    from compiler.llm.build import llm_state

    state = llm_state(model_path, options, resolve_target_spec(options), calibration_text, context)
    _, _, module = _stage_groups()
    return _run(state, module)


def _require(state: CompileState, phase: Phase, stage: str, what: str) -> None:
    missing = phase.missing(state)
    if missing:
        raise AssertionError(f"stage '{stage}' {what} a {phase.name}, but the state has no {', '.join(missing)}")


def _dump(state: CompileState, index: int, name: str) -> None:
    out = state.options.dump_ir
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, f"{index:02d}_{name}")
    mod = state.lowered_mod if state.lowered_mod is not None else state.relax_mod
    if state.executable is not None:  # codegen: the VM's instructions (the kernels are in the module dumped before)
        text, ext = state.executable.as_text(), ".vm.txt"
    elif mod is not None:
        text, ext = mod.script(show_meta=False), ".relax.py"
    elif state.onnx_model is not None:
        text, ext = onnx.helper.printable_graph(state.onnx_model.graph), ".onnx.txt"
    else:
        return
    with open(base + ext, "w") as f:
        f.write(text)


__all__ = ["CompileState", "run_pipeline", "resume_pipeline", "stage_names", "replace"]
