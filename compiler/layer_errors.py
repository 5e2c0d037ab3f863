"""The error of every layer's output against fp32 (`intformer eval --per-layer`): where accuracy goes.

The compile stages run up to the integer graph (with the calibration table the library was built with, so the
graph is the library's: the NumPy reference equals the library bit for bit); the reference interpreter records
every LayerNorm output (the output of each attention and feed-forward block, and of the embeddings), and
onnxruntime runs the fp32 model with the same tensors added as outputs. Positions the attention mask marks as
padding are left out of every figure.

Two figures per layer: the error that shows at its output (everything before it quantized), and the error the
layer adds itself ("local"): a second run of the reference continues after every recorded output from the fp32
value in its integer codes, so each layer starts from exact inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from compiler.config import CompileOptions
from compiler.progress import progress_bar


@dataclass(frozen=True)
class LayerError:
    """One tensor, over every sample: cosine of the whole (unpadded) tensor with fp32, and the max abs error."""

    name: str  # the ONNX tensor (a LayerNorm output) or the model output
    cosine_mean: float
    cosine_min: float
    max_abs_error: float
    fp32_absmax: float  # the largest |value| of the fp32 tensor, for scale
    local_cosine_mean: float = float("nan")  # the layer alone: every earlier recorded output replaced by fp32's
    local_cosine_min: float = float("nan")


def layer_errors(model_path: str, options: CompileOptions, samples: list[dict],
                 mask_input: str = "attention_mask") -> list[LayerError]:
    import onnxruntime as ort

    from compiler.intmath.interpreter import Interpreter
    from compiler.pipeline import resume_pipeline, run_pipeline

    st0 = run_pipeline(model_path, options, until="check_import")
    st = resume_pipeline(st0, "check_import", until="verify")
    fp32 = onnx.ModelProto()
    fp32.CopyFrom(st0.onnx_model)
    norms = [n for n in fp32.graph.node if n.op_type == "LayerNormalization"]
    names = [norms[p.layer].output[0] for p in st.probes]
    outputs = [o.name for o in fp32.graph.output if o.name not in names]  # a LayerNorm may be the output
    for n in names:
        fp32.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(fp32.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed_names = [i.name for i in sess.get_inputs()]
    ref = Interpreter(st.relax_mod)
    reps = [p.value for p in st.probes]
    stats: dict[str, list] = {n: [] for n in names + outputs}
    local: dict[str, list] = {n: [] for n in names + outputs}
    with progress_bar("per-layer errors", total=len(samples)) as advance:
        for feed in samples:
            want = sess.run(names + outputs, {k: feed[k] for k in feed_names})
            args = [feed[s.name] for s in st.inputs]
            mask = feed.get(mask_input)
            for n, g, w in zip(names + outputs, _reference_values(ref, args, reps), want):
                stats[n].append(_compare(g, np.asarray(w, np.float64), mask))
            exact = {r.expr: _codes(r, w) for r, w in zip(reps, want)}
            for n, g, w in zip(names + outputs, _reference_values(ref, args, reps, exact), want):
                local[n].append(_compare(g, np.asarray(w, np.float64), mask)[0])
            advance()
    rows = []
    for n in names + outputs:
        cos, err, top = zip(*stats[n])
        rows.append(LayerError(n, float(np.mean(cos)), float(np.min(cos)), float(np.max(err)), float(np.max(top)),
                               float(np.mean(local[n])), float(np.min(local[n]))))
    return rows


def _reference_values(ref, args: list, reps: list, override: dict | None = None) -> list[np.ndarray]:
    """The reference's recorded outputs (dequantized, as computed) then the model outputs, in float64."""
    trace = {r.expr: None for r in reps}
    outs = ref(*args, trace=trace, override=override)
    got = [(trace[r.expr].astype(np.float64) - r.zp) * float(np.float32(r.scale)) for r in reps]
    return got + [np.asarray(g, np.float64) for g in outs]


def _codes(r, value: np.ndarray) -> np.ndarray:
    """The fp32 value in the integer codes of r (rounded, clipped to r's type)."""
    info = np.iinfo(r.dtype)
    q = np.round(np.asarray(value, np.float64) / float(np.float32(r.scale))) + r.zp
    return np.clip(q, info.min, info.max).astype(r.dtype)


def _compare(got: np.ndarray, want: np.ndarray, mask) -> tuple[float, float, float]:
    got, want = got.reshape(want.shape), want
    if mask is not None and want.ndim >= 2 and want.shape[:2] == np.shape(mask):
        keep = np.asarray(mask).astype(bool)
        got, want = got[keep], want[keep]
    g, w = got.reshape(-1), want.reshape(-1)
    cos = float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w) + 1e-30))
    return cos, float(np.max(np.abs(g - w), initial=0.0)), float(np.max(np.abs(w), initial=0.0))
