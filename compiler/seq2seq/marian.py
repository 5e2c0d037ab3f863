"""Import a Bergamot/Marian Transformer with an SSRU decoder (the "tiny" models) into a seq2seq bundle of
fp32 ONNX graphs (see spec.py).

Expects: a model folder with a Marian ``.bin`` (float32 or intgemm8 items), a SentencePiece vocabulary shared by
source and target, and optionally a Bergamot ``config*.yml`` naming them. The model is ``type: transformer``
with post-norm ("dan") layers, ReLU FFNs, ``dec-cell: ssru``, tied embeddings for source, target and output,
sinusoidal positions.
Guarantees: ``encoder.onnx`` maps (src_ids, src_mask) to ``enc_out`` and, per decoder layer, the cross-attention
keys (already transposed, (B, H, dk, S)) and values ((B, H, S, dk)), so that a decoding step does not recompute
them; ``decoder.onnx`` is one step: the SSRU cell states are explicit (B, 1, D) inputs/outputs, positions come
from a constant table indexed by ``step``, the start symbol is an extra all-zero embedding row (``bos_id`` =
vocabulary size), and the output is log-probabilities over the vocabulary. Every projection is a MatMul by a
constant; the only other ops are Gather, Mul/Add/Sub by constants or between activations, Reshape, Transpose,
Softmax, LayerNormalization, Relu, Sigmoid, Equal/Where (the mask) and LogSoftmax.
"""

from __future__ import annotations

import glob
import math
import os
import shutil

import numpy as np
import onnx
import yaml

from compiler.errors import IntformerError
from compiler.seq2seq.marian_bin import read_marian
from compiler.seq2seq.onnx_build import GraphBuilder
from compiler.seq2seq.spec import Seq2SeqSpec, StateSpec

LN_EPS = 1e-9  # Marian's layerNorm epsilon
EOS_ID = 0  # "</s>" in Marian SentencePiece vocabularies
VOCAB_FILE = "vocab.spm"


def sinusoid_table(length: int, dim: int) -> np.ndarray:
    """Marian's positions: sin in the first half, cos in the second, timescale step log(1e4) / (dim/2 - 1)."""
    half = dim // 2
    inc = math.log(10000.0) / (half - 1)
    freq = np.exp(np.arange(half, dtype=np.float64) * -inc)
    angle = np.arange(length, dtype=np.float64)[:, None] * freq[None, :]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


# ---- the model folder -----------------------------------------------------------------------------------
def find_model_files(model_dir: str) -> tuple[str, str]:
    """(model .bin, vocabulary .spm) of a Bergamot/Marian model folder, from its config .yml if it has one."""
    if not os.path.isdir(model_dir):
        raise IntformerError(f"{model_dir}: not a folder (expected a Marian model folder with .bin, .spm, .yml)")
    models, vocabs = [], []
    for cfg in sorted(glob.glob(os.path.join(model_dir, "*.yml"))):
        try:
            with open(cfg) as f:
                c = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(c, dict) and c.get("models"):
            models = [os.path.join(model_dir, m) for m in c["models"]]
            vocabs = [os.path.join(model_dir, v) for v in c.get("vocabs", [])]
            break
    models = models or sorted(glob.glob(os.path.join(model_dir, "*.bin")))
    models = [m for m in models if not os.path.basename(m).startswith("lex.")]  # lexical shortlists
    vocabs = vocabs or sorted(glob.glob(os.path.join(model_dir, "*.spm")))
    if len(models) != 1:
        raise IntformerError(f"{model_dir}: expected one Marian model .bin, found {len(models)} "
                             "(name it in the config .yml under 'models:')")
    if not vocabs or len({os.path.realpath(v) for v in vocabs}) != 1:
        raise IntformerError(f"{model_dir}: expected one SentencePiece .spm shared by source and target, "
                             f"found {len(set(vocabs))} (separate vocabularies are not supported)")
    for p in (models[0], vocabs[0]):
        if not os.path.isfile(p):
            raise IntformerError(f"{p}: named by the model config but missing")
    return models[0], vocabs[0]


class _Weights:
    """Marian tensors by name with one-line errors for missing ones."""

    def __init__(self, tensors: dict[str, np.ndarray], path: str):
        self.t, self.path = tensors, path

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.t:
            raise IntformerError(f"{self.path}: Marian item {name!r} is missing (not a tiny transformer+SSRU model?)")
        return self.t[name]


def _check_config(cfg: dict, path: str) -> None:
    want = {"type": "transformer", "dec-cell": "ssru", "transformer-postprocess": "dan",
            "transformer-ffn-activation": "relu", "tied-embeddings-all": True}
    bad = [f"{k}={cfg.get(k)!r} (need {v!r})" for k, v in want.items() if cfg.get(k) != v]
    if cfg.get("transformer-preprocess", "") not in ("", None):
        bad.append(f"transformer-preprocess={cfg.get('transformer-preprocess')!r} (need '')")
    if cfg.get("transformer-decoder-autoreg", "rnn") != "rnn":
        bad.append(f"transformer-decoder-autoreg={cfg.get('transformer-decoder-autoreg')!r} (need 'rnn')")
    if bad:
        raise IntformerError(f"{path}: unsupported Marian architecture: {', '.join(bad)}")


