"""transformers MarianMTModel -> a seq2seq bundle (encoder.onnx + one-step decoder.onnx + seq2seq.json).

The decoder step carries a fixed-length key/value self-attention cache per layer as explicit state
(B, heads, max_tgt_len, head_dim), written at position `step` with a `Where` on a one-hot of the step: shapes
are static. The decoder reads `enc_out` and recomputes the cross-attention keys/values at each step (no
precomputed state). Post-norm layers as in Marian (`normalize_before` is not supported by MarianMTModel).
"""

from __future__ import annotations

import os
import shutil

from compiler.seq2seq.spec import Seq2SeqSpec, StateSpec

OPSET = 17


def _decoder_step_module(model, max_tgt_len: int):
    import torch

    cfg = model.config
    dec = model.model.decoder
    heads, d = cfg.decoder_attention_heads, cfg.d_model
    dh = d // heads
    act = {"relu": torch.relu, "swish": torch.nn.functional.silu, "silu": torch.nn.functional.silu,
           "gelu": torch.nn.functional.gelu}[cfg.activation_function]
    scale = dec.embed_scale if hasattr(dec, "embed_scale") else 1.0
    neg = torch.finfo(torch.float32).min

    def split(x):  # (B, L, D) -> (B, H, L, dh)
        return x.reshape(x.shape[0], x.shape[1], heads, dh).transpose(1, 2)

    def merge(x):
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], d)

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model
            self.register_buffer("pos", dec.embed_positions.weight[:max_tgt_len].detach().clone())
            self.register_buffer("positions", torch.arange(max_tgt_len).reshape(1, 1, max_tgt_len, 1))

        def forward(self, prev_ids, step, src_mask, enc_out, *caches):
            x = dec.embed_tokens(prev_ids) * scale + torch.index_select(self.pos, 0, step).unsqueeze(0)  # (B, 1, D)
            here = self.positions == step  # (1, 1, T, 1)
            seen = torch.where(self.positions.transpose(2, 3) <= step, 0.0, neg)  # (1, 1, 1, T)
            cross = torch.where(src_mask[:, None, None, :] == 0, neg, 0.0)
            new = []
            for i, layer in enumerate(dec.layers):
                sa = layer.self_attn
                q = split(sa.q_proj(x) * sa.scaling)
                k = torch.where(here, split(sa.k_proj(x)), caches[2 * i])
                v = torch.where(here, split(sa.v_proj(x)), caches[2 * i + 1])
                new += [k, v]
                p = torch.softmax(q @ k.transpose(2, 3) + seen, dim=-1)
                x = layer.self_attn_layer_norm(x + sa.out_proj(merge(p @ v)))
                ca = layer.encoder_attn
                q = split(ca.q_proj(x) * ca.scaling)
                k, v = split(ca.k_proj(enc_out)), split(ca.v_proj(enc_out))
                p = torch.softmax(q @ k.transpose(2, 3) + cross, dim=-1)
                x = layer.encoder_attn_layer_norm(x + ca.out_proj(merge(p @ v)))
                x = layer.final_layer_norm(x + layer.fc2(act(layer.fc1(x))))
            logits = self.m.lm_head(x[:, 0]) + self.m.final_logits_bias
            return (torch.log_softmax(logits, dim=-1), *new)

    return Step().eval()


def export_marian(model, out_dir: str, batch: int, max_src_len: int, max_tgt_len: int, vocab: str = "",
                  source: str = "transformers MarianMTModel") -> Seq2SeqSpec:
    """Write the bundle for `model` (a MarianMTModel in eval mode) with static shapes; returns its spec.
    `vocab`: a SentencePiece model copied into the bundle."""
    import torch

    cfg = model.config
    os.makedirs(out_dir, exist_ok=True)
    heads, d = cfg.decoder_attention_heads, cfg.d_model
    ids = torch.full((batch, max_src_len), cfg.pad_token_id, dtype=torch.long)
    mask = torch.ones((batch, max_src_len), dtype=torch.long)

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.e = model.get_encoder()

        def forward(self, src_ids, src_mask):
            return self.e(input_ids=src_ids, attention_mask=src_mask).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(Enc().eval(), (ids, mask), os.path.join(out_dir, "encoder.onnx"),
                          input_names=["src_ids", "src_mask"], output_names=["enc_out"], opset_version=OPSET,
                          dynamo=False)
        states = []
        caches = []
        for i in range(cfg.decoder_layers):
            for kv in ("k", "v"):
                states.append(StateSpec(f"cache_{kv}{i}", f"cache_{kv}{i}_out",
                                        ("B", heads, max_tgt_len, d // heads)))
                caches.append(torch.zeros(batch, heads, max_tgt_len, d // heads))
        step_in = (torch.full((batch, 1), cfg.decoder_start_token_id, dtype=torch.long),
                   torch.zeros(1, dtype=torch.long), mask.clone(), torch.zeros(batch, max_src_len, d), *caches)
        torch.onnx.export(_decoder_step_module(model, max_tgt_len), step_in, os.path.join(out_dir, "decoder.onnx"),
                          input_names=["prev_ids", "step", "src_mask", "enc_out"] + [s.input for s in states],
                          output_names=["logprobs"] + [s.output for s in states], opset_version=OPSET,
                          dynamo=False)
    if vocab and os.path.abspath(os.path.dirname(vocab)) != os.path.abspath(out_dir):
        shutil.copy(vocab, os.path.join(out_dir, os.path.basename(vocab)))
    spec = Seq2SeqSpec(encoder="encoder.onnx", decoder="decoder.onnx", encoder_outputs=("enc_out",),
                       states=tuple(states), bos_id=int(cfg.decoder_start_token_id), eos_id=int(cfg.eos_token_id),
                       pad_id=int(cfg.pad_token_id), vocab_size=int(cfg.vocab_size), max_src_len=max_src_len,
                       max_tgt_len=max_tgt_len, vocab=os.path.basename(vocab) if vocab else "", source=source)
    spec.save(out_dir)
    return spec
