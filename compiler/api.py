"""The public Python API. The CLI (compiler/cli.py) only parses arguments and calls these functions."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional

import numpy as np

from compiler.artifact import MANIFEST_FUNC, Manifest, manifest_path
from compiler.config import CompileOptions
from compiler.errors import Interrupted, IntformerError
from compiler.io_safety import atomic_output, check_output, check_range, check_threads, write_text
from compiler.progress import progress_bar, status, warn
from compiler.report import CompileReport

if TYPE_CHECKING:
    import tvm

    from compiler.llm.integer import IntLlama
    from compiler.ranged import Bucket


@dataclass(frozen=True)
class CompileResult:
    library: str
    manifest: Manifest
    report: CompileReport
    module: Optional[tvm.IRModule] = None  # the integer Relax module the library was built from
    buckets: tuple[Bucket, ...] = ()  # ranged dims: the compiled sizes, one per bucket function
    llm_model: Optional[IntLlama] = None  # decoder-only LMs: the integer NumPy twin (compiler/llm/integer.py)

    def reference(self, entry: str = ""):
        """The NumPy twin of the library (of its entry point `entry` when it has several):
        `reference()(feed) -> list of outputs`, bit-exact. With ranged dims it pads the feed to the bucket
        the library picks, runs that bucket's integer function and slices the outputs back."""
        from compiler.intmath.interpreter import Interpreter

        if self.buckets:
            from compiler import ranged

            m, bl = self.manifest, [b.as_dict() for b in self.buckets]
            interps = {}

            def run_ranged(feed):
                b = ranged.pick_bucket(m.inputs, feed, bl)
                name = ranged.bucket_name(b)
                interp = interps.setdefault(name, Interpreter(self.module, name))
                padded = ranged.pad_feed(m.inputs, feed, b)
                outs = interp(*[padded[s.name] for s in m.inputs])
                outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
                return ranged.slice_outputs(m.outputs, outs, ranged.input_sizes(m.inputs, feed))
            return run_ranged
        if entry:
            interp, specs = Interpreter(self.module, entry), self.manifest.entry_spec(entry).inputs
        else:
            interp, specs = Interpreter(self.module), self.manifest.inputs
        names = [s.name for s in specs]
        return lambda feed: interp(*[np.asarray(feed[n]) for n in names])


# an imported Bergamot/Marian model: static shapes of the bundle (batch, source and target tokens)
MARIAN_BATCH, MARIAN_MAX_SRC, MARIAN_MAX_TGT = 8, 64, 128


def is_marian_folder(path: str) -> bool:
    """A Bergamot/Marian model folder: a model .bin, a vocabulary .spm and a config .yml."""
    if not os.path.isdir(path):
        return False
    names = os.listdir(path)
    return all(any(n.endswith(ext) for n in names) for ext in (".bin", ".spm", ".yml"))


