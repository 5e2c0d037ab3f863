"""Calibration and length: short variants of each sample (augment_lengths), and padded positions kept out of
every statistic."""

import numpy as np

from compiler.calibrate import collect
from compiler.config import TensorSpec

SPECS = [TensorSpec("input_ids", (1, 16), "int64"), TensorSpec("attention_mask", (1, 16), "int64"),
         TensorSpec("token_type_ids", (1, 16), "int64")]


def _sample(n: int, pad: int = 0) -> dict:
    ids = np.full((1, 16), pad, np.int64)
    ids[0, :n] = np.arange(100, 100 + n)
    mask = np.zeros((1, 16), np.int64)
    mask[0, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((1, 16), np.int64)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_short_variants_keep_the_first_tokens_and_the_end_marker():
    base = [_sample(16), _sample(14, pad=7)]
    out = collect.augment_lengths(base, SPECS)
    assert _same(out[0], base[0]) and _same(out[1], base[1])  # the samples themselves first, untouched
    extra = out[2:]
    assert 1 <= len(extra) <= 2 * collect.VARIANTS
    for v in extra:
        n = int(v["attention_mask"].sum())
        assert n in collect.SHORT_LENGTHS and np.all(v["attention_mask"][0, :n] == 1)
        ids = v["input_ids"][0]
        assert list(ids[:n - 1]) == list(range(100, 100 + n - 1))
        last = int(ids[n - 1])
        assert last in (115, 113)  # the source sample's last real token (its end marker)
        assert np.all(ids[n:] == (0 if last == 115 else 7))  # padded as the source sample is


def test_no_mask_input_or_short_samples_are_left_alone():
    specs = [TensorSpec("input_ids", (1, 16), "int64")]
    s = {"input_ids": np.arange(16, dtype=np.int64)[None]}
    out = collect.augment_lengths([s], specs)
    assert len(out) == 1 and _same(out[0], s)
    out = collect.augment_lengths([_sample(3)], SPECS)
    assert len(out) == 1 and _same(out[0], _sample(3))


def test_padding_never_enters_a_range(tiny_bert):
    import onnx

    from compiler.frontend.shapes import bind_input_shapes
    from compiler.frontend.simplify import simplify

    model_path, _, _ = tiny_bert
    model = onnx.load(model_path)
    bind_input_shapes(model, {"input_ids": (1, 16)})
    model = simplify(model)
    a, b = _sample(9, pad=0), _sample(9, pad=50)  # other pad ids: other activations at the padded positions
    for s in (a, b):
        s["input_ids"][0, :9] -= 90  # ids inside the tiny vocabulary
    a = collect.collect(model, [a], "x", SPECS)
    b = collect.collect(model, [b], "x", SPECS)
    ra, rb = dict(a.tensors), dict(b.tensors)
    hidden = [n for n in ra if "LayerNorm" in n or "layer_norm" in n.lower()]
    assert hidden
    for n in hidden:
        assert (ra[n].min, ra[n].max) == (rb[n].min, rb[n].max), n
