"""Fast seq2seq pieces: the transformers Marian exporter agrees with transformers' own greedy generation, the
int8 graph-boundary rewrite, and the multi-entry manifest (old single-entry manifests still load)."""

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.artifact import EntrySpec, IndexBound, IOQuant, Manifest
from compiler.calibrate.table import CalibrationInfo, CalibrationTable, TensorRange
from compiler.config import TensorSpec
from compiler.report import GraphReport
from compiler.seq2seq.boundaries import crossing_qparams, quantize_io
from compiler.seq2seq.spec import Seq2SeqSpec, StateSpec


def test_exported_bundle_decodes_like_transformers(tmp_path):
    import torch

    from compiler.seq2seq.backends import OrtBackend
    from compiler.seq2seq.calibration import encode_rows, tokenizer
    from compiler.seq2seq.decode import DecodeOptions, greedy_batch, pad_batch
    from compiler.seq2seq.spec import load_spec
    from tests.helpers.tiny_marian import MAX_TGT, make_bundle, sentences, tiny_marian

    folder = make_bundle(str(tmp_path / "b"))
    spec = load_spec(folder)
    seqs = encode_rows(tokenizer(folder, spec), spec, sentences(2, seed=5))
    ids, mask = pad_batch(seqs, 2, spec.max_src_len, spec.pad_id)
    # no length limit but T: transformers decodes max_new_tokens = T
    ours = greedy_batch(OrtBackend(folder), seqs, DecodeOptions(max_len_factor=float(MAX_TGT)))
    with torch.no_grad():
        hf = tiny_marian(spec.vocab_size).generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                                   max_new_tokens=MAX_TGT, do_sample=False, num_beams=1)
    hf = hf.numpy()[:, 1:MAX_TGT + 1]  # without the start token
    for row, ref in zip(ours, hf):  # ours ends before eos; transformers forces eos as the last token
        n = min(len(row), MAX_TGT - 1)
        assert row[:n] == list(ref[:n])
        if len(row) < MAX_TGT - 1:  # we stopped at eos: so did transformers
            assert ref[len(row)] == spec.eos_id


def _tiny_graph():
    x = helper.make_tensor_value_info("state", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("state_out", onnx.TensorProto.FLOAT, [2, 3])
    z = helper.make_tensor_value_info("also", onnx.TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Relu", ["state"], ["state_out"]), helper.make_node("Neg", ["state_out"], ["also"])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y, z]), opset_imports=[helper.make_opsetid("", 17)])


def test_quantize_io_makes_named_inputs_and_outputs_int8():
    import onnxruntime as ort

    m = quantize_io(_tiny_graph(), {"state": (0.5, 0), "state_out": (0.25, 0)})
    onnx.checker.check_model(m)
    types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}
    assert types == {"state": onnx.TensorProto.INT8, "state_out": onnx.TensorProto.INT8, "also": onnx.TensorProto.FLOAT}
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    q = np.array([[-4, 2, 7], [0, 1, -1]], np.int8)
    out, also = sess.run(["state_out", "also"], {"state": q})
    real = np.maximum(q * 0.5, 0)
    assert np.array_equal(out, np.round(real / 0.25).astype(np.int8)) and np.allclose(also, -real)


def test_crossing_scales_are_shared_and_symmetric():
    spec = Seq2SeqSpec("e.onnx", "d.onnx", ("enc_out",), (StateSpec("c", "c_out", ("B", 4)),), 0, 0, 0, 10, 4, 4)

    def table(**ranges):
        return CalibrationTable("", (), 1, 99.0, "data", tuple((n, TensorRange(lo, hi, lo, hi)) for n, (lo, hi)
                                                                 in ranges.items()))

    qp = crossing_qparams(spec, table(enc_out=(-2.0, 6.35)), table(c_out=(-1.27, 0.5)), lambda r: (r.min, r.max))
    assert qp["c"] == qp["c_out"] and qp["c"][1] == 0 and np.isclose(qp["c"][0], 0.01)
    assert np.isclose(qp["enc_out"][0], 0.05) and qp["enc_out"][1] == 0


NO_OPS = GraphReport.from_json({})
CALIBRATION = CalibrationInfo("minmax", "data", 99.99, samples=1)


def test_manifest_entries_round_trip_and_old_manifests_load():
    e = EntrySpec("decoder", (TensorSpec("c", (2, 4), "int8"),), (TensorSpec("logprobs", (2, 10), "float32"),),
                  (IOQuant("c", 0.01, 0),), (IndexBound("prev_ids", -10, 9),), "abc")
    m = Manifest((), (), {}, {}, "", "", CALIBRATION, {}, NO_OPS, entries=(e,), seq2seq={"format": "intformer-seq2seq"})
    back = Manifest.from_json(m.to_json())
    assert back.entry_spec("decoder") == e and back.seq2seq == m.seq2seq
    plain = Manifest((TensorSpec("x", (1,), "int64"),), (), {}, {}, "", "", CALIBRATION, {}, NO_OPS)
    old = {k: v for k, v in plain.to_json().items() if k not in ("entries", "seq2seq")}
    assert Manifest.from_json(old).entries == () and Manifest.from_json(old).entry == "main"
    with pytest.raises(KeyError):
        back.entry_spec("encoder")
