"""`intformer` command line: argparse subcommands that call compiler.api. No logic lives here."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import threading
import time


def _compile_options(a):
    from compiler.config import CompileOptions
    from compiler.frontend.shapes import parse_input_shape

    if a.calibration_data and a.calibration_table:
        raise _usage("give --calibration-data or --calibration-table, not both")
    return CompileOptions(
        target=a.target, input_shapes=tuple(parse_input_shape(s) for s in a.input_shape),
        calibration_data=a.calibration_data, calibration_table=a.calibration_table,
        calibration_method=a.calibration_method, calibration_samples=a.calibration_samples,
        smoothing_alpha=a.smoothing_alpha, dump_ir=a.dump_ir, integer_only=a.integer_only,
        allow_float=tuple(a.allow_float), tuning_db=getattr(a, "db", None),
        buckets=tuple(_parse_buckets(b) for b in a.buckets),
        length_augmentation=a.length_augmentation, token_scales=a.token_scales,
    )


def _parse_buckets(text: str) -> tuple[str, tuple[int, ...]]:
    """'seq=16,32,64' -> ('seq', (16, 32, 64))."""
    name, _, sizes = text.partition("=")
    try:
        values = tuple(int(v) for v in sizes.split(","))
    except ValueError:
        values = ()
    if not name or not values or min(values) < 1:
        raise _usage(f"--buckets '{text}': expected DIM=SIZE,SIZE,..., e.g. seq=16,32,64")
    return name.strip(), values


def _compile(a) -> int:
    from compiler import api

    api.compile_model(a.model, a.output, _compile_options(a), report_path=a.report,
                      save_calibration_table=a.save_calibration_table, calibration_text=a.calibration_text,
                      context=a.context)
    return 0


def _perplexity(a) -> int:
    import json

    from compiler.runtime import import_runtime_only

    import_runtime_only()  # runs the library here: TVM's runtime alone, a smaller process
    from compiler import api

    r = api.perplexity(a.library, a.text, a.max_len)
    if a.json:
        print(json.dumps(r.to_json()))
    else:
        print(f"perplexity {r.ppl:.4f} over {r.tokens} predicted tokens in {r.documents} documents")
    return 0


def _generate(a) -> int:
    if _remote(a) is None:  # runs the library here: TVM's runtime alone, a smaller process (RPC needs all TVM)
        from compiler.runtime import import_runtime_only

        import_runtime_only()
    from compiler import api
    from compiler.llm.library import Sampling

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    sampling = Sampling(a.temperature, a.top_k, a.top_p, a.seed)
    api.generate(a.library, a.prompt, a.max_new_tokens, sampling, chat=a.chat, write=write, remote=_remote(a))
    sys.stdout.write("\n")
    return 0


def _tune(a) -> int:
    from rich.console import Console
    from rich.table import Table

    from compiler import api
    from schedules.tune import TuneOptions

    opts = TuneOptions(trials=a.trials, trials_per_iter=a.trials_per_iter, kernels=a.kernels)
    summary = api.tune_model(a.model, a.db, _compile_options(a), opts, remote=_remote(a))
    t = Table(title=f"tuned for {summary.target}: {summary.database}")
    for col in ("kernel", "kind", "calls", "records before", "trials now", "failed", "best (us)"):
        t.add_column(col)
    for r in summary.tasks:
        t.add_row(r.name, r.kind, str(r.calls), str(r.records_before), str(r.trials), str(r.failed),
                  f"{r.best_us:.1f}" if r.best_us is not None else "-")
    Console().print(t)
    reasons: dict[str, int] = {}
    for s in summary.skipped:  # "name: reason"; small kernels are many: one line per kind of reason
        why = s.split(": ", 1)[1]
        why = "small" if why.startswith("small") else why
        reasons[why] = reasons.get(why, 0) + 1
    for why, n in sorted(reasons.items()):
        print(f"not tuned ({n} kernels, default schedule): {why}")
    print(f"use it with: intformer compile {a.model} -o OUT.so --target {a.target} --db {a.db}")
    return 0


def _import_marian(a) -> int:
    from compiler import api

    api.import_marian(a.model_dir, a.output, batch=a.batch, max_src_len=a.max_src_len, max_tgt_len=a.max_tgt_len)
    return 0


def _translate(a) -> int:
    from compiler import api
    from compiler.io_safety import check_output, write_text
    from compiler.progress import status

    if a.output:
        check_output(a.output, "-o", {"-i": a.input, "MODEL": a.model})
    if a.input and not os.path.isfile(a.input):
        raise _usage(f"-i {a.input}: no such file")
    src = open(a.input, "rb") if a.input else sys.stdin.buffer
    with src:
        data = src.read()
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()  # the final line break ends the last line; it does not start an empty one
    outs, st = api.translate(a.model, lines, batch=a.batch, beam=a.beam, threads=a.threads, remote=_remote(a))
    text = "".join(o + "\n" for o in outs)
    if a.output:
        write_text(a.output, text)
    else:
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.flush()
    status(f"translated {st.lines} lines ({st.pieces} pieces, {st.split_lines} long lines split) in "
           f"{st.batches} batches, {st.target_tokens} target tokens, padding {100 * st.padding_waste:.1f}%")
    return 0


def _remote(a):
    """The device of --rpc / --tracker --key, or None to run here."""
    if not (a.rpc or a.tracker or a.key):
        return None
    from targets.remote import RemoteSpec

    return RemoteSpec(rpc=a.rpc, tracker=a.tracker, key=a.key, timeout=a.timeout)


def _run(a) -> int:
    from compiler import api

    api.run(a.library, a.inputs, a.output, remote=_remote(a))
    print(f"wrote {a.output}")
    return 0


def _package(a) -> int:
    from compiler import api

    bundle = api.package(a.library, a.output)
    for name, size in bundle.files:
        print(f"{size / 1e6:9.2f} MB  {name}")
    print(f"{bundle.total_bytes / 1e6:9.2f} MB  {bundle.directory} ({bundle.arch}); run it with: "
          f"{os.path.join(a.output, 'intformer-run')} --inputs IN.npz -o OUT.npz")
    return 0


def _eval(a) -> int:
    from rich.console import Console
    from rich.table import Table

    from compiler import api

    if a.per_layer:
        return _eval_layers(a)
    rows = api.evaluate(a.library, a.model, a.inputs)
    t = Table(title=f"{os.path.basename(a.library)} vs onnxruntime fp32 ({os.path.basename(a.model)})")
    for col in ("output", "cosine mean", "cosine min", "max abs error", "argmax agreement"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.name, f"{r.cosine_mean:.5f}", f"{r.cosine_min:.5f}", f"{r.max_abs_error:.4g}",
                  f"{100 * r.argmax_agreement:.2f}%")
    Console().print(t)
    return 0


def _eval_layers(a) -> int:
    from rich.console import Console
    from rich.table import Table

    from compiler import api

    rows = api.evaluate_layers(a.library, a.model, a.inputs, a.calibration_table, a.calibration_data,
                               max_samples=a.samples)
    t = Table(title=f"{os.path.basename(a.library)}: every layer's output vs onnxruntime fp32 "
                    f"(the NumPy reference, bit-exact with the library; padded positions left out)")
    for col in ("#", "tensor", "cosine mean", "cosine min", "max abs error", "fp32 max |x|", "local mean",
                "local min"):
        t.add_column(col, overflow="fold")
    for k, r in enumerate(rows):
        t.add_row(str(k), r.name, f"{r.cosine_mean:.5f}", f"{r.cosine_min:.5f}", f"{r.max_abs_error:.4g}",
                  f"{r.fp32_absmax:.4g}", f"{r.local_cosine_mean:.5f}", f"{r.local_cosine_min:.5f}")
    t.caption = ("local: the cosine of the layer alone, every earlier layer's output replaced by fp32's (in its "
                 "integer codes): the error the layer adds itself")
    Console(width=max(120, shutil.get_terminal_size().columns)).print(t)
    return 0


def _bench(a) -> int:
    from compiler import bench

    remote = _remote(a)
    if a.separate and not a.workload:
        raise _usage("--separate times engines on a workload: give --workload TEXTS.npz")
    if a.rounds != 1 and not a.workload:
        raise _usage("--rounds repeats engines on a workload: give --workload TEXTS.npz")
    if a.workload:
        from compiler import workload

        if remote is not None or a.per_op:
            raise _usage("--workload times engines on this machine; it cannot be combined with --rpc/--per-op")
        if a.rounds < 1:
            raise _usage(f"--rounds must be at least 1, not {a.rounds}")
        if a.rounds > 1 and a.threads == 1 and not a.separate:
            raise _usage("--rounds repeats engines in separate processes: at 1 thread add --separate (the default "
                         "interleaves the engines text by text in one process)")
        rep = workload.run_workload(a.library, a.workload, threads=a.threads, model=a.model, batch=a.batch,
                                    interleave=not a.separate, rounds=a.rounds)
        workload.print_workload(rep)
        if a.json:
            import json

            with open(a.json, "w") as f:
                json.dump(workload.to_json(rep), f, indent=1)
        return 0
    if a.per_op and remote is not None:
        raise _usage("--per-op times kernels on this machine; it cannot be combined with --rpc/--tracker")
    bench.print_report(bench.run_bench(a.library, threads=a.threads, model=a.model, repeats=a.repeats,
                                       remote=remote))
    if a.per_op:
        from compiler import op_profile

        op_profile.print_profile(op_profile.op_breakdown(a.library, threads=a.threads, runs=a.repeats or 10))
    return 0


def _inspect(a) -> int:
    from compiler import api

    api.print_inspect(a.library)
    return 0


def _targets(a) -> int:
    from targets.presets import add_user_target, print_targets

    if a.add:
        spec = add_user_target(a.add)
        print(f"added target '{spec.name}' (use it with --target {spec.name})")
        return 0
    print_targets(as_json=a.json)
    return 0


def _board_start(a) -> int:
    from targets import board

    b = board.start(cpu=a.cpu, port=a.port, cache_dir=a.cache_dir, tracker=a.tracker, key=a.key,
                    log=lambda m: print(m, file=sys.stderr))
    where = f" (registered with tracker {b.tracker} as '{b.key}')" if b.tracker else ""
    print(f"board ready: {b.address} (qemu-aarch64 -cpu {b.cpu}){where}; log {b.log}")
    how = f"--tracker {b.tracker} --key {b.key}" if b.tracker else f"--rpc {b.address}"
    print(f"use it with: intformer run OUT.so {how} ...")
    return 0


def _board_stop(a) -> int:
    from targets import board

    stopped = board.stop(port=a.port, cache_dir=a.cache_dir)
    print("\n".join(f"stopped board {b.address}" for b in stopped) or "no board was running")
    return 0


def _board_status(a) -> int:
    from targets import board

    boards = board.status(cache_dir=a.cache_dir)
    for b in boards:
        print(f"{b.address}  cpu {b.cpu}  {b.state}  up {time.time() - b.started:.0f} s  "
              f"restarts {b.restarts}  log {b.log}")
    if not boards:
        print("no board is running (start one with `intformer board start`)")
    return 0


def _board_setup(a) -> int:
    from targets.board_setup import BoardPaths, default_cache_dir, ensure_set_up

    paths = BoardPaths(a.cache_dir or default_cache_dir())
    ensure_set_up(paths, log=lambda m: print(m, file=sys.stderr))
    print(f"board set up in {paths.root}")
    return 0


def _add_remote_args(p) -> None:
    g = p.add_argument_group("on a device (TVM RPC; see `intformer board` for an emulated one)")
    g.add_argument("--rpc", metavar="HOST:PORT", help="run on the RPC server at HOST:PORT")
    g.add_argument("--tracker", metavar="HOST:PORT", help="ask this RPC tracker for a device (with --key)")
    g.add_argument("--key", help="device key registered with the tracker")
    g.add_argument("--timeout", type=_float_in(0, math.inf), default=300.0, metavar="S",
                   help="seconds each remote step may take before it is an error (default 300)")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the option and what is wrong with it) and where the full usage is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(lo: int):
    """An argparse type: an integer >= lo (a bad value is a usage error before any work starts)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v}: must be at least {lo}")
        return v
    return parse


