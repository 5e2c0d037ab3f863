"""The encoder-decoder bundle: two ONNX graphs and how they connect (``seq2seq.json``).

A bundle is a folder::

    seq2seq.json      this spec
    encoder.onnx      inputs: src_ids int64 (B, S), src_mask int64 (B, S) (1 = token, 0 = padding)
                      outputs: enc_out float32 (B, S, D) and any further per-sentence tensors the decoder reads
                      (e.g. precomputed cross-attention keys/values), all listed in ``encoder_outputs``
    decoder.onnx      one greedy step: inputs prev_ids int64 (B, 1), step int64 (1,) (0 for the first step),
                      src_mask, every name in ``encoder_outputs``, every state input; outputs logprobs
                      float32 (B, V) and every state output
    <vocabulary>      e.g. a SentencePiece model (``vocab``), travelling with the compiled library

Shapes are static once B, S and the maximum target length are fixed; states have fixed shapes (a recurrent cell's
state, or a key/value cache of ``max_tgt_len`` positions written at ``step``). This module imports no TVM or ONNX.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

SPEC_FILE = "seq2seq.json"
FORMAT = "intformer-seq2seq"


@dataclass(frozen=True)
class StateSpec:
    """A decoder state carried from one step to the next: ``output`` of step t is ``input`` of step t + 1.

    ``shape`` uses "B" for the batch dimension; the state starts as zeros."""

    input: str
    output: str
    shape: tuple  # ints and "B"
    dtype: str = "float32"

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "B" else int(d) for d in self.shape)


@dataclass(frozen=True)
class Seq2SeqSpec:
    encoder: str  # file names, relative to the bundle folder
    decoder: str
    encoder_outputs: tuple[str, ...]  # encoder outputs the decoder takes as inputs of the same name
    states: tuple[StateSpec, ...]
    bos_id: int  # fed as prev_ids at step 0 (a model whose start is a zero embedding still names an id)
    eos_id: int
    pad_id: int
    vocab_size: int
    max_src_len: int  # S
    max_tgt_len: int  # decoding steps at most (and the key/value cache length, if any)
    vocab: str = ""  # tokenizer file (SentencePiece .spm), relative to the bundle folder
    source: str = ""  # where the bundle came from (importer name and original model), for reports

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "encoder": self.encoder, "decoder": self.decoder,
            "encoder_outputs": list(self.encoder_outputs),
            "states": [{"input": s.input, "output": s.output, "shape": list(s.shape), "dtype": s.dtype}
                       for s in self.states],
            "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id, "vocab_size": self.vocab_size,
            "max_src_len": self.max_src_len, "max_tgt_len": self.max_tgt_len, "vocab": self.vocab,
            "source": self.source,
        }

    @staticmethod
    def from_json(d: dict) -> Seq2SeqSpec:
        if d.get("format") != FORMAT:
            raise ValueError(f"not an intformer seq2seq spec (format {d.get('format')!r}, expected {FORMAT!r})")
        return Seq2SeqSpec(
            encoder=d["encoder"], decoder=d["decoder"], encoder_outputs=tuple(d["encoder_outputs"]),
            states=tuple(StateSpec(s["input"], s["output"], tuple(s["shape"]), s.get("dtype", "float32"))
                         for s in d["states"]),
            bos_id=int(d["bos_id"]), eos_id=int(d["eos_id"]), pad_id=int(d["pad_id"]),
            vocab_size=int(d["vocab_size"]), max_src_len=int(d["max_src_len"]), max_tgt_len=int(d["max_tgt_len"]),
            vocab=d.get("vocab", ""), source=d.get("source", ""),
        )

    def save(self, folder: str) -> str:
        path = os.path.join(folder, SPEC_FILE)
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)
        return path


def is_bundle(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, SPEC_FILE))


def load_spec(folder: str) -> Seq2SeqSpec:
    path = os.path.join(folder, SPEC_FILE)
    try:
        with open(path) as f:
            return Seq2SeqSpec.from_json(json.load(f))
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a valid seq2seq bundle spec ({e})") from None
