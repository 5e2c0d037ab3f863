"""Tiny Marian models written byte by byte in the documented binary format (independent of the reader), a
tiny SentencePiece vocabulary with Marian's ids (</s>=0, <unk>=1), and a NumPy reference of the architecture."""

from __future__ import annotations

import math
import os
import struct

import numpy as np

FLOAT32, INT8, INTGEMM8 = 0x404, 0x101, 0x4101


def quantize_intgemm8(w: np.ndarray) -> tuple[np.ndarray, float]:
    """(int8 values, multiplier) with value = int8 / multiplier."""
    mult = 127.0 / float(np.max(np.abs(w)))
    return np.clip(np.round(w * mult), -127, 127).astype(np.int8), mult


def _pad(b: bytes, align: int = 256) -> bytes:
    return b + b"\0" * (-len(b) % align)


def item_bytes(name: str, kind: int, value) -> tuple[tuple[int, ...], bytes]:
    if kind == FLOAT32:
        return value.shape, _pad(value.astype("<f4").tobytes())
    if kind == INT8:
        text = value.encode() + b"\0"
        return (len(text),), _pad(text)
    q, mult = quantize_intgemm8(value)
    stored = q if name.endswith("Wemb") else np.ascontiguousarray(q.T)  # Bergamot: transposed, shape not
    return value.shape, _pad(stored.tobytes() + struct.pack("<f", mult))


def write_marian_bin(path: str, items: list[tuple[str, int, object]], version: int = 1) -> None:
    names = [n.encode() + b"\0" for n, _, _ in items]
    blobs = [item_bytes(n, k, v) for n, k, v in items]
    head = struct.pack("<QQ", version, len(items))
    for nm, (_, kind, _), (shape, data) in zip(names, items, blobs):
        head += struct.pack("<4Q", len(nm), kind, len(shape), len(data))
    head += b"".join(names) + b"".join(struct.pack(f"<{len(s)}i", *s) for s, _ in blobs)
    pad = -(len(head) + 8) % 256
    head += struct.pack("<Q", pad) + b"\0" * pad
    with open(path, "wb") as f:
        f.write(head + b"".join(d for _, d in blobs))


def dequantized(value: np.ndarray) -> np.ndarray:
    q, mult = quantize_intgemm8(value)
    return q.astype(np.float32) / np.float32(mult)


# ---- a tiny transformer + SSRU model ----------------------------------------------------------------------
MODEL_YML = """type: transformer
dec-cell: ssru
enc-depth: {enc}
dec-depth: {dec}
dim-emb: {d}
transformer-heads: {heads}
transformer-dim-ffn: {ffn}
transformer-postprocess: dan
transformer-preprocess: ""
transformer-ffn-activation: relu
transformer-decoder-autoreg: rnn
tied-embeddings-all: true
"""


