"""The Marian binary reader on files written byte by byte by the test (float32, intgemm8, text items)."""

import numpy as np
import pytest

from compiler.errors import IntformerError
from compiler.seq2seq.marian_bin import read_marian, stored_transposed
from tests.helpers.marian_files import FLOAT32, INT8, INTGEMM8, dequantized, write_marian_bin


def test_float32_intgemm8_and_text_items(tmp_path):
    rng = np.random.default_rng(0)
    w_rect = rng.standard_normal((3, 5)).astype(np.float32)  # rows != cols: a wrong transposition cannot pass
    emb = rng.standard_normal((7, 4)).astype(np.float32)
    bias = rng.standard_normal((1, 5)).astype(np.float32)
    path = str(tmp_path / "m.bin")
    write_marian_bin(path, [("encoder_l1_ffn_W1", INTGEMM8, w_rect), ("Wemb", INTGEMM8, emb),
                            ("encoder_l1_ffn_b1", FLOAT32, bias), ("special:model.yml", INT8, "type: transformer\n")])
    tensors, yml = read_marian(path)
    assert yml == "type: transformer\n"
    assert set(tensors) == {"encoder_l1_ffn_W1", "Wemb", "encoder_l1_ffn_b1"}
    np.testing.assert_array_equal(tensors["encoder_l1_ffn_b1"], bias)
    # intgemm8: int8 / multiplier, in the recorded shape; the stored bytes were the transpose except for Wemb
    assert tensors["encoder_l1_ffn_W1"].shape == (3, 5)
    np.testing.assert_allclose(tensors["encoder_l1_ffn_W1"], dequantized(w_rect), rtol=1e-6)
    np.testing.assert_allclose(tensors["Wemb"], dequantized(emb), rtol=1e-6)
    assert np.max(np.abs(tensors["encoder_l1_ffn_W1"] - w_rect)) <= np.max(np.abs(w_rect)) / 127 / 2 + 1e-6


def test_transposition_rule():
    assert stored_transposed("decoder_l1_rnn_W") and stored_transposed("encoder_l3_self_Wq")
    assert not stored_transposed("Wemb")


def test_bad_files(tmp_path):
    p = tmp_path / "v2.bin"
    write_marian_bin(str(p), [("b", FLOAT32, np.zeros((1, 2), np.float32))], version=2)
    with pytest.raises(IntformerError, match="version 2"):
        read_marian(str(p))
    t = tmp_path / "trunc.bin"
    write_marian_bin(str(t), [("b", FLOAT32, np.zeros((1, 200), np.float32))])
    t.write_bytes(t.read_bytes()[:-300])
    with pytest.raises(IntformerError, match="truncated"):
        read_marian(str(t))
    with pytest.raises(IntformerError, match="cannot read"):
        read_marian(str(tmp_path / "missing.bin"))
    u = tmp_path / "type.bin"
    write_marian_bin(str(u), [("b", FLOAT32, np.zeros((1, 2), np.float32))])
    data = bytearray(u.read_bytes())
    data[24:32] = (0x4102).to_bytes(8, "little")  # the first item's type: intgemm16
    u.write_bytes(bytes(data))
    with pytest.raises(IntformerError, match="0x4102"):
        read_marian(str(u))
