"""A tiny transformers Marian encoder-decoder compiled integer-only into one library with `encoder` and
`decoder` entry points: both bit-exact with the NumPy reference, int8 tensors between them and between steps,
no float op, the vocabulary inside, greedy decoding close to fp32; the CLI contract with --calibration-text."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.tiny_marian import make_bundle, sentences

pytestmark = pytest.mark.slow  # one compile of both graphs: about 110 s on this machine

# random weights give flat next-token distributions (top-2 log-prob gaps of a few 0.01): token agreement is a
# weak measure here. Measured (entropy calibration, 20 sentences): token agreement 0.68 over 8 steps, first-step
# log-prob mean abs error 0.21 (max 1.0), encoder output cosine >= 0.984. The real Bergamot en->pt model gave
# the fp32 translations word for word (README); this tiny model's larger error is not understood yet.
MIN_TOKEN_AGREEMENT = 0.5
MAX_FIRST_STEP_LOGPROB_MEAN_ERROR = 0.35
MIN_ENCODER_COSINE = 0.97


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from compiler import api
    from compiler.config import CompileOptions

    d = tmp_path_factory.mktemp("s2s")
    bundle = make_bundle(str(d / "bundle"))
    text = d / "calib.txt"
    text.write_text("\n".join(sentences(16, seed=3)) + "\n")
    res = api.compile_model(bundle, str(d / "s2s.so"), CompileOptions(calibration_method="entropy"),
                            report_path=str(d / "report.json"), calibration_text=str(text))
    return bundle, res, d


def _batches(spec, folder, n=12):
    """Token id rows of n test sentences, two a batch (the tiny model's batch)."""
    from compiler.seq2seq.calibration import encode_rows, tokenizer

    rows = encode_rows(tokenizer(folder, spec), spec, sentences(n, seed=11))
    return [rows[i:i + 2] for i in range(0, n, 2)]


def _padded(spec, seqs):
    from compiler.seq2seq.decode import pad_batch

    return pad_batch(seqs, 2, spec.max_src_len, spec.pad_id)


def test_integer_only_with_int8_crossings_and_vocabulary(compiled):
    bundle, res, d = compiled
    report = json.load(open(d / "report.json"))
    assert report["float_ops"] == [] and report["matmuls"]["int8"] == report["matmuls"]["total"] > 0
    m = res.manifest
    enc, dec = m.entry_spec("encoder"), m.entry_spec("decoder")
    assert {s.name: s.dtype for s in enc.outputs} == {"enc_out": "int8"}
    dec_in = {s.name: s.dtype for s in dec.inputs}
    assert dec_in["enc_out"] == "int8" and all(dec_in[f"cache_{kv}{i}"] == "int8" for kv in "kv" for i in (0, 1))
    assert {s.name: s.dtype for s in dec.outputs}["logprobs"] == "float32"
    assert {q.name: q.scale for q in enc.quant}["enc_out"] == {q.name: q.scale for q in dec.quant}["enc_out"]
    with open(os.path.join(bundle, "spm.model"), "rb") as f:
        from compiler.seq2seq.backend_tvm import CompiledBackend

        assert CompiledBackend(res.library).vocabulary() == f.read()


def test_both_entry_points_bit_exact_with_reference(compiled):
    from compiler.seq2seq.backend_tvm import CompiledBackend, ReferenceBackend
    from compiler.seq2seq.decode import greedy_batch

    bundle, res, _ = compiled
    lib, ref = CompiledBackend(res.library), ReferenceBackend(res)
    for seqs in _batches(lib.spec, bundle, 4):
        ids, mask = _padded(lib.spec, seqs)
        a, b = lib.encode(ids, mask), ref.encode(ids, mask)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        steps = []
        toks = greedy_batch(lib, seqs, on_step=lambda t, inputs, outputs, steps=steps: steps.append(inputs))
        assert steps
        for x in steps:
            o1, o2 = lib.step(x), ref.step(x)
            assert all(np.array_equal(o1[k], o2[k]) for k in o1)
        assert toks == greedy_batch(ref, seqs)


def test_greedy_close_to_fp32(compiled):
    from compiler.seq2seq.backend_tvm import CompiledBackend
    from compiler.seq2seq.backends import OrtBackend
    from compiler.seq2seq.decode import greedy_batch, initial_states

    bundle, res, _ = compiled
    lib = CompiledBackend(res.library)
    fp = OrtBackend(bundle)
    agree = total = 0
    for seqs in _batches(lib.spec, bundle, 20):
        ids, mask = _padded(lib.spec, seqs)
        first = {"prev_ids": np.full((2, 1), lib.spec.bos_id, np.int64), "step": np.zeros(1, np.int64),
                 "src_mask": mask}
        enc_int, enc_fp = lib.encode(ids, mask), fp.encode(ids, mask)
        scale = {q.name: q.scale for q in lib.manifest.entry_spec("encoder").quant}["enc_out"]
        e1, e2 = enc_int["enc_out"].astype(np.float64) * scale, enc_fp["enc_out"].astype(np.float64)
        assert np.sum(e1 * e2) / np.linalg.norm(e1) / np.linalg.norm(e2) >= MIN_ENCODER_COSINE
        lp_int = lib.step({**first, **enc_int, **initial_states(lib, 2)})["logprobs"]
        lp_fp = fp.step({**first, **{k: enc_fp[k] for k in fp.spec.encoder_outputs}, **initial_states(fp, 2)})
        assert np.mean(np.abs(lp_int - lp_fp["logprobs"])) <= MAX_FIRST_STEP_LOGPROB_MEAN_ERROR
        for t1, t2 in zip(greedy_batch(lib, seqs), greedy_batch(fp, seqs)):  # position by position
            n = max(len(t1), len(t2))
            agree += sum(a == b for a, b in zip(t1, t2))
            total += n
    assert agree / total >= MIN_TOKEN_AGREEMENT


def test_cli_contract_needs_calibration_text(compiled, tmp_path):
    bundle, _, _ = compiled
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", bundle, "-o", str(tmp_path / "x.so")],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "--calibration-text" in r.stderr and "Traceback" not in r.stderr
