"""A minimal greedy decoding loop over the bundle's decode protocol, with a hook that sees every step's inputs.

Backends implement `encode(src_ids, src_mask) -> {encoder output: array}`, `step(inputs) -> {name: array}` and
`initial_states(batch) -> {state input: zeros}`. Used for decoder calibration (recording real decoder states) and
by the tests; the full decoder (beam search, bin-packed batches) lives in compiler/seq2seq/decode.py.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from compiler.seq2seq.spec import Seq2SeqSpec


def pad_batch(spec: Seq2SeqSpec, rows: list[list[int]], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Token id rows (each ending in eos, at most max_src_len) -> (src_ids, src_mask) of shape (batch, S)."""
    ids = np.full((batch, spec.max_src_len), spec.pad_id, np.int64)
    mask = np.zeros((batch, spec.max_src_len), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    for i in range(len(rows), batch):  # unused rows: one eos token so that attention has a key
        ids[i, 0], mask[i, 0] = spec.eos_id, 1
    return ids, mask


def greedy(backend, spec: Seq2SeqSpec, src_ids: np.ndarray, src_mask: np.ndarray,
           on_step: Optional[Callable[[dict], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding of one padded batch: (tokens (B, max_tgt_len) with eos then pad, per-step logprobs of the
    chosen tokens). `on_step(inputs)` sees the decoder inputs of every step."""
    batch = src_ids.shape[0]
    enc = backend.encode(src_ids, src_mask)
    states = backend.initial_states(batch)
    prev = np.full((batch, 1), spec.bos_id, np.int64)
    done = np.zeros(batch, bool)
    out = np.full((batch, spec.max_tgt_len), spec.pad_id, np.int64)
    scores = np.zeros((batch, spec.max_tgt_len), np.float32)
    for t in range(spec.max_tgt_len):
        inputs = {"prev_ids": prev, "step": np.array([t], np.int64), "src_mask": src_mask, **enc, **states}
        if on_step is not None:
            on_step(inputs)
        res = backend.step(inputs)
        lp = res["logprobs"]
        tok = np.argmax(lp, axis=-1)
        tok = np.where(done, spec.pad_id, tok)
        out[:, t] = tok
        scores[:, t] = lp[np.arange(batch), tok]
        done |= tok == spec.eos_id
        states = {s.input: res[s.output] for s in spec.states}
        prev = tok.reshape(batch, 1).astype(np.int64)
        if done.all():
            break
    return out, scores


class OnnxBackend:
    """The fp32 bundle on onnxruntime."""

    def __init__(self, folder: str, spec: Seq2SeqSpec, threads: int = 0):
        import os

        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.spec = spec
        self.enc = ort.InferenceSession(os.path.join(folder, spec.encoder), so, providers=["CPUExecutionProvider"])
        self.dec = ort.InferenceSession(os.path.join(folder, spec.decoder), so, providers=["CPUExecutionProvider"])
        self.enc_out_names = [o.name for o in self.enc.get_outputs()]
        self.dec_in = [i.name for i in self.dec.get_inputs()]
        self.dec_out = [o.name for o in self.dec.get_outputs()]

    def encode(self, src_ids, src_mask) -> dict:
        outs = self.enc.run(self.enc_out_names, {"src_ids": src_ids, "src_mask": src_mask})
        return {n: v for n, v in zip(self.enc_out_names, outs) if n in self.spec.encoder_outputs}

    def initial_states(self, batch: int) -> dict:
        return {s.input: np.zeros(s.concrete_shape(batch), s.dtype) for s in self.spec.states}

    def step(self, inputs: dict) -> dict:
        return dict(zip(self.dec_out, self.dec.run(self.dec_out, {n: inputs[n] for n in self.dec_in})))
