"""Calibration feeds for an encoder-decoder from source text: the encoder on the tokenized sentences, the
decoder on the inputs of every step of greedy decoding of those sentences with the fp32 bundle (onnxruntime,
through the same decoder as `intformer translate`: compiler/seq2seq/decode.py): real encoder outputs and real
decoder states, not random ones."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from compiler.errors import IntformerError
from compiler.seq2seq.spec import Seq2SeqSpec

MAX_DECODER_SAMPLES = 64  # decoder steps kept (evenly spread over all recorded steps)


@dataclass(frozen=True)
class Seq2SeqFeeds:
    encoder: tuple[dict, ...]
    decoder: tuple[dict, ...]
    sentences: int


def read_sentences(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            lines = [ln.decode("utf-8", errors="replace").strip() for ln in f]
    except OSError as e:
        raise IntformerError(f"--calibration-text {path}: cannot read ({e.strerror})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise IntformerError(f"--calibration-text {path}: no non-empty lines (give one source sentence a line)")
    return lines


def tokenizer(folder: str, spec: Seq2SeqSpec):
    import sentencepiece as spm

    path = os.path.join(folder, spec.vocab)
    if not spec.vocab or not os.path.isfile(path):
        raise IntformerError(f"{folder}: the bundle names no SentencePiece vocabulary file (seq2seq.json 'vocab')")
    return spm.SentencePieceProcessor(model_file=path)


def encode_rows(sp, spec: Seq2SeqSpec, lines: list[str]) -> list[list[int]]:
    """Token ids ending in eos, cut to max_src_len (calibration only needs a representative prefix)."""
    return [sp.encode(ln)[: spec.max_src_len - 1] + [spec.eos_id] for ln in lines]


class _RecordingEncoder:
    """A decoding backend that keeps every encoder feed it is given (the decoder's are kept by the step hook)."""

    def __init__(self, backend):
        self.backend, self.spec, self.batch_size = backend, backend.spec, backend.batch_size
        self.feeds: list[dict] = []

    def encode(self, src_ids, src_mask):
        self.feeds.append({"src_ids": src_ids, "src_mask": src_mask})
        return self.backend.encode(src_ids, src_mask)

    def step(self, inputs):
        return self.backend.step(inputs)


def record_feeds(folder: str, spec: Seq2SeqSpec, text_path: str, seed: int = 0) -> Seq2SeqFeeds:
    from compiler.seq2seq.backends import OrtBackend
    from compiler.seq2seq.decode import decode_ids

    lines = read_sentences(text_path)
    rows = encode_rows(tokenizer(folder, spec), spec, lines)
    ort_backend = OrtBackend(folder, threads=0)
    if ort_backend.batch_size < 1:  # OrtBackend: 0 when the encoder's batch dimension is symbolic
        raise IntformerError(f"{folder}/{spec.encoder}: the batch dimension must be static")
    backend = _RecordingEncoder(ort_backend)
    dec: list[dict] = []
    decode_ids(rows, backend, on_step=lambda t, inputs, outputs: dec.append(dict(inputs)))
    if len(dec) > MAX_DECODER_SAMPLES:
        keep = np.linspace(0, len(dec) - 1, MAX_DECODER_SAMPLES).round().astype(int)
        dec = [dec[k] for k in keep]
    return Seq2SeqFeeds(tuple(backend.feeds), tuple(dec), len(lines))