def compile_model(model_path: str, output: str, options: CompileOptions = CompileOptions(),
                  report_path: str | None = None, save_calibration_table: str | None = None,
                  calibration_text: str | None = None, context: int | None = None) -> CompileResult:
    """ONNX file, seq2seq bundle folder, Bergamot/Marian folder, or a decoder-only LM (GGUF file or LLaMA-family
    transformers folder) -> integer library at `output` (+ `<output>.manifest.json`, + the report if asked).
    Encoder-decoders and LMs need `calibration_text`; `context`: an LM's cache positions."""
    check_options(options)  # before the imports below (TVM takes seconds): a bad -o fails at once
    inputs = {"MODEL": model_path, "--calibration-data": options.calibration_data,
              "--calibration-table": options.calibration_table, "--calibration-text": calibration_text}
    check_output(output, "-o", inputs)
    check_output(manifest_path(output), "-o (its .manifest.json)", inputs)
    for flag, path in (("--report", report_path), ("--save-calibration-table", save_calibration_table)):
        if path:
            check_output(path, flag, {**inputs, "-o": output})
    if report_path and save_calibration_table:
        check_output(save_calibration_table, "--save-calibration-table", {"--report": report_path})
    if options.dump_ir:
        check_output(options.dump_ir, "--dump-ir", kind="folder")
    from compiler.llm.build import DEFAULT_CONTEXT, check_model_path, is_llm

    llm = is_llm(model_path)
    if context is not None and not llm:
        raise IntformerError(f"{model_path}: --context is for decoder-only LMs (a .gguf file or a LLaMA-family "
                             "transformers folder)")
    if llm:
        check_model_path(model_path)
        if not calibration_text:
            raise IntformerError(f"{model_path}: a language model needs --calibration-text FILE (plain text, one "
                                 "document a line)")
        if not os.path.isfile(calibration_text):
            raise IntformerError(f"{calibration_text}: no such file (--calibration-text: plain text, one document "
                                 "a line)")
        from compiler.llm.perplexity import read_documents

        if not any(t.strip() for t in read_documents(calibration_text)):  # before loading the model (seconds)
            raise IntformerError(f"{calibration_text}: no text to calibrate on (give plain text, one document a "
                                 "line)")
        if options.calibration_data or options.calibration_table or save_calibration_table:
            raise IntformerError(f"{model_path}: a language model is calibrated from --calibration-text, not "
                                 "--calibration-data/--calibration-table (nor saved with --save-calibration-table)")
    from compiler.pipeline import run_llm_pipeline, run_pipeline, run_seq2seq_pipeline
    from compiler.seq2seq.spec import is_bundle
    from compiler.tvm_compat import export_library

    seq2seq = is_bundle(model_path) or is_marian_folder(model_path)
    if seq2seq and not calibration_text:
        raise IntformerError(f"{model_path}: an encoder-decoder needs --calibration-text FILE (one source sentence "
                             "a line)")
    if seq2seq and (options.calibration_data or options.calibration_table or save_calibration_table):
        raise IntformerError(f"{model_path}: an encoder-decoder is calibrated from --calibration-text, not "
                             "--calibration-data/--calibration-table (nor saved with --save-calibration-table)")
    if llm:
        st = run_llm_pipeline(model_path, options, calibration_text, context or DEFAULT_CONTEXT)
    elif is_bundle(model_path):
        st = run_seq2seq_pipeline(model_path, options, calibration_text)
    elif seq2seq:
        from compiler.seq2seq.marian import import_marian

        with tempfile.TemporaryDirectory(prefix="intformer-bundle-") as tmp:
            status(f"importing the Marian model {model_path}")
            import_marian(model_path, tmp, MARIAN_BATCH, MARIAN_MAX_SRC, MARIAN_MAX_TGT)
            st = run_seq2seq_pipeline(tmp, options, calibration_text)
    elif os.path.isdir(model_path):
        raise IntformerError(f"{model_path}: a folder that is neither a seq2seq bundle (seq2seq.json) nor a "
                             "Bergamot/Marian model (.bin, .spm, .yml)")
    else:
        st = run_pipeline(model_path, options)
    # through a temporary name: an interrupted compile never leaves a half-written library
    with atomic_output(output, suffix=".so") as tmp:  # the suffix tells TVM to link a shared library
        export_library(st.executable, tmp, st.target_spec.cross_compiler)
    write_text(manifest_path(output), st.manifest.dumps())
    report = replace(st.report, model=os.path.abspath(model_path), target=st.target_spec.to_json(),
                     calibration=st.manifest.calibration)
    if report_path:
        write_text(report_path, json.dumps(report.to_json(), indent=1))
    if save_calibration_table:
        st.table.save(save_calibration_table)
    mm = report.matmuls
    status(f"wrote {output}: {mm.int8}/{mm.total} matmuls int8, target {st.target_spec.name}")
    return CompileResult(output, st.manifest, report, st.relax_mod, st.buckets, st.llm.model)


def check_options(options: CompileOptions) -> None:
    """The numbers and names in ``options`` that can be checked before any work starts."""
    from compiler.calibrate.methods import METHODS

    check_range(options.calibration_samples, "--calibration-samples", 0, float("inf"),
                "a sample count of at least 1 (0: every sample)")
    check_range(options.smoothing_alpha, "--smoothing-alpha", 0.0, 1.0,
                "a number between 0 and 1 (0 turns smoothing off; leave it out to choose per input)")
    if options.calibration_method not in METHODS:
        raise IntformerError(f"--calibration-method {options.calibration_method}: unknown; "
                             f"known: {', '.join(METHODS)}")