# ---- graphs ---------------------------------------------------------------------------------------------
def _post_norm(g: GraphBuilder, w: _Weights, y: str, residual: str, prefix: str) -> str:
    """Marian "dan": (dropout), add the residual, LayerNorm with ``{prefix}_ln_scale/_bias``."""
    s = g.add(y, residual, f"{prefix}/residual")
    return g.layer_norm(s, w[f"{prefix}_ln_scale"], w[f"{prefix}_ln_bias"], LN_EPS, f"{prefix}/ln")


def _ffn(g: GraphBuilder, w: _Weights, x: str, prefix: str) -> str:
    y = g.ffn_relu(x, w[f"{prefix}_W1"], w[f"{prefix}_b1"], w[f"{prefix}_W2"], w[f"{prefix}_b2"], prefix)
    return _post_norm(g, w, y, x, f"{prefix}_ffn")


def build_encoder(w: _Weights, dims: dict, batch: int, src_len: int) -> onnx.ModelProto:
    d, heads, dk = dims["d"], dims["heads"], dims["d"] // dims["heads"]
    g = GraphBuilder("marian_encoder")
    ids = g.input("src_ids", (batch, src_len), onnx.TensorProto.INT64)
    mask = g.input("src_mask", (batch, src_len), onnx.TensorProto.INT64)
    x = g.op("Gather", [g.const("Wemb", w["Wemb"]), ids], name="embed")
    x = g.scale(x, math.sqrt(d), "embed/scale")
    x = g.add(x, g.const("positions", sinusoid_table(src_len, d)), "embed/positions")
    mask_add = g.attention_mask(mask, (batch, 1, 1, src_len), "mask")
    for i in range(1, dims["enc_depth"] + 1):
        p = f"encoder_l{i}_self"
        q = g.split_heads(g.linear(x, w[f"{p}_Wq"], w[f"{p}_bq"], f"{p}/Wq"), batch, src_len, heads, False, f"{p}/q")
        k = g.split_heads(g.linear(x, w[f"{p}_Wk"], w[f"{p}_bk"], f"{p}/Wk"), batch, src_len, heads, True, f"{p}/k")
        v = g.split_heads(g.linear(x, w[f"{p}_Wv"], w[f"{p}_bv"], f"{p}/Wv"), batch, src_len, heads, False, f"{p}/v")
        a = g.attend(q, k, v, mask_add, dk, batch, src_len, p)
        x = _post_norm(g, w, g.linear(a, w[f"{p}_Wo"], w[f"{p}_bo"], f"{p}/Wo"), x, f"{p}_Wo")
        x = _ffn(g, w, x, f"encoder_l{i}_ffn")
    g.output(x, "enc_out", (batch, src_len, d))
    for i in range(1, dims["dec_depth"] + 1):
        p = f"decoder_l{i}_context"
        k = g.split_heads(g.linear(x, w[f"{p}_Wk"], w[f"{p}_bk"], f"{p}/Wk"), batch, src_len, heads, True, f"{p}/k")
        v = g.split_heads(g.linear(x, w[f"{p}_Wv"], w[f"{p}_bv"], f"{p}/Wv"), batch, src_len, heads, False, f"{p}/v")
        g.output(k, f"ctx_k{i}", (batch, heads, dk, src_len))
        g.output(v, f"ctx_v{i}", (batch, heads, src_len, dk))
    return g.model()


def _ssru(g: GraphBuilder, w: _Weights, x: str, c_prev: str, prefix: str) -> tuple[str, str]:
    """c = f * c_prev + (1 - f) * x W  (written f * (c_prev - xW) + xW), f = sigmoid(x Wf + bf);
    out = LayerNorm(relu(c) + x). Returns (out, c)."""
    xw = g.linear(x, w[f"{prefix}_W"], None, f"{prefix}/W")
    f = g.op("Sigmoid", [g.linear(x, w[f"{prefix}_Wf"], w[f"{prefix}_bf"], f"{prefix}/Wf")], name=f"{prefix}/forget")
    diff = g.op("Sub", [c_prev, xw], name=f"{prefix}/c_minus_xw")
    c = g.add(g.op("Mul", [f, diff], name=f"{prefix}/gate"), xw, f"{prefix}/cell")
    out = g.op("Relu", [c], name=f"{prefix}/relu")
    return _post_norm(g, w, out, x, f"{prefix}_ffn"), c


