"""Batching and decoding for seq2seq bundles, independent of the backend that runs the two graphs.

A backend (:class:`Backend`) runs the encoder and one decoder step on a fixed batch of ``batch_size`` rows; this
module turns lines of text into token ids, splits lines longer than the compiled source length at sentence or
segment boundaries, sorts the pieces by length and packs them into batches (Bhandare et al. 2019: sentences of
similar length together, so a batch stops decoding when its sentences do), decodes greedily or with a small beam,
and returns one output line per input line, in input order. Every step's inputs and outputs can be observed with
``on_step`` (e.g. to record real decoder states for calibration).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from compiler.errors import IntformerError
from compiler.seq2seq.spec import Seq2SeqSpec

StepHook = Callable[[int, dict, dict], None]  # (step, inputs, outputs)


class Backend(Protocol):
    """``initial_states(batch)`` is optional (default: zeros of the spec's state shapes and dtypes); a backend
    whose states are integer codes with a zero point gives its own. ``batch`` may stand for ``batch_size``."""

    spec: Seq2SeqSpec
    batch_size: int  # rows of every encode/step call

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> dict[str, np.ndarray]: ...

    def step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def rows_of(backend) -> int:
    rows = getattr(backend, "batch_size", None) or getattr(backend, "batch", None)
    if not rows:
        raise IntformerError(f"{type(backend).__name__}: a decoding backend needs batch_size (its static batch)")
    return int(rows)


def initial_states(backend, rows: int) -> dict[str, np.ndarray]:
    init = getattr(backend, "initial_states", None)
    if init is not None:
        return init(rows)
    return {s.input: np.zeros(s.concrete_shape(rows), dtype=s.dtype) for s in backend.spec.states}


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """SentencePiece pieces as ids (Marian vocabularies use the .spm ids directly), from a file or the bytes
    of the model (a vocabulary that travels inside a library's manifest)."""

    def __init__(self, path: str = "", model_bytes: bytes = b""):
        import sentencepiece as spm

        try:
            self.sp = (spm.SentencePieceProcessor(model_proto=model_bytes) if model_bytes
                       else spm.SentencePieceProcessor(model_file=path))
        except (OSError, RuntimeError, TypeError) as e:
            raise IntformerError(f"{path or 'the embedded vocabulary'}: cannot load the SentencePiece "
                                 f"vocabulary ({e})") from None

    @staticmethod
    def of_backend(backend) -> SentencePieceTokenizer:
        """The vocabulary of a backend: ``vocab_path`` (a bundle) or ``vocabulary()`` bytes (a library)."""
        if getattr(backend, "vocab_path", None):
            return SentencePieceTokenizer(backend.vocab_path)
        if hasattr(backend, "vocabulary"):
            return SentencePieceTokenizer(model_bytes=backend.vocabulary())
        raise IntformerError(f"{type(backend).__name__}: the model carries no vocabulary")

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


# ---- splitting long lines ------------------------------------------------------------------------------
# from coarse to fine: sentence ends, clause punctuation, any whitespace
_SPLITS = (re.compile(r"(?<=[.!?…。])\s+"), re.compile(r"(?<=[,;:])\s+"), re.compile(r"\s+"))


def split_to_fit(text: str, encode: Callable[[str], list[int]], max_tokens: int, level: int = 0) -> list[list[int]]:
    """Token ids of `text` in pieces of at most `max_tokens`, cut at the coarsest boundaries that make them fit
    (sentences, then clauses, then words, then plain token windows); nothing is dropped."""
    ids = encode(text)
    if len(ids) <= max_tokens:
        return [ids] if ids else []
    if level >= len(_SPLITS):
        return [ids[i:i + max_tokens] for i in range(0, len(ids), max_tokens)]
    parts = [p for p in _SPLITS[level].split(text) if p]
    if len(parts) == 1:
        return split_to_fit(text, encode, max_tokens, level + 1)
    pieces: list[list[int]] = []
    current = ""
    for part in parts:
        joined = f"{current} {part}" if current else part
        if current and len(encode(joined)) > max_tokens:
            pieces += split_to_fit(current, encode, max_tokens, level + 1)
            current = part
        else:
            current = joined
    pieces += split_to_fit(current, encode, max_tokens, level + 1)
    return pieces


# ---- batching -----------------------------------------------------------------------------------------
def pack_batches(lengths: Sequence[int], batch_size: int, sort: bool = True) -> list[list[int]]:
    """Indices grouped into batches of at most `batch_size`, longest first, each batch of similar lengths
    (sorting is the bin packing for fixed-size batches: it minimizes the padding of every batch);
    `sort=False` keeps the input order (for comparison)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if sort else list(range(len(lengths)))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_waste(lengths: Sequence[int], batches: list[list[int]]) -> float:
    """Fraction of token slots that are padding when each batch is padded to its longest sentence."""
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 1.0 - sum(lengths) / slots if slots else 0.0


def pad_batch(seqs: list[list[int]], rows: int, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of shape (rows, length) for up to `rows` id sequences; filler rows hold one token."""
    ids = np.full((rows, length), pad_id, dtype=np.int64)
    mask = np.zeros((rows, length), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
        mask[r, :len(s)] = 1
    for r in range(len(seqs), rows):  # filler rows: one end-of-sentence token, finished at once
        ids[r, 0], mask[r, 0] = pad_id, 1
    return ids, mask


# ---- decoding -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeOptions:
    beam: int = 1
    max_len_factor: float = 2.5  # at most ceil(factor * source tokens) target tokens (Marian's default), and T
    length_penalty: float = 1.0  # beam search ranks finished hypotheses by score / length ** penalty
    batch: int = 0  # sentences per encode call; 0: the backend's batch size
    sort_by_length: bool = True  # batch sentences of similar length together (False: input order)


def _first_inputs(backend: Backend, enc: dict, src_mask: np.ndarray) -> tuple[dict, dict]:
    spec = backend.spec
    missing = [n for n in spec.encoder_outputs if n not in enc]
    if missing:
        raise IntformerError(f"the encoder did not return {missing} (listed in the bundle's encoder_outputs)")
    src_mask = np.array(src_mask)
    src_mask.flags.writeable = False  # the same every step: a compiled backend uploads it once per batch
    fixed = {"src_mask": src_mask, **{n: enc[n] for n in spec.encoder_outputs}}
    return fixed, initial_states(backend, src_mask.shape[0])


def _run_step(backend: Backend, t: int, prev: np.ndarray, fixed: dict, states: dict,
              on_step: Optional[StepHook]) -> tuple[np.ndarray, dict]:
    inputs = {"prev_ids": prev, "step": np.array([t], dtype=np.int64), **fixed, **states}
    out = backend.step(inputs)
    if on_step is not None:
        on_step(t, inputs, out)
    return out["logprobs"], {s.input: out[s.output] for s in backend.spec.states}


def _limits(lengths: Sequence[int], spec: Seq2SeqSpec, opts: DecodeOptions) -> list[int]:
    return [min(spec.max_tgt_len, max(1, math.ceil(opts.max_len_factor * n))) for n in lengths]


def greedy_batch(backend: Backend, seqs: list[list[int]], opts: DecodeOptions = DecodeOptions(),
                 on_step: Optional[StepHook] = None) -> list[list[int]]:
    """Greedy decoding of up to ``backend.batch_size`` source id sequences (each ending with eos)."""
    spec, rows = backend.spec, rows_of(backend)
    src_ids, src_mask = pad_batch(seqs, rows, spec.max_src_len, spec.pad_id)
    fixed, states = _first_inputs(backend, backend.encode(src_ids, src_mask), src_mask)
    limits = _limits([len(s) for s in seqs], spec, opts) + [0] * (rows - len(seqs))
    out: list[list[int]] = [[] for _ in range(rows)]
    done = np.array([lim == 0 for lim in limits])
    prev = np.full((rows, 1), spec.bos_id, dtype=np.int64)
    for t in range(spec.max_tgt_len):
        if done.all():
            break
        logprobs, states = _run_step(backend, t, prev, fixed, states, on_step)
        best = np.argmax(logprobs, axis=-1)
        for r in np.flatnonzero(~done):
            if best[r] == spec.eos_id:
                done[r] = True
            else:
                out[r].append(int(best[r]))
                done[r] = len(out[r]) >= limits[r]
        prev = np.where(done, spec.eos_id, best).astype(np.int64)[:, None]
    return out[:len(seqs)]


def beam_batch(backend: Backend, seqs: list[list[int]], opts: DecodeOptions,
               on_step: Optional[StepHook] = None) -> list[list[int]]:
    """Beam search over ``batch_size // beam`` sentences at a time (each sentence owns ``beam`` rows)."""
    spec, rows, k = backend.spec, rows_of(backend), opts.beam
    n = len(seqs)
    if n * k > rows:
        raise IntformerError(f"beam {k} x {n} sentences needs {n * k} rows; the model's batch is {rows}")
    src_ids, src_mask = pad_batch(seqs, rows, spec.max_src_len, spec.pad_id)
    enc = backend.encode(src_ids, src_mask)
    owner = np.minimum(np.arange(rows) // k, max(n - 1, 0))  # row -> sentence (spare rows copy the last one)
    enc = {name: enc[name][owner] for name in spec.encoder_outputs if name in enc}
    fixed, states = _first_inputs(backend, enc, src_mask[owner])
    limits = _limits([len(s) for s in seqs], spec, opts)
    score = np.full(rows, -np.inf)
    score[np.arange(n) * k] = 0.0  # one live hypothesis per sentence at the start
    hyps: list[list[int]] = [[] for _ in range(rows)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    width = [k] * n  # Marian: a finished hypothesis leaves the beam, which narrows until it is empty

    def norm(score_: float, length: int) -> float:
        return score_ / max(length, 1) ** opts.length_penalty

    prev = np.full((rows, 1), spec.bos_id, dtype=np.int64)
    for t in range(spec.max_tgt_len):
        if not any(width):
            break
        logprobs, states = _run_step(backend, t, prev, fixed, states, on_step)
        src_rows, next_prev = np.arange(rows), np.full(rows, spec.eos_id, dtype=np.int64)
        new_hyps, new_score = list(hyps), np.full(rows, -np.inf)
        for j in (j for j in range(n) if width[j]):
            base = j * k
            cand = (score[base:base + k, None] + logprobs[base:base + k]).reshape(-1)
            slot = 0
            top = np.argpartition(-cand, width[j] - 1)[:width[j]]
            for c in top[np.argsort(-cand[top], kind="stable")]:
                beam, tok = divmod(int(c), logprobs.shape[1])
                seq = hyps[base + beam] + ([] if tok == spec.eos_id else [tok])
                if tok == spec.eos_id or len(seq) >= limits[j]:
                    finished[j].append((norm(float(cand[c]), len(seq) + 1), seq))
                    width[j] -= 1
                else:
                    src_rows[base + slot], next_prev[base + slot] = base + beam, tok
                    new_hyps[base + slot], new_score[base + slot] = seq, cand[c]
                    slot += 1
        hyps, score = new_hyps, new_score
        states = {name: v[src_rows] for name, v in states.items()}
        prev = next_prev[:, None]
    for j in range(n):  # out of steps: the live hypotheses compete too
        for r in range(j * k, j * k + k):
            if np.isfinite(score[r]):
                finished[j].append((norm(float(score[r]), len(hyps[r])), hyps[r]))
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]


# ---- lines in, lines out ------------------------------------------------------------------------------
def as_text(line) -> str:
    """A line as text without its line break; bytes that are not UTF-8 become U+FFFD."""
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode("utf-8", errors="replace")
    return line.rstrip("\r\n")


@dataclass(frozen=True)
class TranslationStats:
    lines: int
    pieces: int  # source pieces decoded (a long line gives several)
    split_lines: int
    batches: int
    padding_waste: float  # token slots of padding with batches padded to their longest piece
    target_tokens: int


def _per_call(backend: Backend, opts: DecodeOptions) -> int:
    rows = rows_of(backend)
    per_call = opts.batch or rows
    if opts.beam < 1:
        raise IntformerError(f"--beam must be >= 1, got {opts.beam}")
    if opts.beam > 1:
        per_call = min(per_call, rows // opts.beam)
        if per_call < 1:
            raise IntformerError(f"--beam {opts.beam} is larger than the model's batch {rows}")
    elif per_call > rows:
        raise IntformerError(f"--batch {per_call} is larger than the compiled batch {rows}")
    return per_call


def decode_ids(seqs: list[list[int]], backend: Backend, opts: DecodeOptions = DecodeOptions(),
               on_step: Optional[StepHook] = None) -> tuple[list[list[int]], list[list[int]]]:
    """Target ids for each source id sequence (each ending with eos, at most max_src_len long), in input
    order; and the batches (lists of indices) they were decoded in."""
    too_long = [i for i, s in enumerate(seqs) if len(s) > backend.spec.max_src_len]
    if too_long:
        raise IntformerError(f"source {too_long[0]} has {len(seqs[too_long[0]])} tokens, more than the compiled "
                             f"maximum {backend.spec.max_src_len} (translate_lines splits long lines)")
    batches = pack_batches([len(s) for s in seqs], _per_call(backend, opts), opts.sort_by_length)
    decoded: list[list[int]] = [[] for _ in seqs]
    run = greedy_batch if opts.beam == 1 else beam_batch
    for b in batches:
        for idx, ids in zip(b, run(backend, [seqs[i] for i in b], opts, on_step)):
            decoded[idx] = ids
    return decoded, batches


def translate_lines(lines: Sequence, backend: Backend, tokenizer: Tokenizer, opts: DecodeOptions = DecodeOptions(),
                    on_step: Optional[StepHook] = None) -> tuple[list[str], TranslationStats]:
    """One translation per input line, in input order (empty for a blank line); lines longer than the compiled
    source length are split (see split_to_fit) and their pieces' translations joined with a space."""
    spec = backend.spec
    pieces: list[list[int]] = []
    owner: list[int] = []
    split = 0
    for i, line in enumerate(lines):
        text = as_text(line).strip()
        if not text:
            continue
        chunks = split_to_fit(text, tokenizer.encode, spec.max_src_len - 1)
        split += len(chunks) > 1
        for ids in chunks:
            pieces.append(ids + [spec.eos_id])
            owner.append(i)
    decoded, batches = decode_ids(pieces, backend, opts, on_step)
    outputs: list[list[str]] = [[] for _ in lines]
    for i, ids in zip(owner, decoded):
        outputs[i].append(tokenizer.decode(ids))
    stats = TranslationStats(len(lines), len(pieces), split, len(batches),
                             padding_waste([len(p) for p in pieces], batches), sum(len(d) for d in decoded))
    return [" ".join(o) for o in outputs], stats
