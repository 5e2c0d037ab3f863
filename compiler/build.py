"""Build: a Relax module -> one library with kernels, the VM execution plan, int8 constants and the manifest."""

from __future__ import annotations

import platform
from importlib import metadata

from compiler.artifact import MANIFEST_FUNC, Manifest
from compiler.calibrate.collect import index_bounds


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
            calibration=rep["calibration"], input_ranges={},
            report={k: rep.get(k) for k in ("matmuls", "requantize_ops", "float_ops", "float_op_counts", "ops")},
            input_bounds={n: [lo, hi] for n, lo, hi in first.input_bounds}, entry=first.name,
            entries=st.entries, seq2seq=st.seq2seq)
    return Manifest(
        inputs=st.inputs, outputs=st.outputs, target=st.target_spec.to_json(),
        tool_versions=tool_versions(), model_sha256=st.model_sha256,
        calibration_table_sha256=st.table_sha256,
        calibration={"method": st.options.calibration_method, "source": st.table.source,
                     "samples": st.table.num_samples, "percentile": st.table.percentile},
        input_ranges={n: list(r) for n, r in st.table.input_ranges},
        report={k: rep.get(k) for k in ("matmuls", "requantize_ops", "float_ops", "float_op_counts", "ops")},
        input_bounds={n: [-rows, rows - 1] for n, rows in index_bounds(st.onnx_model).items()},
    )


def build_executable(st):
    from compiler.tvm_compat import BlockBuilder, build, string_const

    manifest = make_manifest(st)
    mod = st.lowered_mod if st.lowered_mod is not None else st.relax_mod
    bb = BlockBuilder(mod)
    with bb.function(MANIFEST_FUNC, []):
        bb.emit_func_output(string_const(manifest.dumps()))
    mod = bb.get()
    executable = build(mod, st.target_spec)
    return executable, manifest