def _float_in(lo: float, hi: float):
    """An argparse type: a finite number in (lo, hi] (lo excluded when it is 0 and hi is infinite)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        ok = math.isfinite(v) and (lo < v if hi == math.inf else lo <= v <= hi)
        if not ok:
            raise argparse.ArgumentTypeError(f"{text}: must be " + (f"a number above {lo}" if hi == math.inf
                                                                  else f"a number from {lo} to {hi}"))
        return v
    return parse


def _usage(msg: str) -> _UsageError:
    return _UsageError(msg)


def _add_model_options(c) -> None:
    """The options `compile` and `tune` share (tuning must see the graph compile will build)."""
    c.add_argument("--target", default="host", help="target preset or user target (see `intformer targets`), "
                   "or a target JSON file; default: host")
    c.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS",
                   help="shape of an input, e.g. input_ids=1x128 (repeat per input); a dim may be a range LO..HI, "
                        "e.g. input_ids=1x1..128: the library then takes every size in it")
    c.add_argument("--buckets", action="append", default=[], metavar="DIM=SIZES",
                   help="sizes compiled for a ranged dim, e.g. seq=16,32,64,128 (default: steps of 8 up to 48, of 16 "
                        "up to 96, then 128, 192, 256, 384, ..., and the range's top); an input runs at the smallest "
                        "that holds it")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--calibration-data", metavar="CALIB.npz", help="calibration inputs (.npz, leading sample axis)")
    g.add_argument("--calibration-table", metavar="TABLE.json", help="reuse a saved calibration table")
    c.add_argument("--calibration-method", default="minmax",
                   help="minmax (default), percentile, entropy (KL divergence, TensorRT-style) or mse")
    c.add_argument("--calibration-samples", type=_int_at_least(1), default=0, metavar="N",
                   help="use the first N samples only")
    c.add_argument("--smoothing-alpha", type=_float_in(0.0, 1.0), default=None, metavar="A",
                   help="outlier smoothing strength in [0, 1] for every MatMul input; 0 disables it "
                        "(default: chosen per input on the calibration data)")
    c.add_argument("--length-augmentation", action=argparse.BooleanOptionalAction, default=True,
                   help="calibrate on short variants of the samples too (their first tokens and end marker), "
                        "so that short inputs keep their accuracy (default: on)")
    c.add_argument("--token-scales", action=argparse.BooleanOptionalAction, default=True,
                   help="quantize the inputs of constant-weight MatMuls that no LayerNorm produces (activations, "
                        "attention contexts) to int8 per token at run time, a power-of-two scale per row applied "
                        "in the GEMM's epilogue, instead of one calibrated scale (default: on; on "
                        "all-MiniLM-L6-v2 it lifts nearest-neighbour agreement on short text from 89%% to 92%% "
                        "for a few percent of latency, see the README)")
    c.add_argument("--integer-only", action=argparse.BooleanOptionalAction, default=True,
                   help="fail if an op would still compute in float (default: on)")
    c.add_argument("--allow-float", action="append", default=[], metavar="OPTYPE",
                   help="let ops of this type stay float, e.g. softmax (repeatable)")
    c.add_argument("--dump-ir", metavar="DIR", help="write the graph after every pipeline stage")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="intformer", description="Compile Transformers from ONNX into integer-only "
                                "TVM libraries for CPUs and ARM boards.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    # also accepted after the subcommand (`intformer compile --debug ...`); SUPPRESS keeps the top-level value
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *args, **kw: _add_parser(*args, parents=[debug], **kw)

    c = sub.add_parser("compile", help="compile an ONNX model into an integer library")
    c.add_argument("model", metavar="MODEL", help="an ONNX file, a seq2seq bundle folder (seq2seq.json), a "
                   "Bergamot/Marian model folder (.bin, .spm, .yml), or a decoder-only LM: a .gguf file or a "
                   "LLaMA-family transformers folder")
    c.add_argument("-o", "--output", required=True, metavar="OUT.so")
    c.add_argument("--calibration-text", metavar="FILE",
                   help="encoder-decoders: source sentences, one a line (the decoder calibrates on real decoding); "
                        "language models: plain text, one document a line")
    c.add_argument("--context", type=_int_at_least(2), default=None, metavar="N",
                   help="language models: the KV cache's positions, prompt and generated tokens (default 256)")
    _add_model_options(c)
    c.add_argument("--save-calibration-table", metavar="TABLE.json", help="write the calibration table")
    c.add_argument("--report", metavar="REPORT.json", help="write the compile report (ops, dtypes, matmul counts)")
    c.add_argument("--db", metavar="DIR", help="apply the tuned kernels `intformer tune` recorded in DIR "
                   "for this target")
    c.set_defaults(func=_compile)

    tu = sub.add_parser("tune", help="tune the model's int8 kernels with MetaSchedule (XGBoost cost model)",
                        description="Tune the kernels of MODEL.onnx compiled with the same options as `compile`. "
                        "Records go to DIR (one folder per target) as they are measured: an interrupted run "
                        "keeps them and the next run resumes; `compile --db DIR` applies them.")
    tu.add_argument("model", metavar="MODEL.onnx")
    tu.add_argument("--db", required=True, metavar="DIR", help="tuning database folder (created if missing)")
    tu.add_argument("--trials", type=_int_at_least(1), default=64, metavar="N",
                    help="measured candidates in total (default 64)")
    tu.add_argument("--trials-per-iter", type=_int_at_least(1), default=16, metavar="N",
                    help="candidates measured per search round (default 16)")
    tu.add_argument("--kernels", choices=["matmul", "all"], default="matmul",
                    help="matmul (default): the GEMMs and attention matmuls; all: the fused integer kernels too")
    _add_model_options(tu)
    _add_remote_args(tu)
    tu.set_defaults(func=_tune)

    r = sub.add_parser("run", help="run a compiled library on inputs from an .npz")
    r.add_argument("library", metavar="OUT.so")
    r.add_argument("--inputs", required=True, metavar="IN.npz")
    r.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    _add_remote_args(r)
    r.set_defaults(func=_run)

    pk = sub.add_parser("package", help="a folder that runs the library without Python (intformer-run, C API)",
                        description="Write DIR with the library, the TVM runtime libraries for its architecture, "
                        "intformer-run (a C++ runner built with the target's g++) and the C API (libintformer.so, "
                        "intformer.h). Run it on the device as DIR/intformer-run --inputs IN.npz -o OUT.npz.")
    pk.add_argument("library", metavar="LIB.so")
    pk.add_argument("-o", "--output", required=True, metavar="DIR")
    pk.set_defaults(func=_package)

    e = sub.add_parser("eval", help="compare a compiled library with onnxruntime fp32")
    e.add_argument("library", metavar="OUT.so")
    e.add_argument("--model", required=True, metavar="MODEL.onnx")
    e.add_argument("--inputs", required=True, metavar="IN.npz")
    e.add_argument("--per-layer", action="store_true",
                   help="the error of every layer's output (LayerNorm outputs, then the model outputs)")
    e.add_argument("--calibration-table", metavar="TABLE.json",
                   help="with --per-layer: the table the library was compiled with")
    e.add_argument("--calibration-data", metavar="CALIB.npz",
                   help="with --per-layer and no table: calibrate again on these samples")
    e.add_argument("--samples", type=_int_at_least(1), default=16, metavar="N",
                   help="with --per-layer: samples used")
    e.set_defaults(func=_eval)

    b = sub.add_parser("bench", help="median latency; with --model also onnxruntime fp32 and int8")
    b.add_argument("library", metavar="OUT.so")
    b.add_argument("--threads", type=_int_at_least(1), default=1, metavar="N",
                   help="CPU threads (default 1; at most this machine's CPUs)")
    b.add_argument("--model", metavar="MODEL.onnx")
    b.add_argument("--repeats", type=_int_at_least(1), default=0, metavar="N",
                   help="timed runs (default: adaptive; 10 on a device)")
    b.add_argument("--per-op", action="store_true",
                   help="also print the time per kernel (VM instrument hook), grouped by kernel, with shares")
    b.add_argument("--workload", metavar="TEXTS.npz",
                   help="many samples of different lengths (the attention mask marks each one's): total time and "
                        "tokens/s of every sample at its own length, vs onnxruntime int8 and OpenVINO int8 (--model)")
    b.add_argument("--batch", type=int, default=1, metavar="N",
                   help="with --workload: throughput mode, batches of up to N texts of similar length")
    b.add_argument("--json", metavar="OUT.json", help="with --workload: also write the figures as JSON")
    b.add_argument("--separate", action="store_true",
                   help="with --workload at 1 thread: each engine alone in its own process (default: the engines "
                        "take turns text by text in one process)")
    b.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="with --workload in separate processes (2+ threads, --separate): N rounds, the engines in "
                        "turn each round, each engine's best round shown (a shared machine's slow spells)")
    _add_remote_args(b)
    b.set_defaults(func=_bench)

    tr = sub.add_parser("translate", help="translate lines of text (stdin -> stdout, one line out per line in)")
    tr.add_argument("model", metavar="OUT.so|BUNDLE_DIR",
                    help="a compiled translation library, or a seq2seq bundle folder (onnxruntime fp32)")
    tr.add_argument("--batch", type=_int_at_least(1), default=0, metavar="N",
                    help="sentences per batch (default and maximum: the compiled batch)")
    tr.add_argument("--beam", type=_int_at_least(1), default=1, metavar="K", help="beam size (default 1: greedy)")
    tr.add_argument("--threads", type=_int_at_least(1), default=1, metavar="N", help="CPU threads (default 1)")
    tr.add_argument("-i", "--input", metavar="IN.txt", help="read this file instead of stdin")
    tr.add_argument("-o", "--output", metavar="OUT.txt", help="write this file instead of stdout")
    _add_remote_args(tr)
    tr.set_defaults(func=_translate)

    pp = sub.add_parser("perplexity", help="perplexity of a compiled language model on text (one document a line)")
    pp.add_argument("library", metavar="LIB.so")
    pp.add_argument("--text", required=True, metavar="FILE", help="plain text, one document a line")
    pp.add_argument("--max-len", type=_int_at_least(2), default=128, metavar="N",
                    help="tokens per document at most (default 128)")
    pp.add_argument("--json", action="store_true", help='print one line {"ppl": ..., "tokens": ...}')
    pp.set_defaults(func=_perplexity)

    ge = sub.add_parser("generate", help="generate text with a compiled language model (tokens stream out)")
    ge.add_argument("library", metavar="LIB.so")
    ge.add_argument("--prompt", required=True, metavar="TEXT")
    ge.add_argument("--max-new-tokens", type=_int_at_least(1), default=64, metavar="N", help="default 64")
    ge.add_argument("--temperature", type=_float_in(0.0, 100.0), default=0.0, metavar="T",
                    help="0 (default): greedy; above 0: sampling")
    ge.add_argument("--top-k", type=_int_at_least(0), default=0, metavar="K",
                    help="sample from the K most likely tokens (default 0: all)")
    ge.add_argument("--top-p", type=_float_in(0.0, 1.0), default=1.0, metavar="P",
                    help="sample from the smallest set of tokens whose probability reaches P (default 1)")
    ge.add_argument("--seed", type=int, default=None, metavar="S", help="random seed of the sampling")
    ge.add_argument("--chat", action="store_true", help="apply the model's chat template to the prompt")
    _add_remote_args(ge)
    ge.set_defaults(func=_generate)

    im = sub.add_parser("import-marian", help="a Bergamot/Marian model folder -> a seq2seq bundle of ONNX graphs")
    im.add_argument("model_dir", metavar="MODEL_DIR", help="folder with the model .bin, vocabulary .spm, config .yml")
    im.add_argument("-o", "--output", required=True, metavar="BUNDLE_DIR")
    im.add_argument("--batch", type=_int_at_least(1), default=8, metavar="B", help="compiled batch (default 8)")
    im.add_argument("--max-src-len", type=_int_at_least(2), default=64, metavar="S",
                    help="source tokens at most, end of sentence included (default 64; longer lines are split)")
    im.add_argument("--max-tgt-len", type=_int_at_least(2), default=128, metavar="T",
                    help="target tokens at most (default 128)")
    im.set_defaults(func=_import_marian)

    i = sub.add_parser("inspect", help="print a compiled library's manifest")
    i.add_argument("library", metavar="OUT.so")
    i.set_defaults(func=_inspect)

    t = sub.add_parser("targets", help="list targets: ISA features, cross toolchain installed or not",
                       description="List the targets. A target of your own is a JSON file in the form "
                                   "`intformer targets --json` prints, e.g. {\"name\": \"my-board\", \"llvm\": "
                                   "{\"kind\": \"llvm\", \"mtriple\": \"aarch64-linux-gnu\", \"mcpu\": "
                                   "\"cortex-a76\", \"mattr\": [\"+neon\", \"+dotprod\"]}, \"cross_compiler\": "
                                   "\"aarch64-linux-gnu-gcc\"}; use it as `--target my_board.json` or register it "
                                   "by name with `--add`.")
    t.add_argument("--add", metavar="FILE.json", help="register the target in FILE.json under its name")
    t.add_argument("--json", action="store_true", help="print every target as JSON")
    t.set_defaults(func=_targets)

    bd = sub.add_parser("board", help="an emulated aarch64 board (qemu-user + TVM RPC server on 127.0.0.1)")
    bsub = bd.add_subparsers(dest="board_command", required=True, metavar="ACTION")
    _add_board = bsub.add_parser
    bsub.add_parser = lambda *args, **kw: _add_board(*args, parents=[debug], **kw)
    cache_help = "board files (default: ~/.cache/intformer/board)"
    bs = bsub.add_parser("start", help="set up on first use, start, print the RPC address")
    bs.add_argument("--cpu", default="cortex-a76", help="qemu CPU: cortex-a76 runs SDOT (rpi5), cortex-a72 does "
                    "not (rpi4), max has everything; default cortex-a76")
    bs.add_argument("--port", type=_int_at_least(1), default=9090, help="RPC port on 127.0.0.1 (default 9090)")
    bs.add_argument("--tracker", metavar="HOST:PORT", help="also register with this RPC tracker")
    bs.add_argument("--key", help="device key to register with the tracker")
    bs.add_argument("--cache-dir", help=cache_help)
    bs.set_defaults(func=_board_start)
    bt = bsub.add_parser("stop", help="stop the board on --port (default: every board)")
    bt.add_argument("--port", type=_int_at_least(1))
    bt.add_argument("--cache-dir", help=cache_help)
    bt.set_defaults(func=_board_stop)
    bu = bsub.add_parser("status", help="list running boards")
    bu.add_argument("--cache-dir", help=cache_help)
    bu.set_defaults(func=_board_status)
    bp = bsub.add_parser("setup", help="only set the board up (done by `start` on first use)")
    bp.add_argument("--cache-dir", help=cache_help)
    bp.set_defaults(func=_board_setup)
    return p


def main(argv: list[str] | None = None) -> int:
    rc = _main(argv)
    if rc == 130 or any(t.name.startswith("intformer-rpc-") and t.is_alive() for t in threading.enumerate()):
        # a remote step that timed out is still blocked inside TVM's RPC client, or an interrupted tuning run left
        # MetaSchedule's worker pools mid-call; letting the interpreter tear down around them aborts (SIGABRT) or
        # prints tracebacks from finalizers, so leave at once with the message already printed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


def _stdout_is_devnull() -> bool:
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a file descriptor
        return False


def _main(argv: list[str] | None = None) -> int:
    from compiler.errors import Interrupted, IntformerError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
        return rc
    except BrokenPipeError:  # `intformer inspect lib.so | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as e:  # rich meets a closed pipe by pointing stdout at /dev/null and exiting 1
        if e.code == 1 and _stdout_is_devnull():
            return 0
        raise
    except (IntformerError, _UsageError) as e:
        if args.debug:
            raise
        print(f"intformer: {'' if isinstance(e, Interrupted) else 'error: '}{e}", file=sys.stderr)
        return 130 if isinstance(e, Interrupted) else 2
    except KeyboardInterrupt:
        print("intformer: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an intformer bug or an unexpected TVM failure: still one line, no traceback
        if args.debug:
            raise
        msg = str(e).strip().splitlines()
        print(f"intformer: internal error: {type(e).__name__}: {msg[-1] if msg else ''} "
              "(rerun with --debug for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
