"""The stages of the compile pipeline (listed in order in compiler/pipeline.py). Each is thin: it calls
the module that does the work and records the result in a new CompileState."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import onnx

from compiler.artifact import IOQuant
from compiler.config import TensorSpec
from compiler.errors import IntformerError
from compiler.progress import status, warn
from compiler.state import CompileState

if TYPE_CHECKING:
    from compiler.seq2seq.spec import Seq2SeqSpec


def load(st: CompileState) -> CompileState:
    from compiler.frontend.load import file_sha256, load_onnx

    model = load_onnx(st.model_path)
    return replace(st, onnx_model=model, model_sha256=file_sha256(st.model_path))


def pin_shapes(st: CompileState) -> CompileState:
    from compiler.frontend.shapes import bind_input_shapes, graph_inputs

    if not graph_inputs(st.onnx_model):
        raise IntformerError(f"{st.model_path}: the model has no inputs (every value is a constant), so there is "
                             "nothing to compile; export it with its inputs (e.g. input_ids) as graph inputs")
    specs = bind_input_shapes(st.onnx_model, st.options.shape_dict())
    return replace(st, inputs=tuple(specs))


def simplify(st: CompileState) -> CompileState:
    from compiler.frontend.simplify import simplify as _simplify

    model = _simplify(st.onnx_model)
    n = sum(1 for node in model.graph.node if node.op_type == "MatMul")
    return replace(st, onnx_model=model, onnx_matmuls=n)


def check_ops(st: CompileState) -> CompileState:
    """Custom or unknown ops, before simplify folds anything: one error listing every op and node."""
    from compiler.frontend.op_support import check_supported_ops

    check_supported_ops(st.onnx_model, source=st.model_path, before_folding=True)
    return st


def check_import(st: CompileState) -> CompileState:
    """After simplify: every remaining op has a Relax converter."""
    from compiler.frontend.op_support import check_supported_ops

    check_supported_ops(st.onnx_model, source=st.model_path)
    return st


def calibrate(st: CompileState) -> CompileState:
    from compiler.calibrate import collect
    from compiler.calibrate.table import CalibrationTable
    from compiler.npz import check_index_bounds, load_samples

    opts = st.options
    if opts.calibration_table:
        table = CalibrationTable.load(opts.calibration_table)
        shapes = dict(table.input_shapes)
        want = {s.name: s.shape for s in st.inputs}
        inside = all(s.ranges and s.name in shapes and s.accepts(shapes[s.name]) for s in st.inputs)
        if shapes != want and not inside:  # a table made at a shape inside the ranges serves them (padding-free)
            raise IntformerError(f"{opts.calibration_table}: made for input shapes {shapes}, but this compile "
                                 f"uses {want}; recalibrate or pass matching --input-shape")
        if table.model_sha256 != st.model_sha256:
            warn(f"{opts.calibration_table} was made from a different model file "
                   f"(sha256 {table.model_sha256[:12]} != {st.model_sha256[:12]})")
    elif st.seq2seq.samples:  # feeds given by the caller (seq2seq: text, and decoder states of real decoding)
        table = _calibrate_smoothed(st, list(st.seq2seq.samples), st.seq2seq.samples_source or "data")
    else:
        if opts.calibration_data:
            samples = load_samples(opts.calibration_data, list(st.inputs))
            check_index_bounds(opts.calibration_data, samples, collect.index_bounds(st.onnx_model))
            source = "data"
        else:
            status("warning: no --calibration-data given: calibrating on synthetic inputs; accuracy on real "
                   "data needs real calibration samples")
            samples = collect.synthetic_samples(st.onnx_model, list(st.inputs))
            source = "synthetic"
        if opts.calibration_samples:
            samples = samples[: opts.calibration_samples]
        table = _calibrate_smoothed(st, samples, source)
    digest = table.sha256()
    return replace(st, table=table, table_sha256=digest)


def _calibrate_smoothed(st: CompileState, samples, source):
    """Two observer passes: channel maxima -> smoothing factors; then ranges of the smoothed graph."""
    from compiler.calibrate import collect, padding
    from compiler.smooth import apply_smoothing, row_quantized_activations, smoothing_candidates, smoothing_factors

    alpha = st.options.smoothing_alpha  # None: chosen per activation
    factors = {}
    model = st.onnx_model
    positions = padding.find_token_positions(model, list(st.inputs), st.model_path)  # padding stays out
    samples = [_pad_to_specs(f, st.inputs) for f in samples]
    if st.options.length_augmentation:
        samples = collect.augment_lengths(samples, list(st.inputs))
    mask_name = collect.mask_input(list(st.inputs))
    if alpha is None or alpha > 0:
        cands = list(smoothing_candidates(model))
        absmax, rows = collect.channel_stats(model, samples, cands, mask_name=mask_name, positions=positions)
        per_row = frozenset(row_quantized_activations(model)) if st.options.token_scales else frozenset()
        factors = smoothing_factors(model, absmax, rows, alpha, per_row)
        model = onnx.ModelProto()
        model.CopyFrom(st.onnx_model)
        apply_smoothing(model, factors)
        positions = padding.extend(positions, model)
    table = collect.collect(model, samples, st.model_sha256, list(st.inputs), source=source, positions=positions)
    return replace(table, smoothing_alpha=-1.0 if alpha is None else alpha,
                   smoothing=tuple((n, tuple(float(x) for x in f)) for n, f in factors.items()))


def _pad_to_specs(feed: dict, specs) -> dict:
    """A sample shorter than the compiled shape (a ranged compile's largest) zero-padded to it: the mask's
    zeros mark the padding, which calibration leaves out."""
    import numpy as np

    out = dict(feed)
    for s in specs:
        a = feed.get(s.name)
        if a is not None and tuple(a.shape) != s.shape and len(a.shape) == len(s.shape):
            out[s.name] = np.pad(a, [(0, t - n) for n, t in zip(a.shape, s.shape)])
    return out


def smooth(st: CompileState) -> CompileState:
    from compiler.smooth import apply_smoothing

    factors = st.table.smoothing_factors()
    if not factors:
        return st
    _check_smoothing(st, factors)
    model = onnx.ModelProto()
    model.CopyFrom(st.onnx_model)
    return replace(st, onnx_model=apply_smoothing(model, factors))


def _check_smoothing(st: CompileState, factors: dict) -> None:
    """A saved table's smoothing factors fit this model: one per row of every weight the activation feeds."""
    from compiler.smooth import smoothing_candidates

    where = st.options.calibration_table or "the calibration table"
    weights = {i.name: tuple(i.dims) for i in st.onnx_model.graph.initializer}
    cands = smoothing_candidates(st.onnx_model)
    for name, f in factors.items():
        rows = {weights[w][0] for w in cands.get(name, ()) if weights[w]}
        if name not in cands or rows != {len(f)}:
            raise IntformerError(f"{where}: smoothing factors for '{name}' ({len(f)} channels) do not fit this "
                                 f"model ({'no such MatMul input' if name not in cands else f'{sorted(rows)} rows'});"
                                 " it was made for another model: recalibrate with --calibration-data")


def annotate(st: CompileState) -> CompileState:
    from compiler.annotate import insert_qdq
    from compiler.calibrate.methods import METHODS

    method = METHODS.get(st.options.calibration_method)
    if method is None:
        raise IntformerError(f"unknown calibration method '{st.options.calibration_method}'; "
                             f"known: {', '.join(METHODS)}")
    model = onnx.ModelProto()
    model.CopyFrom(st.onnx_model)
    try:
        model, _ = insert_qdq(model, st.table, method)
    except IntformerError as e:  # a saved table that lacks this model's tensors: name the file
        if not st.options.calibration_table:
            raise
        raise IntformerError(f"{st.options.calibration_table}: {e}") from None
    return replace(st, onnx_model=model)


def quantize_io(st: CompileState) -> CompileState:
    """Inputs/outputs that cross to another graph or decoding step become int8 (none for a single model)."""
    if not st.seq2seq.io_qparams:
        return st
    from compiler.seq2seq.boundaries import quantize_io as _quantize_io

    names = {i.name for i in st.onnx_model.graph.input} | {o.name for o in st.onnx_model.graph.output}
    qp = {q.name: (q.scale, q.zero_point) for q in st.seq2seq.io_qparams if q.name in names}
    model = _quantize_io(st.onnx_model, qp)
    inputs = tuple(replace(s, dtype="int8") if s.name in qp else s for s in st.inputs)
    return replace(st, onnx_model=model, inputs=inputs)


def agree_crossings(states: dict[str, CompileState], spec: Seq2SeqSpec) -> dict[str, CompileState]:
    """seq2seq: one symmetric int8 scale for every encoder output the decoder reads and every decoder state,
    from the producing graph's calibration ranges (compiler/seq2seq/boundaries.py)."""
    from compiler.calibrate.methods import METHODS
    from compiler.seq2seq.boundaries import crossing_qparams

    enc, dec = states["encoder"], states["decoder"]
    method = METHODS.get(enc.options.calibration_method)
    if method is None:
        raise IntformerError(f"unknown calibration method '{enc.options.calibration_method}'; "
                             f"known: {', '.join(METHODS)}")
    qp = crossing_qparams(spec, enc.table, dec.table, method)
    io = tuple(IOQuant(n, sc, zp) for n, (sc, zp) in sorted(qp.items()))
    return {name: replace(st, seq2seq=replace(st.seq2seq, io_qparams=io)) for name, st in states.items()}


def link(states: dict[str, CompileState], spec: Seq2SeqSpec, bundle: str) -> CompileState:
    """seq2seq: the integer `main` of each graph becomes the entry point of its name in one module."""
    from compiler.seq2seq.link import link_states

    return link_states(states, spec, bundle)


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
    propagate = PropagateScales()
    try:
        for p in (IntegerizeMatmul(st.options.token_scales), FoldQDQ(), dead_code_elimination(), propagate,
                  dead_code_elimination()):
            mod = p(mod)
    except ValueError as e:  # fixed_point.quantize_multiplier: a ratio of scales beyond int32 fixed point
        if "requantization multiplier" not in str(e):
            raise
        where = st.options.calibration_table or st.options.calibration_data or "the calibration"
        raise IntformerError(f"{where}: the calibrated ranges give a {str(e).splitlines()[0]}: some range is "
                             "implausibly wide (e.g. 1e30); recalibrate on real inputs with --calibration-data"
                             ) from None
    return replace(st, relax_mod=mod, probes=propagate.probes)


def verify(st: CompileState) -> CompileState:
    from compiler.passes.op_report import list_ops, summarize
    from compiler.report import CompileReport

    report = CompileReport.of(summarize(list_ops(st.relax_mod), st.onnx_matmuls))
    mm = report.matmuls
    if mm.int8 < mm.total:
        status(f"warning: {mm.total - mm.int8} of {mm.total} matmuls stay float")
    allowed = set(st.options.allow_float)
    left = [op for op in report.float_ops
            if op not in allowed and op.split(".")[-1] not in allowed]
    if left and st.options.integer_only:
        counts = dict(report.float_op_counts)
        raise IntformerError(
            f"{st.model_path}: {sum(counts[o] for o in left)} op(s) would still compute in float: "
            + ", ".join(f"{o} x{counts[o]}" for o in left)
            + "; intformer has no integer rule for them. Pass --allow-float "
            + " --allow-float ".join(o.split(".")[-1] for o in left) + " to accept float there")
    return replace(st, report=report)


def schedule(st: CompileState) -> CompileState:
    """Integer matmuls onto the scheduled kernels of schedules/, their requantize epilogues fused in (the
    reference keeps the unlowered graph)."""
    from compiler.passes.fuse_gemm_epilogue import FuseGemmEpilogue
    from compiler.passes.lower_int_matmul import LowerIntMatmul

    target = st.target_spec.tvm_target()
    mod = st.relax_mod
    rows_free = len(st.buckets) > 1  # the buckets' kernels differ only in length: share_buckets makes them one
    active = {}
    if rows_free:  # the GEMMs over a bucket's rows compute only the input's (the rest of the bucket: zeros)
        from compiler import ranged

        mod, active = ranged.add_length_params(mod, [b.as_dict() for b in st.buckets])
    for p in (FuseGemmEpilogue(target, rows_free, active), LowerIntMatmul(target, rows_free, active)):
        mod = p(mod)
    return replace(st, lowered_mod=mod)


# ---- the build (compiler/build.py): each step a stage on `lowered_mod`, then the executable ---------------------

def manifest(st: CompileState) -> CompileState:
    """The manifest (names, shapes, scales, target, versions, hashes) made and added to the module as a function."""
    from compiler.build import add_manifest, make_manifest

    m = make_manifest(st)
    mod = st.lowered_mod if st.lowered_mod is not None else st.relax_mod
    return replace(st, manifest=m, lowered_mod=add_manifest(mod, m))


def pair_requantize(st: CompileState) -> CompileState:
    """x86: the requantizations left in the graph (the row kernels') in int32 lanes with a high multiply."""
    from compiler.passes.pair_row_requantize import PairRowRequantize

    return replace(st, lowered_mod=PairRowRequantize(st.target_spec.tvm_target())(st.lowered_mod))


def legalize(st: CompileState) -> CompileState:
    """Relax ops -> TIR kernels called through call_tir, each with its op pattern."""
    from compiler.build import legalize as _legalize

    return replace(st, lowered_mod=_legalize(st.lowered_mod, st.target_spec.tvm_target()))


def fuse_rows(st: CompileState) -> CompileState:
    """Row-wise chains (softmax, LayerNorm with its isqrt, lookup chains) -> one kernel each."""
    from compiler.build import group_rows

    return replace(st, lowered_mod=group_rows(st.lowered_mod))


def fuse(st: CompileState) -> CompileState:
    """TVM's FuseOps + FuseTIR for the other kernels: the kernels the library will have (what `tune` tunes)."""
    from compiler.build import fuse as _fuse

    return replace(st, lowered_mod=_fuse(st.lowered_mod, st.target_spec.tvm_target()))


def apply_db(st: CompileState) -> CompileState:
    """Kernels with a record in --db (for this exact target) -> their tuned schedules."""
    from compiler.build import apply_tuning_records

    mod, tuned = apply_tuning_records(st.lowered_mod, st.target_spec.tvm_target(), st.options.tuning_db,
                                      st.target_spec.name)
    if st.options.tuning_db:
        status(f"applied {tuned} tuned kernels from {st.options.tuning_db}")
    return replace(st, lowered_mod=mod, report=replace(st.report, tuned_kernels=tuned))


def default_schedule(st: CompileState) -> CompileState:
    """Every kernel not scheduled yet -> the deterministic default schedule."""
    from compiler.build import schedule_kernels

    return replace(st, lowered_mod=schedule_kernels(st.lowered_mod, st.target_spec.tvm_target()))


def share_kernels(st: CompileState) -> CompileState:
    """Kernels equal but for their constants -> one kernel each, the constants passed as small tensors."""
    from compiler.build import share_kernels as _share

    return replace(st, lowered_mod=_share(st.lowered_mod)[0])


def share_buckets(st: CompileState) -> CompileState:
    """Ranged dims: the buckets' copies of a kernel -> one kernel over a symbolic length, where exact and as fast."""
    from compiler import ranged
    from compiler.passes.share_buckets import share_buckets as _share

    buckets = [b.as_dict() for b in st.buckets]
    mod, _ = _share(st.lowered_mod, buckets, [ranged.bucket_name(b) for b in buckets])
    return replace(st, lowered_mod=mod)


def bound_rows(st: CompileState) -> CompileState:
    """Ranged dims: row kernels over a bucket's tokens compute only the input's rows, as its GEMMs do."""
    from compiler import ranged
    from compiler.passes.bound_rows import bound_rows as _bound

    buckets = [b.as_dict() for b in st.buckets]
    if not buckets or len(buckets[0]) != 1:  # fixed shapes, or a batch range too: the rows are not a prefix
        return st
    mod, _ = _bound(st.lowered_mod, {ranged.bucket_name(b): next(iter(b.values())) for b in buckets})
    return replace(st, lowered_mod=mod)


def codegen(st: CompileState) -> CompileState:
    """The scheduled module -> the executable: kernels, VM plan, int8 constants for the target."""
    from compiler.build import codegen as _codegen

    return replace(st, executable=_codegen(st.lowered_mod, st.target_spec.tvm_target()))


def link_buckets(top: CompileState, done: list[tuple[dict[str, int], CompileState]]) -> CompileState:
    """Ranged dims: each bucket's integer `main` becomes the function named after its sizes in one module (the
    reference interpreter runs any of them); inputs/outputs carry their ranges."""
    from compiler import ranged

    mod = ranged.link({ranged.bucket_name(b): st.relax_mod for b, st in done})
    outputs = ranged.with_input_lows(ranged.output_specs([(b, st.outputs) for b, st in done]), top.inputs)
    largest = done[-1][1]
    report = replace(largest.report, buckets=tuple(ranged.bucket_name(b)[5:] for b, _ in done))
    return replace(largest, inputs=top.inputs, outputs=outputs, relax_mod=mod, lowered_mod=None, report=report,
                   buckets=tuple(ranged.Bucket.of(b) for b, _ in done))


def share_constants(st: CompileState) -> CompileState:
    """Ranged dims: a smaller bucket's length-dependent constants -> slices of the largest bucket's (stored once)."""
    from compiler import ranged
    from compiler.passes.share_bucket_constants import share_bucket_constants

    buckets = [b.as_dict() for b in st.buckets]
    mod, _ = share_bucket_constants(st.relax_mod, buckets, [ranged.bucket_name(b) for b in buckets])
    return replace(st, relax_mod=mod)


def dispatch(st: CompileState) -> CompileState:
    """Ranged dims: `main` takes any shape in the ranges, pads to the smallest bucket that fits, slices back."""
    from compiler.ranged import add_dispatch

    buckets = [b.as_dict() for b in st.buckets]
    return replace(st, lowered_mod=add_dispatch(st.lowered_mod, st.inputs, st.outputs, buckets))