def build_decoder_step(w: _Weights, dims: dict, batch: int, src_len: int, tgt_len: int) -> onnx.ModelProto:
    d, heads, dk, vocab = dims["d"], dims["heads"], dims["d"] // dims["heads"], dims["vocab"]
    g = GraphBuilder("marian_decoder_step")
    prev = g.input("prev_ids", (batch, 1), onnx.TensorProto.INT64)
    step = g.input("step", (1,), onnx.TensorProto.INT64)
    mask = g.input("src_mask", (batch, src_len), onnx.TensorProto.INT64)
    ctx = {i: (g.input(f"ctx_k{i}", (batch, heads, dk, src_len)), g.input(f"ctx_v{i}", (batch, heads, src_len, dk)))
           for i in range(1, dims["dec_depth"] + 1)}
    cells = {i: g.input(f"c{i}_in", (batch, 1, d)) for i in range(1, dims["dec_depth"] + 1)}
    # the start symbol is a zero embedding: one extra row, id = vocab
    table = np.concatenate([w["Wemb"], np.zeros((1, d), np.float32)], axis=0)
    x = g.op("Gather", [g.const("Wemb_start", table), prev], name="embed")
    x = g.scale(x, math.sqrt(d), "embed/scale")
    pos = g.op("Gather", [g.const("positions", sinusoid_table(tgt_len, d)), step], name="embed/position")
    x = g.add(x, pos, "embed/positions")
    mask_add = g.attention_mask(mask, (batch, 1, 1, src_len), "mask")
    for i in range(1, dims["dec_depth"] + 1):
        x, c = _ssru(g, w, x, cells[i], f"decoder_l{i}_rnn")
        g.output(c, f"c{i}_out", (batch, 1, d))
        p = f"decoder_l{i}_context"
        q = g.split_heads(g.linear(x, w[f"{p}_Wq"], w[f"{p}_bq"], f"{p}/Wq"), batch, 1, heads, False, f"{p}/q")
        a = g.attend(q, ctx[i][0], ctx[i][1], mask_add, dk, batch, 1, p)
        x = _post_norm(g, w, g.linear(a, w[f"{p}_Wo"], w[f"{p}_bo"], f"{p}/Wo"), x, f"{p}_Wo")
        x = _ffn(g, w, x, f"decoder_l{i}_ffn")
    logits = g.linear(x, np.ascontiguousarray(w["Wemb"].T), w["decoder_ff_logit_out_b"], "output")
    logits = g.reshape(logits, (batch, vocab), "output/flatten")
    g.output(g.op("LogSoftmax", [logits], name="output/log_softmax", axis=-1), "logprobs", (batch, vocab))
    return g.model()


def model_dims(cfg: dict, w: _Weights) -> dict:
    vocab, d = w["Wemb"].shape
    heads = int(cfg.get("transformer-heads", 8))
    if d % heads:
        raise IntformerError(f"dim-emb {d} is not a multiple of transformer-heads {heads}")
    return {"d": int(d), "heads": heads, "vocab": int(vocab), "enc_depth": int(cfg.get("enc-depth", 6)),
            "dec_depth": int(cfg.get("dec-depth", 2))}


def import_marian(model_dir: str, out_dir: str, batch: int = 8, max_src_len: int = 64,
                  max_tgt_len: int = 128) -> Seq2SeqSpec:
    """Write a seq2seq bundle (seq2seq.json, encoder.onnx, decoder.onnx, vocab.spm) for fixed B, S and T."""
    for name, v in (("batch", batch), ("max_src_len", max_src_len), ("max_tgt_len", max_tgt_len)):
        if int(v) < 1:
            raise IntformerError(f"import-marian: {name} must be a positive integer, got {v}")
    bin_path, spm_path = find_model_files(model_dir)
    tensors, yml = read_marian(bin_path)
    cfg = yaml.safe_load(yml) if yml else {}
    if not isinstance(cfg, dict):
        cfg = {}
    _check_config(cfg, bin_path)
    w = _Weights(tensors, bin_path)
    dims = model_dims(cfg, w)
    os.makedirs(out_dir, exist_ok=True)
    onnx.save(build_encoder(w, dims, batch, max_src_len), os.path.join(out_dir, "encoder.onnx"))
    onnx.save(build_decoder_step(w, dims, batch, max_src_len, max_tgt_len), os.path.join(out_dir, "decoder.onnx"))
    shutil.copyfile(spm_path, os.path.join(out_dir, VOCAB_FILE))
    d = dims["d"]
    spec = Seq2SeqSpec(
        encoder="encoder.onnx", decoder="decoder.onnx",
        encoder_outputs=tuple(f"ctx_{kv}{i}" for i in range(1, dims["dec_depth"] + 1) for kv in "kv"),
        states=tuple(StateSpec(f"c{i}_in", f"c{i}_out", ("B", 1, d)) for i in range(1, dims["dec_depth"] + 1)),
        bos_id=dims["vocab"], eos_id=EOS_ID, pad_id=EOS_ID, vocab_size=dims["vocab"],
        max_src_len=int(max_src_len), max_tgt_len=int(max_tgt_len), vocab=VOCAB_FILE,
        source=f"marian:{os.path.basename(bin_path)}")
    spec.save(out_dir)
    return spec
