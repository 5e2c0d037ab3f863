"""A decoder-only LM (a GGUF file or a transformers folder of the LLaMA family) -> the CompileState of its
integer Relax module, ready for the module stages of compiler/pipeline.py (schedule ... codegen).

Steps: load (transformers, fp32) and check the architecture; calibrate on text (real prefill and decode steps
of the fp32 reference, compiler/llm/calibrate.py); the integer model (compiler/llm/integer.py, the NumPy twin);
its Relax functions, one per entry point (compiler/frontend/llama.py STEPS); the op report of them all
(every matmul int8, no float op) and the manifest entries, with the tokenizer's files in the manifest.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from compiler.artifact import EntrySpec, IndexBound, IOQuant
from compiler.calibrate.table import CalibrationInfo
from compiler.config import CompileOptions, TensorSpec
from compiler.errors import IntformerError
from compiler.llm.spec import LlmSpec, pack_tokenizer
from compiler.progress import status
from compiler.report import CompileReport, GraphReport
from compiler.state import CompileState, LlmParts

if TYPE_CHECKING:
    from compiler.frontend.llama import Step

LLAMA_FAMILY = ("llama", "qwen2", "mistral")  # same layer layout: RMSNorm, RoPE, GQA, SiLU-gated FFN
DEFAULT_CONTEXT = 256
MAX_CHUNK = 128  # prefill chunk: the context, at most 128 tokens (longer prompts run in several chunks)
CALIBRATION_MAX_LEN = 128  # tokens per calibration document (at most the context)


def is_llm(path: str) -> bool:
    """A GGUF file, or a folder whose config.json names a causal LM architecture (...ForCausalLM)."""
    if path.endswith(".gguf"):
        return True
    cfg = _folder_config(path)
    return cfg is not None and any(str(a).endswith("ForCausalLM") for a in cfg.get("architectures") or ())


def _folder_config(path: str) -> dict | None:
    import json

    f = os.path.join(path, "config.json")
    if not os.path.isfile(f):
        return None
    try:
        with open(f, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def check_model_path(path: str) -> None:
    """The checks that need no transformers: the file exists, a .gguf starts with the GGUF magic, a folder's
    config.json names a LLaMA-family model."""
    if not os.path.exists(path):
        raise IntformerError(f"{path}: no such file or folder (give a .gguf file or a transformers model folder)")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise IntformerError(f"{path}: not a GGUF file (no GGUF magic at its start); give a .gguf model "
                                     "or a transformers model folder")
        return
    cfg = _folder_config(path)
    if cfg is None:
        raise IntformerError(f"{path}: no readable config.json: not a transformers model folder")
    kind = cfg.get("model_type")
    if kind not in LLAMA_FAMILY:
        raise IntformerError(f"{path}: model_type {kind!r} is not a LLaMA-family causal LM (supported: "
                             f"{', '.join(LLAMA_FAMILY)}); intformer compiles other models from ONNX")


def _load(path: str):
    from compiler.llm.weights import from_transformers, load_causal_lm

    check_model_path(path)
    try:
        model, tok = load_causal_lm(path)
    except Exception as e:  # noqa: BLE001 - transformers' failures name no file: one line that does
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise IntformerError(f"{path}: transformers could not load it as a causal LM ({first})") from None
    kind = getattr(model.config, "model_type", None)
    if kind not in LLAMA_FAMILY:
        raise IntformerError(f"{path}: model_type {kind!r} is not a LLaMA-family causal LM (supported: "
                             f"{', '.join(LLAMA_FAMILY)})")
    return model, tok, from_transformers(model)


def model_sha256(path: str) -> str:
    if os.path.isfile(path):
        from compiler.frontend.load import file_sha256

        return file_sha256(path)
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name.endswith((".json", ".safetensors", ".bin")):
            with open(os.path.join(path, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def calibration_documents(tokenizer, text_path: str, max_len: int) -> list[np.ndarray]:
    from compiler.llm.perplexity import document_tokens, read_documents

    if not os.path.isfile(text_path):
        raise IntformerError(f"{text_path}: no such file (--calibration-text: plain text, one document a line)")
    docs = [np.array(document_tokens(tokenizer, t, max_len), np.int32) for t in read_documents(text_path)
            if t.strip()]
    docs = [d for d in docs if len(d)]
    if not docs:
        raise IntformerError(f"{text_path}: no text to calibrate on (give plain text, one document a line)")
    return docs


def _tensor_specs(spec: LlmSpec, seq: int, step: Step) -> tuple[tuple, tuple]:
    """Inputs and outputs of one entry point (step: a compiler.frontend.llama.Step)."""
    last = step.last
    cache_out = (spec.layers, spec.kv_heads, seq, spec.head_dim)
    keys_out = (spec.layers, spec.kv_heads, spec.head_dim, seq)
    cache = (TensorSpec("keys", spec.keys_shape(), "int8"), TensorSpec("values", spec.cache_shape(), "int8"))
    inputs = (TensorSpec("ids", (seq,), "int32"), TensorSpec("positions", (seq,), "int32"),
              *([TensorSpec("last", (1,), "int32")] if last else []), *(cache if step.cached else ()))
    outputs = (TensorSpec("logits", (1 if last else seq, spec.vocab), "int32"),
               TensorSpec("new_keys", keys_out, "int8"), TensorSpec("new_values", cache_out, "int8"))
    return inputs, outputs


def _report(mod, calibration: CalibrationInfo) -> CompileReport:
    from compiler.frontend.llama import STEPS
    from compiler.passes.op_report import list_ops, summarize

    graphs = {name: summarize(list_ops(mod, name), 0).summary() for name in STEPS}
    return CompileReport.of(GraphReport.merge(graphs), graphs=tuple(graphs.items()), calibration=calibration)


def _check_integer(report: CompileReport, options: CompileOptions, path: str) -> None:
    mm = report.matmuls
    if mm.int8 < mm.total or (report.float_ops and options.integer_only):
        raise IntformerError(f"{path}: the integer decoder has {mm.total - mm.int8} float matmuls and float ops "
                             f"{report.float_ops} (an intformer bug: report it)")


def llm_state(path: str, options: CompileOptions, target_spec, calibration_text: str,
              context: int = DEFAULT_CONTEXT) -> CompileState:
    """The module stages' input: the integer step functions (STEPS), their report and entries."""
    from compiler.frontend.llama import STEPS, decoder_module
    from compiler.llm.calibrate import calibrate
    from compiler.llm.integer import build_integer_llama

    status(f"loading {path} (transformers, fp32)")
    model, tok, w = _load(path)
    if context > w.shape.max_positions:
        raise IntformerError(f"--context {context}: the model was trained for at most {w.shape.max_positions} "
                             "positions")
    chunk = min(context, MAX_CHUNK)
    docs = calibration_documents(tok, calibration_text, min(context, CALIBRATION_MAX_LEN))
    status(f"calibrating on {len(docs)} documents ({sum(len(d) for d in docs)} tokens) of {calibration_text}")
    ranges = calibrate(w, docs)
    status("building the integer model")
    from schedules.block4_gemm import select_isa

    # 4-bit block weights where the target has their kernel (elsewhere the generic one would be slower than int8)
    isa = select_isa(target_spec.tvm_target())
    im = build_integer_llama(w, ranges, max_positions=context + chunk,  # padded chunks run past the context
                             block4=isa != "generic")
    mod = decoder_module(im, chunk, context, isa)
    info = CalibrationInfo("minmax", f"text: {os.path.basename(calibration_text)}", 0.0, samples=len(docs))
    report = _report(mod, info)
    _check_integer(report, options, path)
    with tempfile.TemporaryDirectory(prefix="intformer-tok-") as tmp:
        files = pack_tokenizer(tok, tmp)
    s = w.shape
    spec = LlmSpec(context, chunk, s.vocab, s.layers, s.kv_heads, s.head_dim, float(im.logit_scale),
                   tok.eos_token_id, str(model.config.model_type), files)
    sha = model_sha256(path)
    entries = []
    for name, step in STEPS.items():
        seq = chunk if step.chunk else 1
        ins, outs = _tensor_specs(spec, seq, step)
        top = context + chunk - 1 if step.cached else seq - 1  # a first chunk sits at positions 0..seq-1
        bounds = (IndexBound("ids", 0, s.vocab - 1), IndexBound("positions", 0, top),
                  *([IndexBound("last", 0, seq - 1)] if step.last else []))
        entries.append(EntrySpec(name, ins, outs, (IOQuant("logits", spec.logit_scale, 0),), bounds, sha))
    return CompileState(model_path=path, options=options, target_spec=target_spec, model_sha256=sha,
                        inputs=entries[0].inputs, outputs=entries[0].outputs, relax_mod=mod, report=report,
                        entries=tuple(entries), llm=LlmParts(spec.to_json(), im))