@dataclass(frozen=True)
class TunedTask:
    name: str
    kind: str  # gemm, bmm, fused
    calls: int  # per inference
    records_before: int  # measured candidates already in the database
    trials: int  # measured this run
    failed: int
    best_us: float | None  # best latency measured this run


@dataclass(frozen=True)
class TuneSummary:
    database: str  # the target's folder inside --db
    target: str
    tasks: tuple[TunedTask, ...]
    skipped: tuple[str, ...]  # kernels not tuned, with the reason


def tune_model(model_path: str, db_dir: str, options: CompileOptions = CompileOptions(), tune_options=None,
               remote=None) -> TuneSummary:
    """Tune the model's integer kernels for ``options.target`` into the database folder ``db_dir``.

    Runs the compile pipeline up to its `fuse` stage (same options as `compile`), extracts the kernels and
    spends ``tune_options.trials`` MetaSchedule measurements on them (XGBoost cost model). Records are written
    as they are measured: an interrupted run loses nothing, and running again resumes. ``remote``
    (targets.remote.RemoteSpec) measures candidates on that device instead of here."""
    if tune_options is not None:
        check_range(tune_options.trials, "--trials", 1, float("inf"), "at least 1")
        check_range(tune_options.trials_per_iter, "--trials-per-iter", 1, float("inf"), "at least 1")
    check_options(options)
    check_output(db_dir, "--db", {"MODEL": model_path}, kind="folder")  # before TVM's import (seconds)
    from compiler.pipeline import resolve_target_spec, run_pipeline
    from compiler.progress import tuning_progress
    from schedules.database import TuningDatabase
    from schedules.tune import TuneOptions, extract_tasks, tune

    tune_options = tune_options or TuneOptions()
    spec = resolve_target_spec(options)
    os.makedirs(db_dir, exist_ok=True)
    db = TuningDatabase(db_dir, spec.tvm_target(), spec.name)  # a damaged database fails now, not after the
    st = run_pipeline(model_path, options, until="fuse")  # pipeline: the kernels the build makes
    target = st.target_spec.tvm_target()
    status("extracting kernels")
    skipped: list[str] = []
    tasks = extract_tasks(st.lowered_mod, target, skipped, tune_options.kernels)
    before = {t.name: db.records_for(t.workload) for t in tasks}
    if remote is not None:
        from targets.remote import tuning_runner

        tune_options = replace(tune_options, runner=tuning_runner(remote))
    if st.target_spec.cross_compiler:
        from targets.toolchain import tuning_export

        if remote is None:
            raise IntformerError(f"target {st.target_spec.name} does not run on this machine: tune on the device "
                                 "with --rpc HOST:PORT (e.g. `intformer board start`) or --tracker/--key")
        tune_options = replace(tune_options, builder_export=tuning_export(st.target_spec))
    status(f"tuning {len(tasks)} kernels for {st.target_spec.name}, {tune_options.trials} trials; "
           f"records in {db.path}")
    with tuning_progress(tune_options.trials) as update, _interrupt_keeps(db.path) as stop_if_interrupted:
        def on_update(name, prog):
            stop_if_interrupted()
            update(name, sum(prog.trials.values()), prog.best_us.get(name))

        progress = tune(tasks, target, db, tune_options, on_update)
    rows = tuple(TunedTask(t.name, t.kind, t.weight, before[t.name], progress.trials.get(t.name, 0),
                           progress.errors.get(t.name, 0), progress.best_us.get(t.name)) for t in tasks)
    return TuneSummary(db.path, st.target_spec.name, rows, tuple(skipped))


@contextlib.contextmanager
def _interrupt_keeps(db_path: str):
    """Ctrl-C during tuning ends in one message saying the records are kept. MetaSchedule's C++ loop turns a
    KeyboardInterrupt raised inside it into an empty RuntimeError, or its builder swallows it and tuning goes
    on: the signal is remembered, and the yielded ``stop_if_interrupted()`` (called after every measurement)
    raises it again."""
    import signal

    seen = []
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    def stop_if_interrupted():
        if seen:
            raise KeyboardInterrupt

    installed = threading.current_thread() is threading.main_thread()
    if installed:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop_if_interrupted
    except (KeyboardInterrupt, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not seen:
            raise
        raise Interrupted(f"interrupted: every record measured so far is kept in {db_path}; run the same "
                          "command again to resume") from None
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)


