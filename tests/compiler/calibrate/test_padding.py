"""Padding never enters a calibration statistic (compiler/calibrate/padding.py)."""

import numpy as np

from compiler.calibrate import collect, padding
from compiler.frontend.load import load_onnx
from compiler.frontend.shapes import bind_input_shapes
from compiler.frontend.simplify import simplify


def _pinned(path, seq=16):
    model = load_onnx(path)
    specs = bind_input_shapes(model, {"input_ids": (1, seq)})
    return simplify(model), specs


def _samples(pad_id, n=6, seq=16):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        length = 5 + i
        ids = np.full((1, seq), pad_id, np.int64)
        ids[0, :length] = rng.integers(3, 100, length)
        mask = np.zeros((1, seq), np.int64)
        mask[0, :length] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return out


def test_token_axes_found_by_a_second_length(tiny_bert):
    model, specs = _pinned(tiny_bert[0])
    pos = padding.find_token_positions(model, specs, tiny_bert[0])
    axes = dict(pos.axes)
    assert pos.mask == "attention_mask" and pos.length == 16
    assert any(a == (1,) for a in axes.values())  # hidden states (1, seq, 32)
    assert any(a == (2, 3) for a in axes.values())  # attention scores (1, heads, seq, seq): queries and keys


def test_what_padding_holds_changes_no_statistic(tiny_bert):
    """The same texts padded with two different token ids: the same table when padding is left out; a different
    one when it is not (so the test can fail)."""
    model, specs = _pinned(tiny_bert[0])
    pos = padding.find_token_positions(model, specs, tiny_bert[0])
    tables = {}
    for pad_id in (0, 77):
        for use in (True, False):
            t = collect.collect(model, _samples(pad_id), "x", specs, positions=pos if use else None)
            tables[pad_id, use] = {n: (r.min, r.max, r.pct_lo, r.pct_hi, r.hist, r.hist_max) for n, r in t.tensors}
    assert tables[0, True] == tables[77, True]
    assert tables[0, False] != tables[77, False]