def tiny_weights(vocab: int, d: int = 8, ffn: int = 16, enc: int = 2, dec: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def m(*shape, s=0.4):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    w = {"Wemb": m(vocab, d, s=0.3), "decoder_ff_logit_out_b": m(1, vocab, s=0.1)}

    def ln(p):
        w[f"{p}_ln_scale"], w[f"{p}_ln_bias"] = 1 + m(1, d, s=0.1), m(1, d, s=0.1)

    def ffn_(p):
        w.update({f"{p}_W1": m(d, ffn), f"{p}_b1": m(1, ffn, s=0.1), f"{p}_W2": m(ffn, d), f"{p}_b2": m(1, d, s=0.1)})
        ln(f"{p}_ffn")

    def att(p):
        for x in "qkvo":
            w[f"{p}_W{x}"], w[f"{p}_b{x}"] = m(d, d), m(1, d, s=0.1)
        ln(f"{p}_Wo")

    for i in range(1, enc + 1):
        att(f"encoder_l{i}_self")
        ffn_(f"encoder_l{i}_ffn")
    for i in range(1, dec + 1):
        p = f"decoder_l{i}_rnn"
        w[f"{p}_W"], w[f"{p}_Wf"], w[f"{p}_bf"] = m(d, d), m(d, d), m(1, d, s=0.1)
        ln(f"{p}_ffn")
        att(f"decoder_l{i}_context")
        ffn_(f"decoder_l{i}_ffn")
    return w


def write_tiny_model(folder: str, vocab_file: str, vocab: int, intgemm: bool = True, **kw) -> dict:
    """A Bergamot-like model folder; returns the weights as the reader must see them (intgemm8 dequantized)."""
    os.makedirs(folder, exist_ok=True)
    w = tiny_weights(vocab, **kw)
    d, heads = w["Wemb"].shape[1], 2
    items, seen = [], {}
    for name, value in sorted(w.items()):
        kind = INTGEMM8 if intgemm and value.shape[0] > 1 and value.ndim == 2 else FLOAT32
        items.append((name, kind, value))
        seen[name] = dequantized(value) if kind == INTGEMM8 else value
    yml = MODEL_YML.format(enc=kw.get("enc", 2), dec=kw.get("dec", 2), d=d, heads=heads, ffn=kw.get("ffn", 16))
    items.append(("special:model.yml", INT8, yml))
    write_marian_bin(os.path.join(folder, "model.tiny.bin"), items)
    with open(vocab_file, "rb") as src, open(os.path.join(folder, "vocab.tiny.spm"), "wb") as dst:
        dst.write(src.read())
    with open(os.path.join(folder, "config.yml"), "w") as f:
        f.write("models:\n  - model.tiny.bin\nvocabs:\n  - vocab.tiny.spm\n  - vocab.tiny.spm\nbeam-size: 1\n")
    return seen


def train_tiny_spm(folder: str, vocab: int = 40) -> str:
    """A SentencePiece model with Marian's special ids, trained on a few sentences."""
    import sentencepiece as spm

    text = os.path.join(folder, "corpus.txt")
    with open(text, "w") as f:
        for i in range(60):
            f.write(f"the cat sat on the mat number {i}. a dog ran in the park, then it slept.\n")
    prefix = os.path.join(folder, "tiny")
    spm.SentencePieceTrainer.train(input=text, model_prefix=prefix, vocab_size=vocab, eos_id=0, unk_id=1,
                                   bos_id=-1, pad_id=-1, hard_vocab_limit=False, minloglevel=2)
    return prefix + ".model"


# ---- NumPy reference of the architecture (full source, one sentence, no padding) --------------------------
def _ln(x, w, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-9) * w[f"{p}_ln_scale"].reshape(-1) + w[f"{p}_ln_bias"].reshape(-1)


def _positions(n, d, start=0):
    half = d // 2
    freq = np.exp(np.arange(half) * -(math.log(10000.0) / (half - 1)))
    a = np.arange(start, start + n)[:, None] * freq[None]
    return np.concatenate([np.sin(a), np.cos(a)], axis=1)


def _mha(q_in, kv_in, w, p, heads):
    q = q_in @ w[f"{p}_Wq"] + w[f"{p}_bq"].reshape(-1)
    k = kv_in @ w[f"{p}_Wk"] + w[f"{p}_bk"].reshape(-1)
    v = kv_in @ w[f"{p}_Wv"] + w[f"{p}_bv"].reshape(-1)
    dk = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        s = q[:, h * dk:(h + 1) * dk] @ k[:, h * dk:(h + 1) * dk].T / math.sqrt(dk)
        e = np.exp(s - s.max(-1, keepdims=True))
        outs.append((e / e.sum(-1, keepdims=True)) @ v[:, h * dk:(h + 1) * dk])
    o = np.concatenate(outs, axis=-1) @ w[f"{p}_Wo"] + w[f"{p}_bo"].reshape(-1)
    return _ln(o + q_in, w, f"{p}_Wo")


def _ffn(x, w, p):
    h = np.maximum(x @ w[f"{p}_W1"] + w[f"{p}_b1"].reshape(-1), 0)
    return _ln(h @ w[f"{p}_W2"] + w[f"{p}_b2"].reshape(-1) + x, w, f"{p}_ffn")


def reference_logprobs(w: dict, src: list[int], prev_tokens: list[int], enc: int, dec: int, heads: int = 2):
    """Log-probabilities at each step, feeding `prev_tokens` (teacher forcing); step 0 reads a zero embedding."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    d = w["Wemb"].shape[1]
    x = w["Wemb"][src] * math.sqrt(d) + _positions(len(src), d)
    for i in range(1, enc + 1):
        x = _ffn(_mha(x, x, w, f"encoder_l{i}_self", heads), w, f"encoder_l{i}_ffn")
    cells = [np.zeros(d) for _ in range(dec)]
    out = []
    for t in range(len(prev_tokens) + 1):
        emb = np.zeros(d) if t == 0 else w["Wemb"][prev_tokens[t - 1]]
        y = (emb * math.sqrt(d) + _positions(1, d, t)[0])[None]
        for i in range(1, dec + 1):
            p = f"decoder_l{i}_rnn"
            f = 1 / (1 + np.exp(-(y @ w[f"{p}_Wf"] + w[f"{p}_bf"].reshape(-1))))
            c = f * cells[i - 1] + (1 - f) * (y @ w[f"{p}_W"])
            cells[i - 1] = c[0]
            y = _ln(np.maximum(c, 0) + y, w, f"{p}_ffn")
            y = _mha(y, x, w, f"decoder_l{i}_context", heads)
            y = _ffn(y, w, f"decoder_l{i}_ffn")
        logits = (y @ w["Wemb"].T + w["decoder_ff_logit_out_b"].reshape(-1))[0]
        m = logits.max()
        out.append(logits - m - np.log(np.exp(logits - m).sum()))
    return np.array(out)
