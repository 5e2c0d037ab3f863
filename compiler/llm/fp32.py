"""The fp32 reference forward of a LLaMA-family decoder in NumPy, with a key/value cache: prefill of a chunk
and decode of one token are the same call (`forward(ids, positions)`). A `record(name, layer, array)` hook sees
every tensor the integer model quantizes (calibration), under the names the integer model uses; a hook that
returns an array replaces the tensor with it (error analysis: quantize one tensor kind at a time)."""

from __future__ import annotations

import numpy as np

from compiler.llm.weights import LlamaWeights


def rmsnorm(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gamma


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half rotary embedding of x (heads, seq, head_dim) at the given absolute positions."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = positions.astype(np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang).astype(x.dtype), np.sin(ang).astype(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Fp32Llama:
    """forward(ids, positions) appends the chunk's keys and values to the cache and returns its logits."""

    def __init__(self, w: LlamaWeights, max_len: int, record=None):
        self.w, self._record = w, record or (lambda name, layer, x: None)
        s = w.shape
        self.k = np.zeros((s.layers, s.kv_heads, max_len, s.head_dim), np.float32)
        self.v = np.zeros_like(self.k)

    def record(self, name: str, layer: int, x: np.ndarray) -> np.ndarray:
        y = self._record(name, layer, x)
        return x if y is None else y

    def reset(self) -> None:
        self.k[:] = 0
        self.v[:] = 0

    def forward(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        w, s, rec = self.w, self.w.shape, self.record
        ids, positions = np.asarray(ids), np.asarray(positions)
        seq = len(ids)
        x = w.embed[ids].astype(np.float32)
        key_len = int(positions.max()) + 1
        allowed = np.arange(key_len)[None, :] <= positions[:, None]
        for i, lw in enumerate(w.layers):
            x = rec("resid", i, x)
            a = rmsnorm(x, lw.attn_norm, s.eps)
            a = rec("attn_in", i, a)
            q, k, v = a @ lw.wq, a @ lw.wk, a @ lw.wv
            if lw.bq is not None:
                q, k, v = q + lw.bq, k + lw.bk, v + lw.bv
            q = q.reshape(seq, s.heads, s.head_dim).transpose(1, 0, 2)
            k = k.reshape(seq, s.kv_heads, s.head_dim).transpose(1, 0, 2)
            v = v.reshape(seq, s.kv_heads, s.head_dim).transpose(1, 0, 2)
            q, k, v = rec("q", i, q), rec("k", i, k), rec("v", i, v)
            q, k = rope(q, positions, s.rope_theta), rope(k, positions, s.rope_theta)
            q, k = rec("q_rot", i, q), rec("k_rot", i, k)
            self.k[i][:, positions], self.v[i][:, positions] = k, v
            out = np.empty((seq, s.heads, s.head_dim), np.float32)
            for h in range(s.heads):
                g = h // s.groups
                sc = q[h] @ self.k[i, g, :key_len].T / np.float32(np.sqrt(s.head_dim))
                sc = np.where(allowed, sc, -np.inf)
                p = np.exp(sc - sc.max(-1, keepdims=True))
                p = rec("probs", i, p / p.sum(-1, keepdims=True))
                out[:, h] = p @ self.v[i, g, :key_len]
            o = out.reshape(seq, s.heads * s.head_dim)
            o = rec("attn_out", i, o)
            x = x + o @ lw.wo
            x = rec("resid_mid", i, x)
            f = rmsnorm(x, lw.ffn_norm, s.eps)
            f = rec("ffn_in", i, f)
            gate, up = f @ lw.w_gate, f @ lw.w_up
            gate, up = rec("gate", i, gate), rec("up", i, up)
            hmid = silu(gate) * up
            hmid = rec("ffn_mid", i, hmid)
            x = x + hmid @ lw.w_down
        x = rec("resid", s.layers, x)
        xf = rmsnorm(x, w.norm, s.eps)
        xf = rec("final", 0, xf)
        logits = xf @ w.lm_head.T
        logits = rec("logits", 0, logits)
        return logits
