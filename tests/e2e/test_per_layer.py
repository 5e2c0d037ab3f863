"""`intformer eval --per-layer`: the error of every layer's output against fp32, read off the integer graph
the library was built from."""

import os

import pytest

from compiler.api import evaluate_layers
from compiler.errors import IntformerError


def test_every_layer_norm_and_the_output_against_fp32(tiny_bert_lib):
    from compiler.api import evaluate

    lib, _, model, test = tiny_bert_lib
    table = os.path.join(os.path.dirname(lib), "table.json")
    rows = evaluate_layers(lib, model, test, calibration_table=table, max_samples=4)
    # tiny BERT: the embeddings' LayerNorm and two per layer (2 layers), the last one being last_hidden_state
    assert [r.name for r in rows][-1] == "last_hidden_state" and len(rows) == 5
    assert all("LayerNorm" in r.name for r in rows[:-1])
    for r in rows:
        assert 0.9 < r.cosine_min <= r.cosine_mean <= 1.0 + 1e-9 and r.max_abs_error >= 0
    # local figures: the embeddings have nothing before them (same as the global figure); later layers start from
    # fp32 inputs, so none adds more error than shows at its output after every layer before it
    assert rows[0].local_cosine_mean == rows[0].cosine_mean
    for r in rows[1:]:
        assert 0.9 < r.local_cosine_min <= r.local_cosine_mean <= 1.0 + 1e-9
    assert sum(r.local_cosine_mean for r in rows[1:]) >= sum(r.cosine_mean for r in rows[1:])
    # the reference interpreter is the library: its output error is the library's
    (lib_cmp,) = evaluate(lib, model, test)
    assert rows[-1].max_abs_error <= lib_cmp.max_abs_error + 1e-6


def test_needs_the_libraries_own_calibration(tiny_bert_lib, tmp_path):
    lib, _, model, test = tiny_bert_lib
    with pytest.raises(IntformerError, match="--calibration-table"):
        evaluate_layers(lib, model, test)
    other = tmp_path / "other.json"
    import json

    d = json.load(open(os.path.join(os.path.dirname(lib), "table.json")))
    first = next(iter(d["tensors"]))
    d["tensors"][first]["max"] = float(d["tensors"][first]["max"]) + 1.0
    other.write_text(json.dumps(d))
    with pytest.raises(IntformerError, match="not the calibration table"):
        evaluate_layers(lib, model, test, calibration_table=str(other))


def test_cli_prints_a_row_per_layer(tiny_bert_lib, capsys):
    from compiler.cli import main

    lib, _, model, test = tiny_bert_lib
    table = os.path.join(os.path.dirname(lib), "table.json")
    assert main(["eval", lib, "--model", model, "--inputs", test, "--per-layer", "--calibration-table", table,
                 "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "last_hidden_state" in out and out.count("LayerNorm") >= 5


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_samples_below_one_is_a_usage_error(tiny_bert_lib, bad, capsys):
    from compiler.cli import main

    lib, _, model, test = tiny_bert_lib
    with pytest.raises(SystemExit) as e:
        main(["eval", lib, "--model", model, "--inputs", test, "--per-layer", "--samples", bad])
    assert e.value.code == 2
    assert "--samples" in capsys.readouterr().err
    with pytest.raises(IntformerError, match="at least 1"):
        evaluate_layers(lib, model, test, calibration_table="t.json", max_samples=0)
