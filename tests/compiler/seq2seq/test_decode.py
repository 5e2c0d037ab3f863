"""decode.py on a toy backend whose "translation" of token w is w + 100 (eos = 0), carried by a state."""

import numpy as np
import pytest

from compiler.errors import IntformerError
from compiler.seq2seq.decode import (
    DecodeOptions,
    as_text,
    decode_ids,
    pack_batches,
    padding_waste,
    split_to_fit,
    translate_lines,
)
from compiler.seq2seq.spec import Seq2SeqSpec, StateSpec

V = 400


class ToyBackend:
    """The step reads the position to translate from its state (not from `step`), so a backend that does not
    carry states from one step to the next would repeat the first word."""

    def __init__(self, batch=3, max_src_len=8, max_tgt_len=12):
        self.spec = Seq2SeqSpec("e", "d", ("src",), (StateSpec("pos_in", "pos_out", ("B", 1)),), bos_id=V, eos_id=0,
                                 pad_id=0, vocab_size=V, max_src_len=max_src_len, max_tgt_len=max_tgt_len)
        self.rows = self.batch_size = batch
        self.encodes, self.steps = 0, 0

    def encode(self, src_ids, src_mask):
        assert src_ids.shape == (self.rows, self.spec.max_src_len) == src_mask.shape
        self.encodes += 1
        return {"src": src_ids.astype(np.float32), "unused": np.zeros(1)}

    def step(self, inputs):
        self.steps += 1
        src, pos = inputs["src"].astype(np.int64), inputs["pos_in"].astype(np.int64)[:, 0]
        assert inputs["prev_ids"].shape == (self.rows, 1) and inputs["step"].shape == (1,)
        logp = np.full((self.rows, V), -10.0, np.float32)
        for r in range(self.rows):
            w = src[r, pos[r]] if pos[r] < src.shape[1] else 0
            logp[r, w + 100 if w else 0] = -0.01
        return {"logprobs": logp, "pos_out": (pos + 1)[:, None].astype(np.float32)}


class WordTokenizer:
    """word <-> id: 'w<n>' is id n; anything else is unknown (1)."""

    def encode(self, text):
        words = [w.strip(".,") for w in text.split()]
        return [int(w[1:]) if w[:1] == "w" and w[1:].isdigit() else 1 for w in words]

    def decode(self, ids):
        return " ".join(f"t{i}" for i in ids)


def test_pack_batches_sorts_by_length_and_covers_all():
    lengths = [3, 9, 1, 7, 7, 2, 5]
    batches = pack_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    assert padding_waste(lengths, batches) < padding_waste(lengths, [list(range(i, min(i + 3, 7))) for i in (0, 3, 6)])


def test_greedy_keeps_input_order_and_stops_at_eos():
    be = ToyBackend()
    seqs = [[5, 6, 0], [7, 0], [1, 2, 3, 4, 5, 0], [9, 0], [8, 8, 0]]
    out, batches = decode_ids(seqs, be)
    assert out == [[105, 106], [107], [101, 102, 103, 104, 105], [109], [108, 108]]
    assert be.encodes == len(batches) == 2
    # batches (longest first): lengths 6, 3, 3 then 2, 2; each stops at its last eos (6 steps, then 2)
    assert be.steps == 6 + 2


def test_translate_lines_empty_bad_bytes_and_order():
    be = ToyBackend()
    lines = ["w5 w6", "", b"w7 \xff\xfe w8\n", "   ", "w9\r\n"]
    out, st = translate_lines(lines, be, WordTokenizer())
    assert out == ["t105 t106", "", "t107 t101 t108", "", "t109"]
    assert st.lines == 5 and st.pieces == 3
    assert as_text(b"a\xffb\n") == "a\ufffdb"


def test_long_line_split_at_sentence_boundaries_nothing_dropped():
    be = ToyBackend(max_src_len=5)  # 4 words + eos
    line = "w11 w12. w13 w14 w15. w16, w17 w18 w19 w20 w21 w22 w23 w24 w25"
    out, st = translate_lines([line, "w3"], be, WordTokenizer())
    assert st.split_lines == 1
    assert out[0].split() == [f"t{100 + i}" for i in range(11, 26)]
    assert out[1] == "t103"
    pieces = split_to_fit(line, WordTokenizer().encode, 4)
    assert all(len(p) <= 4 for p in pieces) and sum(pieces, []) == list(range(11, 26))
    # coarse boundaries first: the two short sentences stay whole
    assert split_to_fit("w1 w2. w3 w4 w5.", WordTokenizer().encode, 4) == [[1, 2], [3, 4, 5]]


