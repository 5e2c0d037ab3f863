"""Build: a Relax module -> one library with kernels, the VM execution plan, int8 constants and the manifest."""

from __future__ import annotations

import platform
from importlib import metadata

from compiler.artifact import MANIFEST_FUNC, Manifest
from compiler.calibrate.collect import index_bounds
from compiler.calibrate.table import CalibrationInfo


def tool_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("intformer", "apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def make_manifest(st) -> Manifest:
    rep = st.report
    if st.entries:  # several entry points (seq2seq): inputs/outputs/entry describe the first
        first = st.entries[0]
        return Manifest(
            inputs=first.inputs, outputs=first.outputs, target=st.target_spec.to_json(),
            tool_versions=tool_versions(), model_sha256=st.model_sha256, calibration_table_sha256=st.table_sha256,
            calibration=rep.calibration, input_ranges={}, report=rep.summary(),
            input_bounds={n: [lo, hi] for n, lo, hi in first.input_bounds}, entry=first.name,
            entries=st.entries, seq2seq=st.seq2seq)
    return Manifest(
        inputs=st.inputs, outputs=st.outputs, target=st.target_spec.to_json(),
        tool_versions=tool_versions(), model_sha256=st.model_sha256,
        calibration_table_sha256=st.table_sha256,
        calibration=CalibrationInfo.of_table(st.options.calibration_method, st.table),
        input_ranges={n: list(r) for n, r in st.table.input_ranges},
        report=rep.summary(),
        input_bounds={n: [-rows, rows - 1] for n, rows in index_bounds(st.onnx_model).items()},
    )


def fuse_kernels(mod, target):
    """Legalize, then fuse: row-wise chains first (compiler/passes/fuse_rows.py), the rest by TVM's FuseOps."""
    from compiler.passes.fuse_rows import fuse_rows
    from compiler.tvm_compat import fuse_for

    return fuse_for(mod, target, group=lambda m: fuse_rows(m)[0])


def apply_tuning_records(mod, target, st) -> tuple[object, int]:
    """Kernels with a record in ``--db`` (for this exact target) -> their tuned schedules; (mod, how many)."""
    if not st.options.tuning_db:
        return mod, 0
    from schedules.database import TuningDatabase
    from schedules.tune import apply_database

    db = TuningDatabase(st.options.tuning_db, target, st.target_spec.name, create=False)
    return apply_database(mod, target, db)


def schedule_kernels(mod, target):
    """The scheduling step of the build, on the fused kernels: every kernel not yet scheduled (the int8 GEMMs
    of schedules/ are, and so are the kernels tuned from --db) gets the deterministic default schedule."""
    from compiler.passes.default_schedule import apply_default_schedules

    return apply_default_schedules(mod, target)


def build_executable(st):
    """(executable, manifest, tuned kernel count): fuse, tuned schedules from --db, then the build."""
    from compiler.tvm_compat import BlockBuilder, compile_module, string_const

    manifest = make_manifest(st)
    mod = st.lowered_mod if st.lowered_mod is not None else st.relax_mod
    bb = BlockBuilder(mod)
    with bb.function(MANIFEST_FUNC, []):
        bb.emit_func_output(string_const(manifest.dumps()))
    target = st.target_spec.tvm_target()
    mod = fuse_kernels(bb.get(), target)
    mod, tuned = apply_tuning_records(mod, target, st)
    mod = schedule_kernels(mod, target)
    return compile_module(mod, target), manifest, tuned
