"""Tiny random-weight Transformer encoders exported to ONNX the way users export them (torch.onnx.export)."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEQ = 16
VOCAB = 101


def _config(kind: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, max_position_embeddings=64, initializer_range=0.2)
    if kind == "distilbert":
        return tf.DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2, **common)
    if kind == "roberta":
        return tf.RobertaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                pad_token_id=1, **common)
    act = "gelu_pytorch_tanh" if kind == "bert_tanh" else "gelu"
    return tf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         type_vocab_size=2, hidden_act=act, **common)


def input_names(kind: str) -> list[str]:
    return ["input_ids", "attention_mask"] + ([] if kind == "distilbert" else ["token_type_ids"])


HEADS = ("none", "pooled", "cls", "classifier", "classifier_softmax", "classifier_sigmoid")


def export_tiny(kind: str, path: str, dynamo: bool = False, opset: int = 17, seed: int = 0, head: str = "none"
                ) -> str:
    """Export a tiny random-weight `kind` encoder (bert, distilbert, roberta) with dynamic batch/seq axes.
    head: "none" (last_hidden_state), "pooled" (sentence-transformers: mean over the attention mask, then L2
    normalization), "cls" (the first token, L2-normalized), "classifier" (AutoModelForSequenceClassification
    logits), "classifier_softmax" / "classifier_sigmoid" (its logits through softmax / sigmoid)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if head.startswith("classifier") else AutoModel
    model = auto.from_config(_config(kind), attn_implementation="eager").eval()
    names = input_names(kind)

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            out = self.m(**kw)
            if head.startswith("classifier"):
                return {"classifier": lambda v: v, "classifier_softmax": lambda v: torch.softmax(v, -1),
                        "classifier_sigmoid": torch.sigmoid}[head](out.logits)
            h = out.last_hidden_state
            if head == "none":
                return h
            if head == "cls":
                return F.normalize(h[:, 0], p=2, dim=1)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return F.normalize((h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9), p=2, dim=1)

    feed = sample_inputs(kind, 1, seed)
    args = tuple(torch.from_numpy(feed[n][0]) for n in names)
    out_name = {"none": "last_hidden_state", "pooled": "sentence_embedding", "cls": "sentence_embedding"}.get(
        head, "logits")
    kw = dict(input_names=names, output_names=[out_name], opset_version=opset, dynamo=dynamo)
    if dynamo:
        batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=64)
        kw["dynamic_shapes"] = {n: {0: batch, 1: seq} for n in names}
        kw["external_data"] = False
    else:
        kw["dynamic_axes"] = {n: {0: "batch", 1: "seq"} for n in names}
    with torch.no_grad():
        torch.onnx.export(Wrapper(model), args, path, **kw)
    return path


def sample_inputs(kind: str, n: int, seed: int = 0, seq: int = SEQ) -> dict[str, np.ndarray]:
    """`n` samples (leading axis) of batch-1 inputs with random lengths and padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, size=(n, 1, seq)).astype(np.int64)
    mask = np.zeros((n, 1, seq), dtype=np.int64)
    for i in range(n):
        length = int(rng.integers(seq // 2, seq + 1))
        mask[i, 0, :length] = 1
        ids[i, 0, length:] = 0 if kind != "roberta" else 1
    feed = {"input_ids": ids, "attention_mask": mask}
    if kind != "distilbert":
        feed["token_type_ids"] = np.zeros_like(ids)
    return feed
