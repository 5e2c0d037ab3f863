"""Calibration feeds for an encoder-decoder from source text: the encoder on the tokenized sentences, the
decoder on the inputs of every step of greedy decoding of those sentences with the fp32 bundle (onnxruntime):
real encoder outputs and real decoder states, not random ones."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from compiler.errors import IntformerError
from compiler.seq2seq.greedy import OnnxBackend, greedy, pad_batch
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


def batch_size(folder: str, spec: Seq2SeqSpec) -> int:
    import onnx

    m = onnx.load(os.path.join(folder, spec.encoder), load_external_data=False)
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_value:
        raise IntformerError(f"{folder}/{spec.encoder}: the batch dimension must be static")
    return int(dim.dim_value)


def record_feeds(folder: str, spec: Seq2SeqSpec, text_path: str, seed: int = 0) -> Seq2SeqFeeds:
    lines = read_sentences(text_path)
    rows = encode_rows(tokenizer(folder, spec), spec, lines)
    rows.sort(key=len)  # batches of similar lengths, as decoding packs them
    b = batch_size(folder, spec)
    backend = OnnxBackend(folder, spec)
    enc, dec = [], []
    for i in range(0, len(rows), b):
        ids, mask = pad_batch(spec, rows[i:i + b], b)
        enc.append({"src_ids": ids, "src_mask": mask})
        greedy(backend, spec, ids, mask, on_step=lambda inputs: dec.append(dict(inputs)))
    if len(dec) > MAX_DECODER_SAMPLES:
        keep = np.linspace(0, len(dec) - 1, MAX_DECODER_SAMPLES).round().astype(int)
        dec = [dec[k] for k in keep]
    return Seq2SeqFeeds(tuple(enc), tuple(dec), len(lines))
