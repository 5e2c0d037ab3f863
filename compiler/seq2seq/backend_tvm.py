"""The decode protocol over a compiled seq2seq library: its `encoder` and `decoder` entry points, here or on a
device over RPC. Tensors crossing from the encoder to the decoder and the states carried between steps stay
int8 (their scales are in the manifest entries); only the log-probabilities come out as float."""

from __future__ import annotations

import base64

import numpy as np

from compiler.errors import IntformerError
from compiler.seq2seq.spec import Seq2SeqSpec


class CompiledBackend:
    """`encode(src_ids, src_mask) -> {encoder output: int8}`, `initial_states(batch)`, `step(inputs) -> dict`."""

    def __init__(self, library: str, remote=None):
        from compiler.device import load_model

        self.encoder = load_model(library, remote, entry="encoder")
        m = self.encoder.manifest
        if not m.seq2seq:
            raise IntformerError(f"{library}: not an encoder-decoder library (compile a seq2seq bundle or a "
                                 "Marian folder with --calibration-text)")
        self.decoder = load_model(library, remote, entry="decoder")
        self.spec = Seq2SeqSpec.from_json(m.seq2seq)
        self.batch = self.encoder.inputs[0].shape[0]

    @property
    def batch_size(self) -> int:  # the decode protocol's name (decode.Backend)
        return self.batch

    @property
    def manifest(self):
        return self.encoder.manifest

    def vocabulary(self) -> bytes:
        """The SentencePiece model that travels in the manifest."""
        return base64.b64decode(self.manifest.seq2seq.get("vocab_base64", ""))

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> dict:
        outs = self.encoder({"src_ids": src_ids, "src_mask": src_mask})
        enc = {s.name: v for s, v in zip(self.encoder.outputs, outs) if s.name in self.spec.encoder_outputs}
        for v in enc.values():  # read-only: the decoder step uploads them once per batch, not once per step
            v.flags.writeable = False
        return enc

    def initial_states(self, batch: int) -> dict:
        dtypes = {s.name: s.dtype for s in self.decoder.inputs}
        return {s.input: np.zeros(s.concrete_shape(batch), dtypes[s.input]) for s in self.spec.states}

    def step(self, inputs: dict) -> dict:
        return {s.name: v for s, v in zip(self.decoder.outputs, self.decoder(inputs))}


class ReferenceBackend(CompiledBackend):
    """The same protocol on the NumPy reference of a CompileResult (bit-exact twin of the library)."""

    def __init__(self, result):
        m = result.manifest
        self.spec = Seq2SeqSpec.from_json(m.seq2seq)
        self._enc, self._dec = result.reference("encoder"), result.reference("decoder")
        self._specs = {e.name: e for e in m.entries}
        self.batch = self._specs["encoder"].inputs[0].shape[0]

    def encode(self, src_ids, src_mask):
        outs = self._enc({"src_ids": src_ids, "src_mask": src_mask})
        return {s.name: v for s, v in zip(self._specs["encoder"].outputs, outs) if s.name in self.spec.encoder_outputs}

    def initial_states(self, batch):
        dtypes = {s.name: s.dtype for s in self._specs["decoder"].inputs}
        return {s.input: np.zeros(s.concrete_shape(batch), dtypes[s.input]) for s in self.spec.states}

    def step(self, inputs):
        return {s.name: v for s, v in zip(self._specs["decoder"].outputs, self._dec(inputs))}
