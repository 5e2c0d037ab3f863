"""Numbers and flags: out-of-range values are one-line usage errors before any work; --debug works after the
subcommand too. Fuzzed in-process on the parser (fast), the cases from the issue through the CLI."""

import contextlib
import io
import math

import pytest
from hypothesis import given, settings, strategies as st

from compiler.cli import build_parser
from tests.hostile.conftest import ERROR_LINE, intformer, run_bad

# flag -> (command line before it, predicate every accepted value must satisfy)
NUMERIC = {
    "--threads": (["bench", "x.so"], lambda v: v >= 1),
    "--repeats": (["bench", "x.so"], lambda v: v >= 1),
    "--calibration-samples": (["compile", "m.onnx", "-o", "x.so"], lambda v: v >= 1),
    "--smoothing-alpha": (["compile", "m.onnx", "-o", "x.so"], lambda v: math.isfinite(v) and 0 <= v <= 1),
    "--trials": (["tune", "m.onnx", "--db", "d"], lambda v: v >= 1),
    "--trials-per-iter": (["tune", "m.onnx", "--db", "d"], lambda v: v >= 1),
    "--batch": (["translate", "x.so"], lambda v: v >= 1),
    "--beam": (["translate", "x.so"], lambda v: v >= 1),
    "--timeout": (["run", "x.so", "--inputs", "i.npz", "-o", "o.npz"], lambda v: math.isfinite(v) and v > 0),
    "--context": (["compile", "m.gguf", "-o", "x.so"], lambda v: v >= 2),
    "--max-len": (["perplexity", "x.so", "--text", "t.txt"], lambda v: v >= 2),
    "--max-new-tokens": (["generate", "x.so", "--prompt", "hi"], lambda v: v >= 1),
    "--top-k": (["generate", "x.so", "--prompt", "hi"], lambda v: v >= 0),
    "--top-p": (["generate", "x.so", "--prompt", "hi"], lambda v: math.isfinite(v) and 0 <= v <= 1),
    "--temperature": (["generate", "x.so", "--prompt", "hi"], lambda v: math.isfinite(v) and 0 <= v <= 100),
}
VALUES = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["", "nan", "inf", "-0", "1e400", "0x10", "２", "1_000", " 3", "abc"]))


@settings(max_examples=40, deadline=None)
@given(flag=st.sampled_from(sorted(NUMERIC)), value=VALUES)
def test_numeric_flags_accept_only_valid_values(flag, value):
    before, valid = NUMERIC[flag]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args([*before, f"{flag}={value}"])
    except SystemExit as e:
        assert e.code == 2
        err = stderr.getvalue().strip().splitlines()
        assert len(err) == 1 and ERROR_LINE.match(err[0]) and flag in err[0], err
        return
    assert valid(getattr(args, flag.lstrip("-").replace("-", "_"))), (flag, value)


@pytest.mark.parametrize("args, needles", [
    (["bench", "LIB", "--threads", "0"], ["--threads", "at least 1"]),
    (["bench", "LIB", "--threads", "-1"], ["--threads", "at least 1"]),
    (["compile", "MODEL", "-o", "x.so", "--calibration-samples", "-3"], ["--calibration-samples"]),
    (["compile", "MODEL", "-o", "x.so", "--smoothing-alpha", "2"], ["--smoothing-alpha", "0.0 to 1.0"]),
    (["compile", "MODEL", "-o", "x.so", "--smoothing-alpha", "nan"], ["--smoothing-alpha"]),
    (["translate", "LIB", "--batch", "0"], ["--batch", "at least 1"]),
])
def test_issue_values_are_usage_errors(work, args, needles):
    args = [work["lib"] if a == "LIB" else work["model"] if a == "MODEL" else a for a in args]
    line = run_bad(args, needles, inputs=[work["lib"], work["model"]], codes=(2,))
    assert "--allow-float" not in line


def test_thread_count_bounded_by_the_machine(work):
    run_bad(["bench", work["lib"], "--threads", "100000", "--repeats", "1"], ["--threads 100000", "give 1 to"],
            inputs=[work["lib"]], timeout=60)


def test_debug_is_accepted_after_the_subcommand(work):
    p = intformer("compile", "--debug", work["dir"] / "nope.onnx", "-o", work["dir"] / "o.so")
    assert p.returncode != 0 and "Traceback" in p.stderr and "no such file" in p.stderr
    p = intformer("--debug", "inspect", work["dir"] / "nope.so")
    assert "Traceback" in p.stderr
    p = intformer("inspect", work["dir"] / "nope.so")
    assert p.returncode == 2 and "Traceback" not in p.stderr
