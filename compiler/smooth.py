"""Smooth: move the per-channel range of MatMul activations into the constant weights.

BERT-family activations have a few outlier embedding channels (Bondarenko et al. 2021) that stretch a
per-tensor int8 scale. For a MatMul x @ W with constant W, x @ W == (x / s) @ (diag(s) W) for any positive
per-channel s; choosing s_k = max|x_k|^alpha / max|W_k|^(1 - alpha) (the SmoothQuant rule, Xiao et al. 2022)
evens the channels of x at a small cost to the per-column int8 weights. alpha is chosen per activation on the
calibration data. On all-MiniLM-L6-v2 (real text) this lifts the mean cosine of embeddings from 0.989 to 0.996.

Expects: a folded ONNX graph (Gemm already rewritten as MatMul) and per-channel absolute maxima of the
activations that feed MatMuls with constant weights.
Guarantees: for every such activation, one Mul by 1/s is inserted before its MatMul consumers and their
weights are scaled by s (rows); the function the graph computes is unchanged in exact arithmetic. In the
integer graph, 1/s becomes a per-channel fixed-point requantization of the activation (integer LayerNorm
outputs and table lookups are int16, so this costs no accuracy).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_S_MIN, _S_MAX = 1e-4, 1e4




def smoothing_candidates(model: onnx.ModelProto) -> dict[str, list[str]]:
    """activation tensor -> names of the constant weights of the MatMuls it feeds (as operand 0)."""
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and n.input[0] not in inits:
            out.setdefault(n.input[0], []).append(n.input[1])
    return out


ALPHA_GRID = (0.0, 0.25, 0.5, 0.65, 0.75, 0.85, 0.95)
ALPHA_SEARCH_ROWS = 256  # sampled rows the alphas are ranked on (BERT-base: 48 activations x 7 alphas x matmuls)


def _fake_quant_rows(x: np.ndarray) -> np.ndarray:
    """Per-tensor asymmetric int8 round trip (the activation side of the integer matmul)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zp = np.clip(np.round(-128 - lo / scale), -128, 127)
    return (np.clip(np.round(x / scale) + zp, -128, 127) - zp) * scale


def _fake_quant_per_row(x: np.ndarray) -> np.ndarray:
    """Asymmetric int8 round trip of each row on its own span (per-token scales: intmath.row_quantize, whose
    power-of-two step is at most twice as coarse; this only ranks the alphas)."""
    lo = np.minimum(x.min(axis=1, keepdims=True), 0.0)
    hi = np.maximum(x.max(axis=1, keepdims=True), 0.0)
    scale = np.maximum((hi - lo) / 255.0, 1e-12)
    return np.round((x - lo) / scale) * scale + lo


_ROW_LAYOUT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
_NORM_OPS = {"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"}


def row_quantized_activations(model: onnx.ModelProto) -> set[str]:
    """The smoothing candidates that per-token scales will quantize row by row at run time: those no
    normalization produces (through layout ops), as compiler/passes/integerize_matmul.py decides."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def normalized(name: str) -> bool:
        for _ in range(16):
            n = producer.get(name)
            if n is None:
                return False
            if n.op_type in _NORM_OPS:
                return True
            if n.op_type not in _ROW_LAYOUT:
                return False
            name = n.input[0]
        return False

    return {x for x in smoothing_candidates(model) if not normalized(x)}


def _fake_quant_cols(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output column round trip (the weight side)."""
    scale = np.abs(w).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / scale), -127, 127) * scale


def _error(rows: np.ndarray, ws: list[np.ndarray], refs: list[np.ndarray], s: np.ndarray,
           per_row: bool = False) -> float:
    """Relative output error of the int8 round trip with factors s (refs: rows @ w, computed once per weight;
    all float32: this only ranks the candidate alphas); ``per_row``: the activation quantized row by row."""
    xq = (_fake_quant_per_row if per_row else _fake_quant_rows)(rows / s)
    err = 0.0
    for w, ref in zip(ws, refs):
        got = xq @ _fake_quant_cols(w * s[:, None])
        err += float(np.sum((got - ref) ** 2, dtype=np.float64) / max(np.sum(ref ** 2, dtype=np.float64), 1e-30))
    return err


def _factors(amax: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    s = np.power(np.maximum(amax, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1.0 - alpha)
    if alpha == 0.0:
        s = np.ones_like(amax)
    return np.clip(s, _S_MIN, _S_MAX).astype(np.float32)


def smoothing_factors(model: onnx.ModelProto, channel_absmax: dict[str, np.ndarray],
                      rows: dict[str, np.ndarray], alpha: float | None = None,
                      per_row: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """Per activation, the factors s. With `alpha` None, each activation gets the alpha of ALPHA_GRID that
    minimizes the relative output error of its int8 MatMuls on the calibration rows (0 means no smoothing:
    random-weight models have no outlier channels and lose a little from it), with the activation quantized as
    the integer graph will: per tensor, or row by row for those in ``per_row`` (row_quantized_activations)."""
    inits = {i.name: i for i in model.graph.initializer}
    factors = {}
    for x, weights in smoothing_candidates(model).items():
        if x not in channel_absmax:
            continue
        ws = [numpy_helper.to_array(inits[w]).astype(np.float64) for w in weights]
        if any(w.ndim != 2 for w in ws):
            continue
        wmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        amax = np.asarray(channel_absmax[x], dtype=np.float64)
        if amax.shape != wmax.shape:
            continue
        if alpha is not None:
            best = alpha
        else:
            r = np.asarray(rows[x], dtype=np.float32).reshape(-1, amax.shape[0])[:ALPHA_SEARCH_ROWS]
            w32 = [w.astype(np.float32) for w in ws]
            refs = [r @ w for w in w32]
            best = min(ALPHA_GRID, key=lambda a: _error(r, w32, refs, _factors(amax, wmax, a), x in per_row))
        if best > 0:
            factors[x] = _factors(amax, wmax, best)
    return factors


def apply_smoothing(model: onnx.ModelProto, factors: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Rewrite the model in place (see the module docstring) and return it."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    done = set()
    for node in g.node:
        x = node.input[0] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if x in factors and node.input[1] in inits:
            s = np.asarray(factors[x], dtype=np.float32)
            xs = f"{x}/smoothed"
            if x not in done:
                inv = f"{x}/smooth_inv"
                g.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
                new_nodes.append(helper.make_node("Mul", [x, inv], [xs], name=f"{x}/smooth"))
                done.add(x)
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32) * s[:, None]
            wname = f"{node.input[1]}/smoothed/{node.name or len(new_nodes)}"
            g.initializer.append(numpy_helper.from_array(w, wname))
            node.input[0], node.input[1] = xs, wname
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model
