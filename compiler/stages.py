"""The stages of the compile pipeline (listed in order in compiler/pipeline.py). Each is thin: it calls
the module that does the work and records the result in a new CompileState."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import onnx

from compiler.config import TensorSpec
from compiler.errors import IntformerError
from compiler.pipeline import CompileState
from compiler.progress import status


def load(st: CompileState) -> CompileState:
    from compiler.frontend.load import file_sha256, load_onnx

    model = load_onnx(st.model_path)
    return replace(st, onnx_model=model, model_sha256=file_sha256(st.model_path))


def pin_shapes(st: CompileState) -> CompileState:
    from compiler.frontend.shapes import bind_input_shapes

    specs = bind_input_shapes(st.onnx_model, st.options.shape_dict())
    return replace(st, inputs=tuple(specs))


def simplify(st: CompileState) -> CompileState:
    from compiler.frontend.simplify import simplify as _simplify

    model = _simplify(st.onnx_model)
    n = sum(1 for node in model.graph.node if node.op_type == "MatMul")
    return replace(st, onnx_model=model, onnx_matmuls=n)


def check_ops_before_folding(st: CompileState) -> CompileState:
    from compiler.frontend.op_support import check_supported_ops

    check_supported_ops(st.onnx_model, source=st.model_path, before_folding=True)
    return st


def check_ops(st: CompileState) -> CompileState:
    from compiler.frontend.op_support import check_supported_ops

    check_supported_ops(st.onnx_model, source=st.model_path)
    return st


def calibrate(st: CompileState) -> CompileState:
    from compiler.calibrate import collect
    from compiler.calibrate.table import CalibrationTable
    from compiler.npz import load_samples

    opts = st.options
    if opts.calibration_table:
        table = CalibrationTable.load(opts.calibration_table)
        shapes = dict(table.input_shapes)
        want = {s.name: s.shape for s in st.inputs}
        if shapes != want:
            raise IntformerError(f"{opts.calibration_table}: made for input shapes {shapes}, but this compile "
                                 f"uses {want}; recalibrate or pass matching --input-shape")
        if table.model_sha256 != st.model_sha256:
            status(f"warning: {opts.calibration_table} was made from a different model file "
                   f"(sha256 {table.model_sha256[:12]} != {st.model_sha256[:12]})")
    else:
        if opts.calibration_data:
            samples = load_samples(opts.calibration_data, list(st.inputs))
            source = "data"
        else:
            status("warning: no --calibration-data given: calibrating on synthetic inputs; accuracy on real "
                   "data needs real calibration samples")
            samples = collect.synthetic_samples(st.onnx_model, list(st.inputs))
            source = "synthetic"
        if opts.calibration_samples:
            samples = samples[: opts.calibration_samples]
        table = _calibrate_smoothed(st, samples, source)
    digest = hashlib.sha256(json.dumps(table.to_json(), sort_keys=True).encode()).hexdigest()
    return replace(st, table=table, table_sha256=digest)


def _calibrate_smoothed(st: CompileState, samples, source):
    """Two observer passes: channel maxima -> smoothing factors; then ranges of the smoothed graph."""
    from compiler.calibrate import collect
    from compiler.smooth import apply_smoothing, smoothing_candidates, smoothing_factors

    alpha = st.options.smoothing_alpha  # None: chosen per activation
    factors = {}
    model = st.onnx_model
    if alpha is None or alpha > 0:
        cands = list(smoothing_candidates(model))
        absmax, rows = collect.channel_stats(model, samples, cands)
        factors = smoothing_factors(model, absmax, rows, alpha)
        model = onnx.ModelProto()
        model.CopyFrom(st.onnx_model)
        apply_smoothing(model, factors)
    table = collect.collect(model, samples, st.model_sha256, list(st.inputs), source=source)
    return replace(table, smoothing_alpha=-1.0 if alpha is None else alpha,
                   smoothing=tuple((n, tuple(float(x) for x in f)) for n, f in factors.items()))


def smooth(st: CompileState) -> CompileState:
    from compiler.smooth import apply_smoothing

    factors = st.table.smoothing_factors()
    if not factors:
        return st
    model = onnx.ModelProto()
    model.CopyFrom(st.onnx_model)
    return replace(st, onnx_model=apply_smoothing(model, factors))


def annotate(st: CompileState) -> CompileState:
    from compiler.annotate import insert_qdq
    from compiler.calibrate.methods import METHODS

    method = METHODS.get(st.options.calibration_method)
    if method is None:
        raise IntformerError(f"unknown calibration method '{st.options.calibration_method}'; "
                             f"known: {', '.join(METHODS)}")
    model = onnx.ModelProto()
    model.CopyFrom(st.onnx_model)
    model, _ = insert_qdq(model, st.table, method)
    return replace(st, onnx_model=model)


def import_relax(st: CompileState) -> CompileState:
    from compiler.tvm_compat import import_onnx

    try:
        mod = import_onnx(st.onnx_model)
    except Exception as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise IntformerError(f"{st.model_path}: the Relax ONNX importer failed: {first}") from None
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if hasattr(ret, "fields") else [ret]
    names = [o.name for o in st.onnx_model.graph.output]
    outputs = []
    for name, ty in zip(names, fields):
        shape = tuple(int(v) for v in ty.shape.values)
        outputs.append(TensorSpec(name, shape, str(ty.dtype)))
    return replace(st, relax_mod=mod, outputs=tuple(outputs))


def integerize(st: CompileState) -> CompileState:
    from compiler.passes.fold_qdq import FoldQDQ
    from compiler.passes.integerize_matmul import IntegerizeMatmul
    from compiler.passes.propagate_scales import PropagateScales
    from compiler.tvm_compat import dead_code_elimination

    mod = st.relax_mod
    for p in (IntegerizeMatmul(), FoldQDQ(), dead_code_elimination(), PropagateScales(), dead_code_elimination()):
        mod = p(mod)
    return replace(st, relax_mod=mod)


def verify(st: CompileState) -> CompileState:
    from compiler.passes.op_report import list_ops, summarize

    report = summarize(list_ops(st.relax_mod), st.onnx_matmuls)
    mm = report["matmuls"]
    if mm["int8"] < mm["total"]:
        status(f"warning: {mm['total'] - mm['int8']} of {mm['total']} matmuls stay float")
    allowed = set(st.options.allow_float)
    left = [op for op in report["float_ops"]
            if op not in allowed and op.split(".")[-1] not in allowed]
    if left and st.options.integer_only:
        counts = report["float_op_counts"]
        raise IntformerError(
            f"{st.model_path}: {sum(counts[o] for o in left)} op(s) would still compute in float: "
            + ", ".join(f"{o} x{counts[o]}" for o in left)
            + "; intformer has no integer rule for them. Pass --allow-float "
            + " --allow-float ".join(o.split(".")[-1] for o in left) + " to accept float there")
    return replace(st, report=report)


def schedule(st: CompileState) -> CompileState:
    """Integer matmuls onto the scheduled kernels of schedules/ (the reference keeps the unlowered graph)."""
    from compiler.passes.lower_int_matmul import LowerIntMatmul

    p = LowerIntMatmul(st.target_spec.tvm_target())
    mod = p(st.relax_mod)
    return replace(st, lowered_mod=mod)


def build(st: CompileState) -> CompileState:
    from compiler.build import build_executable

    executable, manifest, tuned = build_executable(st)
    if st.options.tuning_db:
        status(f"applied {tuned} tuned kernels from {st.options.tuning_db}")
    return replace(st, executable=executable, manifest=manifest, report={**st.report, "tuned_kernels": tuned})