def load(library: str, remote=None, entry: str = ""):
    """A loaded library (its entry point `entry` when it has several): here, or uploaded to the device `remote`
    (targets.remote.RemoteSpec) over RPC."""
    from compiler.device import load_model

    return load_model(library, remote, entry)


def run(library: str, inputs_npz: str, output_npz: str | None = None, remote=None) -> dict[str, np.ndarray]:
    """Run every sample of an inputs .npz (on the device `remote` if given); returns (and saves) outputs
    stacked on a leading sample axis."""
    from compiler.npz import load_samples, save_arrays

    if output_npz:
        check_output(output_npz, "-o", {"--inputs": inputs_npz, "LIBRARY": library})
    model = load(library, remote)
    samples = load_samples(inputs_npz, list(model.inputs))
    outs = []
    with progress_bar("running", total=len(samples)) as advance:
        for feed in samples:
            outs.append(model(feed))
            advance()
    result = {s.name: np.stack([o[i] for o in outs]) for i, s in enumerate(model.outputs)}
    if output_npz:
        save_arrays(output_npz, result)
    return result


def package(library: str, out_dir: str):
    """The runner bundle of a compiled library (targets/bundle.py): the library, the TVM runtime libraries of
    its architecture, `intformer-run`, the C API (`libintformer.so`, `intformer.h`) and a README in `out_dir`.
    Returns a targets.bundle.Bundle."""
    from targets.bundle import package as make_bundle

    check_output(out_dir, "-o", {"LIBRARY": library}, kind="folder")
    target = ""
    try:
        with open(manifest_path(library)) as f:
            target = str(json.load(f).get("target", {}).get("name", ""))
    except (OSError, ValueError, AttributeError):
        pass  # the manifest beside the library only names the target in the bundle's README
    bundle = make_bundle(library, out_dir, target=target, marker=MANIFEST_FUNC)
    status(f"wrote {bundle.directory}: {bundle.arch}, {bundle.total_bytes / 1e6:.1f} MB "
           f"({bundle.library_bytes / 1e6:.1f} MB model library)")
    return bundle


def _ort_session(model_path: str, threads: int = 0):
    import onnxruntime as ort

    from compiler.frontend.load import load_onnx

    load_onnx(model_path)  # clear errors for a missing or broken file
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class OutputComparison:
    name: str
    cosine_mean: float
    cosine_min: float
    max_abs_error: float
    argmax_agreement: float  # share of positions whose argmax over the last axis agrees

    def to_json(self) -> dict:
        return dict(self.__dict__)


def compare_outputs(name: str, got: np.ndarray, ref: np.ndarray) -> OutputComparison:
    """Per-sample cosine similarity of flattened outputs, max abs error, argmax agreement on the last axis."""
    g = got.reshape(got.shape[0], -1).astype(np.float64)
    r = ref.reshape(ref.shape[0], -1).astype(np.float64)
    den = np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1)
    cos = np.where(den > 0, np.sum(g * r, axis=1) / np.maximum(den, 1e-300), 1.0)
    agree = float(np.mean(np.argmax(got, axis=-1) == np.argmax(ref, axis=-1))) if got.ndim >= 2 else 1.0
    return OutputComparison(name, float(np.mean(cos)), float(np.min(cos)),
                            float(np.max(np.abs(got.astype(np.float64) - ref))), agree)


def warn_if_other_model(manifest, model_path: str) -> None:
    """A warning when ``model_path`` is not the file the library was compiled from (its SHA-256 differs)."""
    from compiler.frontend.load import file_sha256

    if os.path.isfile(model_path) and manifest.model_sha256 and file_sha256(model_path) != manifest.model_sha256:
        warn(f"{model_path} is not the model the library was compiled from (sha256 "
               f"{file_sha256(model_path)[:12]}, the manifest says {manifest.model_sha256[:12]}); "
               "so the figures below compare two different models")


