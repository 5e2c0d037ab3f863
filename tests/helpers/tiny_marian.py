"""A tiny random-weight transformers Marian model as a seq2seq bundle, with a SentencePiece vocabulary trained
on generated sentences (no downloads)."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = ("the a house cat dog runs sleeps under over big small red green blue tree river city walks "
         "we you they see want have old new light dark morning night road book reads writes").split()
BATCH, MAX_SRC, MAX_TGT = 2, 12, 8


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 8))) for _ in range(n)]


def train_vocab(path_prefix: str, vocab_size: int = 48) -> str:
    import sentencepiece as spm

    text = path_prefix + ".txt"
    with open(text, "w") as f:
        f.write("\n".join(sentences(400, seed=1)) + "\n")
    spm.SentencePieceTrainer.train(input=text, model_prefix=path_prefix, vocab_size=vocab_size,
                                   eos_id=0, unk_id=1, bos_id=-1, pad_id=2, model_type="unigram",
                                   minloglevel=2)
    return path_prefix + ".model"


def tiny_marian(vocab_size: int, seed: int = 0, activation: str = "relu"):
    import torch
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    cfg = MarianConfig(vocab_size=vocab_size, d_model=64, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                       decoder_ffn_dim=128, max_position_embeddings=64, pad_token_id=2, eos_token_id=0,
                       decoder_start_token_id=2, activation_function=activation, init_std=0.15,
                       scale_embedding=True, share_encoder_decoder_embeddings=True, attn_implementation="eager")
    return MarianMTModel(cfg).eval()


def make_bundle(folder: str, seed: int = 0, batch: int = BATCH) -> str:
    """Write the bundle (and its vocabulary) into `folder`; returns the folder."""
    from compiler.seq2seq.hf_marian import export_marian

    os.makedirs(folder, exist_ok=True)
    vocab = train_vocab(os.path.join(folder, "spm"))
    model = tiny_marian(48, seed)
    export_marian(model, folder, batch, MAX_SRC, MAX_TGT, vocab=vocab, source="tests tiny Marian")
    return folder