def test_max_length_limits_and_step_hook():
    be = ToyBackend(max_tgt_len=3)
    seen = []
    out, _ = decode_ids([[1, 2, 3, 4, 5, 0]], be, on_step=lambda t, i, o: seen.append((t, i["pos_in"][0, 0])))
    assert out == [[101, 102, 103]]  # the compiled maximum target length
    assert seen == [(0, 0.0), (1, 1.0), (2, 2.0)]
    out, _ = decode_ids([[1, 2, 3, 4, 5, 6, 7, 0]], ToyBackend(max_tgt_len=12), DecodeOptions(max_len_factor=0.5))
    assert out == [[101, 102, 103, 104]]


def test_beam_search_matches_greedy_on_a_peaked_model():
    seqs = [[5, 6, 0], [7, 0], [1, 2, 3, 0]]
    greedy, _ = decode_ids(seqs, ToyBackend(batch=4))
    beam, _ = decode_ids(seqs, ToyBackend(batch=4), DecodeOptions(beam=2))
    assert beam == greedy


def test_bad_options():
    with pytest.raises(IntformerError, match="larger than the compiled batch"):
        decode_ids([[1, 0]], ToyBackend(batch=2), DecodeOptions(batch=3))
    with pytest.raises(IntformerError, match="beam 3"):
        decode_ids([[1, 0]], ToyBackend(batch=2), DecodeOptions(beam=3))
    with pytest.raises(IntformerError, match="more than the compiled maximum"):
        decode_ids([[1] * 9 + [0]], ToyBackend())


class TrapBackend(ToyBackend):
    """Next-token distributions keyed by the previous token: greedy takes 10 (p .6) and then needs two more
    tokens; the beam finds 20 (p .4) followed at once by eos, better per token."""

    TABLE = {V: {10: 0.6, 20: 0.4}, 10: {11: 0.35, 12: 0.3, 13: 0.3, 0: 0.05}, 20: {0: 1.0}}

    def step(self, inputs):
        self.steps += 1
        logp = np.full((self.rows, V), -30.0, np.float32)
        for r, p in enumerate(inputs["prev_ids"][:, 0]):
            for tok, prob in self.TABLE.get(int(p), {0: 1.0}).items():
                logp[r, tok] = np.log(prob)
        return {"logprobs": logp, "pos_out": inputs["pos_in"]}


def test_beam_search_finds_what_greedy_misses():
    seqs = [[5, 0], [6, 0]]
    assert decode_ids(seqs, TrapBackend(batch=4))[0] == [[10, 11], [10, 11]]
    assert decode_ids(seqs, TrapBackend(batch=4), DecodeOptions(beam=2))[0] == [[20], [20]]


def test_sorting_saves_decoder_steps():
    seqs = [[1] * 6 + [0], [2, 0], [3] * 6 + [0], [4, 0], [5] * 6 + [0], [6, 0]]
    sorted_be, plain_be = ToyBackend(batch=3), ToyBackend(batch=3)
    a, _ = decode_ids(seqs, sorted_be)
    b, _ = decode_ids(seqs, plain_be, DecodeOptions(sort_by_length=False))
    assert a == b
    assert sorted_be.steps == 7 + 2 < plain_be.steps == 7 + 7


class OwnStatesBackend(ToyBackend):
    """A backend that names its batch `batch` and starts its states itself (as integer libraries do)."""

    def __init__(self):
        super().__init__(batch=2)
        self.batch = self.batch_size
        del self.batch_size

    def initial_states(self, rows):
        return {"pos_in": np.ones((rows, 1), np.float32)}  # starts at the second word


def test_backend_own_initial_states_and_batch_name():
    out, _ = decode_ids([[5, 6, 7, 0], [8, 9, 0]], OwnStatesBackend())
    assert out == [[106, 107], [109]]


def test_tokenizer_from_embedded_bytes(tmp_path):
    from compiler.seq2seq.decode import SentencePieceTokenizer
    from tests.helpers.marian_files import train_tiny_spm

    path = train_tiny_spm(str(tmp_path))
    with open(path, "rb") as f:
        data = f.read()

    class WithBytes:
        def vocabulary(self):
            return data

    a, b = SentencePieceTokenizer(path), SentencePieceTokenizer.of_backend(WithBytes())
    assert a.encode("the cat sat") == b.encode("the cat sat") and b.decode(b.encode("the cat")) == "the cat"
    with pytest.raises(IntformerError, match="no vocabulary"):
        SentencePieceTokenizer.of_backend(object())