def evaluate(library: str, model_path: str, inputs_npz: str) -> list[OutputComparison]:
    """Compare the library's outputs with onnxruntime fp32 on the same inputs."""
    from compiler.npz import load_samples

    model = load(library)
    warn_if_other_model(model.manifest, model_path)
    samples = load_samples(inputs_npz, list(model.inputs))
    sess = _ort_session(model_path)
    ort_names = [o.name for o in sess.get_outputs()]
    missing = [s.name for s in model.outputs if s.name not in ort_names]
    if missing:
        raise IntformerError(f"{model_path}: has no output(s) {missing}; is it the model {library} was compiled from?")
    got, ref = [], []
    with progress_bar("evaluating", total=len(samples)) as advance:
        for feed in samples:
            got.append(model(feed))
            ort_feed = {i.name: feed[i.name] for i in sess.get_inputs()}
            ref.append(sess.run([s.name for s in model.outputs], ort_feed))
            advance()
    return [compare_outputs(s.name, np.stack([g[i] for g in got]), np.stack([r[i] for r in ref]))
            for i, s in enumerate(model.outputs)]


def evaluate_layers(library: str, model_path: str, inputs_npz: str, calibration_table: str | None = None,
                    calibration_data: str | None = None, max_samples: int = 16):
    """The error of every layer's output (each LayerNorm output, then the model outputs) against fp32 on the
    first `max_samples` samples of inputs_npz (compiler/layer_errors.py). The library's integer graph is rebuilt
    from the model with its calibration: the table it was compiled with (checked against the manifest's hash), or
    the calibration data to make it again."""
    from compiler.layer_errors import layer_errors
    from compiler.npz import load_samples

    if max_samples < 1:
        raise IntformerError(f"--samples must be at least 1 (got {max_samples})")
    manifest = load(library).manifest
    warn_if_other_model(manifest, model_path)
    if manifest.entries:
        raise IntformerError(f"{library}: --per-layer reads single-graph encoder libraries; this one has entry "
                             f"points {[e.name for e in manifest.entries]}")
    if not calibration_table and not calibration_data:
        raise IntformerError("--per-layer rebuilds the library's integer graph: pass --calibration-table FILE (the "
                             "table the library was compiled with, from compile --save-calibration-table) or "
                             "--calibration-data FILE.npz")
    if calibration_table:
        from compiler.calibrate.table import CalibrationTable

        table = CalibrationTable.load(calibration_table)
        digest = table.sha256()
        if digest != manifest.calibration_table_sha256:
            raise IntformerError(f"{calibration_table}: not the calibration table {library} was compiled with "
                                 f"(sha256 {digest[:12]} != {manifest.calibration_table_sha256[:12]})")
    options = CompileOptions(input_shapes=tuple((s.name, tuple(s.shape)) for s in manifest.inputs),
                             calibration_table=calibration_table,
                             calibration_data=None if calibration_table else calibration_data,
                             calibration_method=manifest.calibration.method, token_scales=manifest.token_scales,
                             integer_only=False)
    samples = load_samples(inputs_npz, list(manifest.inputs))[:max_samples]
    return layer_errors(model_path, options, samples)


def print_inspect(library: str) -> None:
    """Print a library's manifest: inputs, outputs, target, matmul counts, float ops."""
    from rich.console import Console
    from rich.table import Table

    from compiler.artifact import Manifest
    from compiler.io_safety import ForeignLibrary, read_sidecar

    con = Console()
    try:
        m = load(library).manifest
    except ForeignLibrary as e:  # cannot be mapped here: its manifest file says the same
        side = read_sidecar(library)
        if side is None:
            raise
        m = Manifest.from_json(side)
        con.print(f"{e.args[0].split(';')[0]}; showing {library}.manifest.json", highlight=False, soft_wrap=True)
    t = Table(title=f"{library}")
    t.add_column("kind")
    t.add_column("name")
    t.add_column("shape")
    t.add_column("dtype")
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for s in specs:
            t.add_row(kind, s.name, s.shape_text(), s.dtype)
    con.print(t)
    con.print(f"target: {m.target.get('name')} {m.target.get('llvm')}")
    ops = Table(title="operations of the compiled graph")
    for col in ("op", "input dtypes", "output dtype", "count", "float"):
        ops.add_column(col)
    seen: dict = {}
    for o in m.report.ops:
        key = (o.op, o.inputs, o.output, o.edge)
        seen[key] = seen.get(key, 0) + 1
    float_ops = set(m.report.float_ops)
    for (op, ins, out, edge), n in seen.items():
        is_float = any(d.startswith(("float", "bfloat")) for d in ins + (out,))
        flag = f"{edge} edge" if edge else ("FLOAT" if is_float and op in float_ops else "")
        ops.add_row(op, ",".join(ins), out, str(n), flag)
    con.print(ops)
    mm = m.report.matmuls
    con.print(f"matmuls: {mm.int8}/{mm.total} int8")
    con.print(f"requantize ops: {m.report.requantize_ops}")
    con.print(f"float ops: {', '.join(m.report.float_ops) or 'none'}")
    con.print(f"calibration: {m.calibration.to_json()}")
    con.print(f"tools: {m.tool_versions}")


