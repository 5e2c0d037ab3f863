"""Ranged input dims: one library for every sequence length (compiler/ranged.py), on the tiny random BERT."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from compiler.api import compile_model, run
from compiler.config import CompileOptions, DimRange
from compiler.errors import IntformerError
from compiler.frontend.shapes import parse_input_shape

RANGE = (("input_ids", (1, DimRange(1, 16))),)


@pytest.fixture(scope="module")
def ranged_lib(tiny_bert, tmp_path_factory):
    model, calib, _ = tiny_bert
    d = tmp_path_factory.mktemp("ranged")
    lib = str(d / "ranged.so")
    res = compile_model(model, lib, CompileOptions(input_shapes=RANGE, calibration_data=calib,
                                                   buckets=(("seq", (8,)),)))
    return lib, res


def _feed(n, seed, pad_to=None):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 100, (1, n)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    if pad_to:
        feed = {k: np.pad(v, [(0, 0), (0, pad_to - n)]) for k, v in feed.items()}
    return feed


def test_range_syntax_and_errors():
    assert parse_input_shape("input_ids=1..8x1..256") == ("input_ids", (DimRange(1, 8), DimRange(1, 256)))
    assert parse_input_shape("x=1x7..7") == ("x", (1, 7))
    for text, words in (("x=1x9..4", "LO > HI"), ("x=1x0..4", "below 1"), ("x=1x..4", "LO..HI")):
        with pytest.raises(IntformerError, match=words):
            parse_input_shape(text)


def test_range_on_a_dim_the_model_fixes_and_disagreeing_ranges(tiny_bert, tmp_path):
    import onnx

    m = onnx.load(tiny_bert[0])
    for i in m.graph.input:
        i.type.tensor_type.shape.dim[0].dim_value = 1  # a model exported with batch 1
    onnx.save(m, str(tmp_path / "batch1.onnx"))
    opts = CompileOptions(input_shapes=(("input_ids", (DimRange(1, 2), DimRange(1, 16))),))
    with pytest.raises(IntformerError, match="input_ids: dim 0 is fixed to 1 by the model"):
        compile_model(str(tmp_path / "batch1.onnx"), str(tmp_path / "x.so"), opts)
    opts = CompileOptions(input_shapes=(("input_ids", (1, DimRange(1, 16))), ("attention_mask", (1, 16))))
    with pytest.raises(IntformerError, match="is 1..16 for another input but 16 here"):
        compile_model(tiny_bert[0], str(tmp_path / "x.so"), opts)


def test_manifest_and_buckets(ranged_lib):
    lib, res = ranged_lib
    m = res.manifest
    assert [s.ranges for s in m.inputs] == [((1, 1, 16, "seq"),)] * 3  # the named range binds every input
    assert m.outputs[0].ranges == ((1, 1, 16, "seq"),) and m.outputs[0].shape == (1, 16, 32)
    assert res.report.buckets == ("8", "16")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 9, 10, 11, 13, 16])  # 4-row GEMM tiles + 0/1/2/3 rows
def test_every_length_equals_the_reference_and_the_padded_text(ranged_lib, tiny_bert_lib, n):
    """The VM's main at the text's own length: bit-exact with the NumPy reference, and equal at the real positions
    to the fixed-shape library (same calibration data) run on the text padded to 16."""
    from compiler.runtime import CompiledModel

    lib, res = ranged_lib
    own = CompiledModel(lib)(_feed(n, seed=n))[0]
    assert own.shape == (1, n, 32)
    ref = res.reference()(_feed(n, seed=n))[0]
    assert np.array_equal(own, ref)
    padded = CompiledModel(tiny_bert_lib[0])(_feed(n, seed=n, pad_to=16))[0]
    assert np.array_equal(own, padded[:, :n])


def test_check_remembers_shapes_not_values(ranged_lib):
    """CompiledModel's per-call check keeps the shapes it accepted: a length seen before still has its ids checked
    against the embedding table, a length outside the range is refused before and after."""
    from compiler.runtime import CompiledModel

    model = CompiledModel(ranged_lib[0])
    long = _feed(17, seed=0)
    with pytest.raises(IntformerError, match=r"shape \(1, 17\), the library was compiled for 1x1..16"):
        model(long)
    assert model(_feed(5, seed=1))[0].shape == (1, 5, 32)
    seen = [set(accepted) for _, _, accepted in model._checks]
    assert all((1, 5) in a for a in seen)  # remembered for every input
    bad = _feed(5, seed=2)
    bad["input_ids"][0, 3] = 1 << 20
    with pytest.raises(IntformerError, match="'input_ids' has values out of range"):
        model(bad)
    bad["input_ids"][0, 3] = -(1 << 20)  # (a Gather also takes negative ids down to minus its rows)
    with pytest.raises(IntformerError, match=r"\(min -1048576, max \d+\)"):
        model(bad)
    with pytest.raises(IntformerError, match="1x1..16"):
        model(long)
    assert np.array_equal(model(_feed(5, seed=1))[0], model(_feed(5, seed=1))[0])
    assert [set(accepted) for _, _, accepted in model._checks] == seen  # a refused shape is never remembered


def test_vm_main_alone_in_a_fresh_process(ranged_lib, tmp_path):
    lib, _ = ranged_lib
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tvm.runtime as rt
        vm = rt.vm.VirtualMachine(rt.load_module({lib!r}), rt.cpu())
        for n in (1, 5, 16):
            x = [rt.tensor(np.ones((1, n), dtype="int64")) for _ in range(3)]
            assert vm["main"](*x).numpy().shape == (1, n, 32)
        try:
            vm["main"](*[rt.tensor(np.ones((1, 17), dtype="int64")) for _ in range(3)])
            sys.exit("a length beyond the range was accepted")
        except Exception as e:
            assert "outside the compiled ranges" in str(e), e
        assert not any(m == "compiler" or m.startswith("compiler.") for m in sys.modules)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path))


def test_run_takes_npz_of_any_length_in_range(ranged_lib, tmp_path):
    lib, res = ranged_lib
    feed = {k: v[None] for k, v in _feed(5, seed=1).items()}
    np.savez(tmp_path / "in5.npz", **feed)
    out = run(lib, str(tmp_path / "in5.npz"))["last_hidden_state"]
    assert out.shape == (1, 1, 5, 32)
    np.savez(tmp_path / "in17.npz", **{k: np.ones((1, 1, 17), np.int64) for k in feed})
    with pytest.raises(IntformerError, match="1x1..16"):
        run(lib, str(tmp_path / "in17.npz"))


def _workload(path, lengths, seed=0):
    rng = np.random.default_rng(seed)
    n, top = len(lengths), max(lengths)
    ids = rng.integers(3, 100, (n, 1, top)).astype(np.int64)
    mask = np.zeros_like(ids)
    for i, length in enumerate(lengths):
        mask[i, 0, :length] = 1
    ids *= mask
    np.savez(path, input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


def test_workload_cuts_each_text_to_its_length_and_batches_by_length(tmp_path):
    from compiler.workload import batches, load_workload

    _workload(tmp_path / "w.npz", [3, 16, 7, 5])
    samples = load_workload(str(tmp_path / "w.npz"))
    assert [s["input_ids"].shape for s in samples] == [(1, 3), (1, 16), (1, 7), (1, 5)]
    groups = batches(samples, 2)
    assert [g["attention_mask"].shape for g in groups] == [(2, 5), (2, 16)]  # (3, 5) and (7, 16)
    assert groups[0]["attention_mask"].sum() == 8


def test_bench_workload_against_onnxruntime_int8(ranged_lib, tiny_bert, tmp_path):
    from compiler.workload import run_workload

    _workload(tmp_path / "w.npz", [3, 16, 7, 5, 11])
    rep = run_workload(ranged_lib[0], str(tmp_path / "w.npz"), threads=1, model=tiny_bert[0],
                       engines=("intformer", "onnxruntime int8"))
    assert [r.engine for r in rep.rows] == ["intformer", "onnxruntime int8"]
    assert all(r.total_ms > 0 and r.tokens == 42 and r.batches == 5 for r in rep.rows), rep


def test_bench_workload_separate_processes_from_the_cli(ranged_lib, tiny_bert, tmp_path, capsys):
    """`bench --workload --separate --rounds 2` at 1 thread: each engine alone in its own process, twice in
    turn, the best round shown and both recorded; --separate without a workload, --rounds 0 and --rounds
    without separate processes are usage errors."""
    from compiler.cli import main

    _workload(tmp_path / "w.npz", [3, 16, 7])
    out = tmp_path / "w.json"
    assert main(["bench", ranged_lib[0], "--workload", str(tmp_path / "w.npz"), "--model", tiny_bert[0],
                 "--separate", "--rounds", "2", "--json", str(out)]) == 0
    rows = {r["engine"]: r for r in json.load(open(out))["rows"]}
    for engine in ("intformer", "onnxruntime int8"):
        r = rows[engine]
        assert len(r["rounds_ms"]) == 2 and r["total_ms"] == min(r["rounds_ms"]) > 0, r
        assert r["note"].startswith("rounds: "), r
    capsys.readouterr()
    for args, word in ((["--separate"], "--separate"), (["--workload", "w.npz", "--rounds", "0"], "--rounds"),
                       (["--workload", "w.npz", "--rounds", "2"], "--separate"), (["--rounds", "2"], "--workload")):
        assert main(["bench", ranged_lib[0], *args]) != 0
        assert word in capsys.readouterr().err


def test_batch_range_pads_rows_and_equals_each_text_alone(tiny_bert, tiny_bert_lib, tmp_path):
    """input_ids=1..2x16: a batch of two texts (each padded to 16, mask 0 beyond its length) gives each text's own
    result, and a batch of one takes the batch-1 bucket. The table saved by a 1x16 compile serves the range."""
    from compiler.runtime import CompiledModel

    model = tiny_bert[0]
    table = os.path.join(os.path.dirname(tiny_bert_lib[0]), "table.json")
    lib = str(tmp_path / "batched.so")
    res = compile_model(model, lib, CompileOptions(input_shapes=(("input_ids", (DimRange(1, 2), 16)),),
                                                   calibration_table=table))
    assert res.report.buckets == ("1", "2")
    m = CompiledModel(lib)
    a, b = _feed(5, seed=1, pad_to=16), _feed(11, seed=2, pad_to=16)
    out = m({k: np.concatenate([a[k], b[k]]) for k in a})[0]
    assert out.shape == (2, 16, 32)
    assert np.array_equal(out[0, :5], m(a)[0][0, :5]) and np.array_equal(out[1, :11], m(b)[0][0, :11])


def test_pooled_head_output_without_a_ranged_axis(tmp_path):
    """A sentence-transformers export (masked mean + L2 norm): the output (1, 32) has no ranged axis and is not
    sliced; at its own length a text gives the pooled result of the text padded to 16, bit for bit (the masked
    mean's padded terms are exact zeros)."""
    from compiler.runtime import CompiledModel
    from tests.helpers.tiny_models import export_tiny, sample_inputs

    model = export_tiny("bert", str(tmp_path / "pooled.onnx"), head="pooled")
    np.savez(tmp_path / "calib.npz", **sample_inputs("bert", 12, seed=3))
    lib = str(tmp_path / "pooled.so")
    res = compile_model(model, lib, CompileOptions(input_shapes=RANGE, calibration_data=str(tmp_path / "calib.npz"),
                                                   buckets=(("seq", (8,)),)))
    assert res.manifest.outputs[0].shape == (1, 32) and res.manifest.outputs[0].ranges == ()
    m = CompiledModel(lib)
    for n in (3, 9):
        own = m(_feed(n, seed=n))[0]
        padded = m(_feed(n, seed=n, pad_to=16))[0]
        assert own.shape == (1, 32)
        assert np.array_equal(own, padded), (n, np.abs(own - padded).max())


@pytest.mark.slow
@pytest.mark.parametrize("kind,dynamo,opset,head", [
    ("roberta", True, 18, "none"), ("distilbert", False, 17, "classifier"), ("bert", True, 18, "cls")])
def test_other_exports_every_length_equals_the_reference(kind, dynamo, opset, head, tmp_path):
    """Other families, exporters and heads through a ranged compile (about 35 s each, hence slow): at lengths
    that end the GEMMs' 4-row tiles with 0, 1, 2 and 3 rows, in both buckets (8 and 16), bit-exact with the
    NumPy reference and with the text padded to the top of the range."""
    from compiler.runtime import CompiledModel
    from tests.helpers.tiny_models import export_tiny, input_names, sample_inputs

    model = export_tiny(kind, str(tmp_path / "m.onnx"), dynamo=dynamo, opset=opset, head=head)
    np.savez(tmp_path / "calib.npz", **sample_inputs(kind, 12, seed=3))
    lib = str(tmp_path / "m.so")
    res = compile_model(model, lib, CompileOptions(input_shapes=RANGE, calibration_data=str(tmp_path / "calib.npz"),
                                                   buckets=(("seq", (8,)),)))
    m, ref, names = CompiledModel(lib), res.reference(), input_names(kind)
    for n in (1, 2, 3, 5, 8, 9, 10, 11, 13, 16):
        feed = {k: v for k, v in _feed(n, seed=n).items() if k in names}
        own = m(feed)[0]
        assert np.array_equal(own, ref(feed)[0]), n
        padded = m({k: np.pad(v, [(0, 0), (0, 16 - n)]) for k, v in feed.items()})[0]
        assert np.array_equal(own, padded[:, :n] if head == "none" else padded), n
