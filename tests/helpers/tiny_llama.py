"""A tiny transformers LLaMA (GQA: 4 query heads, 2 KV heads) with a byte-level tokenizer of 256 tokens, saved as a
model folder the way users have one. Random weights, then 120 Adam steps on generated sentences (about 2 s on
one core), so that it predicts something and a perplexity gap means something; no downloads."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = ("the a house cat dog runs sleeps under over big small red green blue tree river city walks "
         "we you they see want have old new light dark morning night road book reads writes").split()


def sentences(n: int, seed: int = 0, lo: int = 2, hi: int = 16) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(lo, hi))) for _ in range(n)]


def byte_tokenizer():
    """Byte-level BPE with the 256 byte symbols and no merges: every UTF-8 byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def tiny_llama(seed: int = 0, init_std: float = 0.08):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=256, max_position_embeddings=256, rms_norm_eps=1e-5,
                      rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, initializer_range=init_std,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1 and one loud residual channel, as real models have
        for blk in model.model.layers:
            blk.input_layernorm.weight.uniform_(0.5, 1.5)
            blk.post_attention_layernorm.weight.uniform_(0.5, 1.5)
        model.model.embed_tokens.weight[:, 5] *= 8.0
    return model


def tiny_qwen2(seed: int = 0, init_std: float = 0.08):
    """The same shape as Qwen2 (q/k/v biases, no o bias), its biases drawn loud enough to matter."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=256, max_position_embeddings=256, rms_norm_eps=1e-5,
                      initializer_range=init_std, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None, attn_implementation="eager", use_sliding_window=False)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for blk in model.model.layers:
            for proj in (blk.self_attn.q_proj, blk.self_attn.k_proj, blk.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    return model


def train(model, tokenizer, steps: int, seed: int = 0):
    """A few Adam steps of next-byte prediction on generated sentences (deterministic for a seed)."""
    import torch

    ids = torch.tensor(tokenizer.encode(" ".join(sentences(400, seed=seed + 5)), add_special_tokens=False))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (16,), generator=gen)
        batch = torch.stack([ids[s:s + 64] for s in starts])
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def q4_1_blocks(w: np.ndarray, block: int = 32) -> np.ndarray:
    """w (out, in) rounded as a GGUF Q4_1 tensor stores it: per block of 32 inputs of each row, 16 levels from
    the block's min to its max (dequantized back to float32)."""
    b = w.reshape(w.shape[0], -1, block).astype(np.float64)
    lo, hi = b.min(axis=2, keepdims=True), b.max(axis=2, keepdims=True)
    step = np.where(hi > lo, (hi - lo) / 15, 1.0)
    return (lo + np.round((b - lo) / step) * step).reshape(w.shape).astype(np.float32)


def to_q4_1(model) -> None:
    """Every decoder layer's matrices as Q4_1 blocks (in place): what a Q4_1 GGUF dequantizes to."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".layers." in name and p.ndim == 2:
                p.copy_(torch.from_numpy(q4_1_blocks(p.detach().numpy())))


def make_tiny_llama(folder: str, seed: int = 0, train_steps: int = 120, q4: bool = False, qwen2: bool = False
                    ) -> str:
    """Write the model and its tokenizer into `folder` (q4: its layers' matrices as Q4_1 blocks, to_q4_1;
    qwen2: the Qwen2 layout with q/k/v biases, tiny_qwen2); returns the folder."""
    os.makedirs(folder, exist_ok=True)
    tok = byte_tokenizer()
    model = tiny_qwen2(seed) if qwen2 else tiny_llama(seed)
    if train_steps:
        train(model, tok, train_steps, seed)
    if q4:
        to_q4_1(model)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def compile_tiny(model_dir: str, out_dir, context: int, seed: int, **kw):
    """Compile a tiny LLaMA folder into out_dir/tiny.so, calibrated on 6 generated sentences (seed); the
    CompileResult."""
    from compiler.api import compile_model

    calib = out_dir / "calib.txt"
    calib.write_text("\n".join(sentences(6, seed=seed, lo=4, hi=20)) + "\n")
    return compile_model(model_dir, str(out_dir / "tiny.so"), calibration_text=str(calib), context=context, **kw)
