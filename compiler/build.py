"""The build's steps, from the scheduled Relax module to the executable: the manifest, legalization, row groups,
fusion, tuned kernels, default schedules, shared kernels and code generation, each a function of the module.
compiler/stages.py runs each as a stage of its own, in the order compiler/pipeline.py lists them (so `--dump-ir`
shows every step, and `tune` stops after `fuse`)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import TYPE_CHECKING

from compiler.artifact import MANIFEST_FUNC, Manifest
from compiler.calibrate.collect import index_bounds
from compiler.calibrate.table import CalibrationInfo

if TYPE_CHECKING:
    from compiler.state import CompileState


def tool_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("intformer", "apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def make_manifest(st: CompileState) -> Manifest:
    rep = st.report
    entries = st.entries
    if entries:  # several entry points (seq2seq): inputs/outputs/entry describe the first
        first = entries[0]
        return Manifest(
            inputs=first.inputs, outputs=first.outputs, target=st.target_spec.to_json(),
            tool_versions=tool_versions(), model_sha256=st.model_sha256, calibration_table_sha256=st.table_sha256,
            calibration=rep.calibration, input_ranges={}, report=rep.summary(),
            input_bounds={b.name: [b.lo, b.hi] for b in first.input_bounds}, entry=first.name,
            entries=entries, seq2seq=st.seq2seq.spec_json, llm=st.llm.spec_json,
            token_scales=st.options.token_scales)
    return Manifest(
        inputs=st.inputs, outputs=st.outputs, target=st.target_spec.to_json(),
        tool_versions=tool_versions(), model_sha256=st.model_sha256,
        calibration_table_sha256=st.table_sha256,
        calibration=CalibrationInfo.of_table(st.options.calibration_method, st.table),
        input_ranges={n: list(r) for n, r in st.table.input_ranges},
        report=rep.summary(),
        input_bounds={n: [-rows, rows - 1] for n, rows in index_bounds(st.onnx_model).items()},
        token_scales=st.options.token_scales,
    )


def add_manifest(mod, manifest: Manifest):
    """The module with a function that returns the manifest JSON (what the runtime reads from the library)."""
    from compiler.tvm_compat import BlockBuilder, string_const

    bb = BlockBuilder(mod)
    with bb.function(MANIFEST_FUNC, []):
        bb.emit_func_output(string_const(manifest.dumps()))
    return bb.get()


def legalize(mod, target):
    """Relax ops -> TIR kernels (LegalizeOps, under the target), each annotated with its op pattern."""
    from compiler.tvm_compat import legalize as _legalize

    with target:
        return _legalize(mod)


def group_rows(mod):
    """Row-wise chains (softmax, LayerNorm with its isqrt, lookup chains) outlined as one kernel each
    (compiler/passes/fuse_rows.py), before FuseOps would cut them apart."""
    from compiler.passes.fuse_rows import fuse_rows

    return fuse_rows(mod)[0]


def fuse(mod, target):
    """TVM's FuseOps + FuseTIR for the other kernels (under the target)."""
    from compiler.tvm_compat import fuse_ops

    with target:
        return fuse_ops(mod)


def fuse_kernels(mod, target):
    """The build's three fusion stages in one call (legalize, group_rows, fuse): the kernels the build makes."""
    return fuse(group_rows(legalize(mod, target)), target)


def apply_tuning_records(mod, target, tuning_db, target_name: str) -> tuple[object, int]:
    """Kernels with a record in ``tuning_db`` (for this exact target) -> their tuned schedules; (mod, how many)."""
    if not tuning_db:
        return mod, 0
    from schedules.database import TuningDatabase
    from schedules.tune import apply_database

    db = TuningDatabase(tuning_db, target, target_name, create=False)
    return apply_database(mod, target, db)


def schedule_kernels(mod, target):
    """Every fused kernel not yet scheduled (the int8 GEMMs of schedules/ are, and so are the kernels tuned from
    --db) gets the deterministic default schedule (compiler/passes/default_schedule.py)."""
    from compiler.passes.default_schedule import apply_default_schedules

    return apply_default_schedules(mod, target)


def share_kernels(mod):
    """Kernels equal but for their constants (each layer's requantize, softmax, LayerNorm, GELU) -> one kernel
    taking the constants as a tensor (compiler/passes/share_kernels.py); (module, kernels removed)."""
    from compiler.passes.share_kernels import share_kernels as _share

    return _share(mod)


def codegen(mod, target):
    """The scheduled module -> an executable: kernels, VM plan, int8 constants. The kernels' small scratch
    buffers go on the stack (compiler/passes/stack_scratch.py), not TVM's workspace pool."""
    from compiler.passes.stack_scratch import stack_scratch
    from compiler.tvm_compat import compile_module

    return compile_module(mod, target, tir_passes=[stack_scratch()])
