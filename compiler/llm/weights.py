"""The weights and shape of a LLaMA-family causal LM (LLaMA, SmolLM, Qwen2-style GQA with q/k/v biases) as NumPy
arrays, read from a transformers model folder or a GGUF file (which transformers dequantizes to fp32)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from compiler.errors import IntformerError


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    eps: float
    rope_theta: float
    max_positions: int

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer; matrices stored (in, out) so that y = x @ w."""

    attn_norm: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None


@dataclass(frozen=True)
class LlamaWeights:
    shape: LlamaShape
    embed: np.ndarray  # (vocab, hidden)
    layers: tuple[LayerWeights, ...]
    norm: np.ndarray
    lm_head: np.ndarray  # (vocab, hidden); the embedding itself when tied


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = params.get("rope_type", scaling.get("rope_type", "default"))
    if kind not in ("default", None):
        raise IntformerError(f"rotary embedding type {kind!r} is not supported yet (only the default RoPE)")
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().copy()


def from_transformers(model) -> LlamaWeights:
    """Read a transformers LlamaForCausalLM (or a model of the same layout: Qwen2ForCausalLM, ...)."""
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise IntformerError(f"hidden_act {cfg.hidden_act!r}: only SiLU-gated feed-forwards are supported")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shape = LlamaShape(hidden=cfg.hidden_size, layers=cfg.num_hidden_layers, heads=cfg.num_attention_heads,
                       kv_heads=cfg.num_key_value_heads or cfg.num_attention_heads, head_dim=head_dim,
                       ffn=cfg.intermediate_size, vocab=cfg.vocab_size, eps=float(cfg.rms_norm_eps),
                       rope_theta=_rope_theta(cfg), max_positions=int(cfg.max_position_embeddings))
    inner = model.model
    layers = []
    for blk in inner.layers:
        at, mlp = blk.self_attn, blk.mlp
        bias = {n: (_np(getattr(at, p).bias) if getattr(at, p).bias is not None else None)
                for n, p in (("bq", "q_proj"), ("bk", "k_proj"), ("bv", "v_proj"))}
        extra = [p for p, mod in (("o_proj", at.o_proj), ("gate_proj", mlp.gate_proj), ("up_proj", mlp.up_proj),
                                  ("down_proj", mlp.down_proj)) if getattr(mod, "bias", None) is not None]
        if extra:
            raise IntformerError(f"biases on {', '.join(extra)}: only q/k/v biases (Qwen2-style) are supported")
        layers.append(LayerWeights(
            attn_norm=_np(blk.input_layernorm.weight), wq=_np(at.q_proj.weight).T, wk=_np(at.k_proj.weight).T,
            wv=_np(at.v_proj.weight).T, wo=_np(at.o_proj.weight).T,
            ffn_norm=_np(blk.post_attention_layernorm.weight), w_gate=_np(mlp.gate_proj.weight).T,
            w_up=_np(mlp.up_proj.weight).T, w_down=_np(mlp.down_proj.weight).T, **bias))
    embed = _np(inner.embed_tokens.weight)
    head = _np(model.lm_head.weight)
    if np.array_equal(head, embed):
        head = embed
    return LlamaWeights(shape, embed, tuple(layers), _np(inner.norm.weight), head)


def load_causal_lm(path: str, gguf_file: str | None = None):
    """(model, tokenizer) with transformers, fp32, eager attention, offline. `path` is a model folder, or a
    .gguf file (its folder and name are split off), or a folder with gguf_file inside it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_file is None and path.endswith(".gguf"):
        path, gguf_file = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", **kw)
    return model.eval(), tok
