"""import_marian on a tiny Bergamot-like model: the two ONNX graphs, stepped with explicit state, give the
log-probabilities of an independent NumPy forward pass of the architecture, with padded batches."""

import numpy as np
import onnx
import pytest

from compiler.errors import IntformerError
from compiler.seq2seq.backends import OrtBackend
from compiler.seq2seq.marian import import_marian
from compiler.seq2seq.spec import load_spec
from tests.helpers.marian_files import reference_logprobs, train_tiny_spm, write_tiny_model

ALLOWED_OPS = {"Gather", "Mul", "Add", "Sub", "MatMul", "Reshape", "Transpose", "Softmax", "LayerNormalization",
               "Relu", "Sigmoid", "Equal", "Where", "LogSoftmax", "Identity"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("marian")
    spm = train_tiny_spm(str(d))
    import sentencepiece

    vocab = sentencepiece.SentencePieceProcessor(model_file=spm).get_piece_size()
    weights = write_tiny_model(str(d / "model"), spm, vocab, enc=2, dec=2)
    spec = import_marian(str(d / "model"), str(d / "bundle"), batch=3, max_src_len=7, max_tgt_len=6)
    return weights, spec, str(d / "bundle"), vocab


def test_bundle_files_and_spec(tiny):
    _, spec, bundle, vocab = tiny
    assert load_spec(bundle) == spec
    assert spec.encoder_outputs == ("ctx_k1", "ctx_v1", "ctx_k2", "ctx_v2")
    assert [s.input for s in spec.states] == ["c1_in", "c2_in"] and spec.states[0].shape == ("B", 1, 8)
    assert spec.bos_id == vocab and spec.eos_id == 0 and spec.vocab_size == vocab
    for name in ("encoder.onnx", "decoder.onnx"):
        m = onnx.load(f"{bundle}/{name}")
        assert {n.op_type for n in m.graph.node} <= ALLOWED_OPS
        for mm in (n for n in m.graph.node if n.op_type == "MatMul"):  # projections: a constant right operand
            assert mm.input[1] in {i.name for i in m.graph.initializer} or "scores" in mm.name or "context" in mm.name


def test_steps_match_numpy_reference(tiny):
    weights, spec, bundle, vocab = tiny
    be = OrtBackend(bundle)
    srcs = [[5, 9, 3, 11, 0], [7, 2, 0]]  # different lengths: the second is padded
    ids = np.zeros((3, 7), np.int64)
    mask = np.zeros((3, 7), np.int64)
    for r, s in enumerate(srcs):
        ids[r, :len(s)], mask[r, :len(s)] = s, 1
    ids[2, 0], mask[2, 0] = 0, 1
    enc = be.encode(ids, mask)
    prev_tok = [[4, 8, 6, 12], [3, 3, 9, 1]]  # teacher-forced target prefixes
    refs = [reference_logprobs(weights, s, p, enc=2, dec=2) for s, p in zip(srcs, prev_tok)]
    states = {s.input: np.zeros(s.concrete_shape(3), np.float32) for s in spec.states}
    for t in range(5):
        prev = np.array([[spec.bos_id if t == 0 else p[t - 1]] for p in prev_tok + [[0] * 4]], np.int64)
        out = be.step({"prev_ids": prev, "step": np.array([t]), "src_mask": mask, **states,
                       **{n: enc[n] for n in spec.encoder_outputs}})
        states = {s.input: out[s.output] for s in spec.states}
        assert out["logprobs"].shape == (3, vocab)
        for r in range(2):
            np.testing.assert_allclose(out["logprobs"][r], refs[r][t], atol=2e-4, err_msg=f"row {r} step {t}")


def test_import_errors(tmp_path, tiny):
    with pytest.raises(IntformerError, match="not a folder"):
        import_marian(str(tmp_path / "none"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IntformerError, match="one Marian model .bin"):
        import_marian(str(tmp_path / "empty"), str(tmp_path / "out"))