# ---- translation (encoder-decoder bundles and libraries; compiler/seq2seq) ------------------------------
def import_marian(model_dir: str, out_dir: str, batch: int = 8, max_src_len: int = 64, max_tgt_len: int = 128):
    """A Bergamot/Marian model folder -> a seq2seq bundle folder of fp32 ONNX graphs (returns its Seq2SeqSpec)."""
    from compiler.seq2seq.marian import import_marian as _import

    check_output(out_dir, "-o", {"MODEL_DIR": model_dir}, kind="folder")
    spec = _import(model_dir, out_dir, batch=batch, max_src_len=max_src_len, max_tgt_len=max_tgt_len)
    status(f"wrote {out_dir}: encoder + decoder step, batch {batch}, source <= {max_src_len} tokens, "
           f"target <= {max_tgt_len}")
    return spec


def translate(model: str, lines, batch: int = 0, beam: int = 1, threads: int = 1, remote=None, on_step=None):
    """Translate `lines` (str or bytes, one sentence or paragraph each) with a compiled translation library or
    a seq2seq bundle folder; returns (one output line per input line, TranslationStats)."""
    from compiler.seq2seq.backends import open_backend
    from compiler.seq2seq.decode import DecodeOptions, SentencePieceTokenizer, translate_lines

    if remote is None:
        check_threads(threads)
    check_range(beam, "--beam", 1, float("inf"), "a beam size of at least 1")
    check_range(batch, "--batch", 0, float("inf"), "a batch of at least 1 (0: the compiled batch)")
    backend = open_backend(model, threads=threads, remote=remote)
    tokenizer = SentencePieceTokenizer.of_backend(backend)
    outs, stats = translate_lines(list(lines), backend, tokenizer, DecodeOptions(beam=beam, batch=batch), on_step)
    return [" ".join(o.splitlines()) for o in outs], stats


# ---- decoder-only language models (compiler/llm) -------------------------------------------------------------
def load_llm(library: str, remote=None):
    """A compiled LM library with its cache and tokenizer (compiler/llm/library.LlmLibrary), here or on the
    device `remote` (targets.remote.RemoteSpec)."""
    from compiler.llm.library import LlmLibrary

    return LlmLibrary(library, remote)


def perplexity(library: str, text_path: str, max_len: int = 128):
    """The issue-15 protocol on a text file (one document a line) through a compiled LM library:
    compiler/llm/perplexity.Perplexity (ppl, predicted tokens, nll, documents)."""
    from compiler.llm import library as L
    from compiler.llm.perplexity import read_documents

    if not os.path.isfile(text_path):
        raise IntformerError(f"{text_path}: no such file (--text: plain text, one document a line)")
    lib = load_llm(library)
    try:
        return L.perplexity(lib, read_documents(text_path), max_len)
    except ValueError as e:  # no document with two tokens
        raise IntformerError(f"{text_path}: {e}") from None


def generate(library: str, prompt: str, max_new_tokens: int = 64, sampling=None, chat: bool = False,
             write=None, remote=None) -> list[int]:
    """Tokens generated after `prompt` (the chat template applied with `chat`), each written out as text by
    `write` as soon as it is made; returns their ids. sampling: compiler/llm/library.Sampling (default greedy);
    remote: run on that device over RPC."""
    from compiler.llm import library as L

    lib = load_llm(library, remote)
    ids = L.prompt_tokens(lib, prompt, chat)
    tokens = L.generate_tokens(lib, ids, max_new_tokens, sampling or L.Sampling())
    return L.stream_text(lib, tokens, write or (lambda s: None))
