"""Run the fp32 model on calibration samples and record per-tensor ranges (the observer).

Instruments the shape-pinned, folded ONNX graph: every float tensor a node produces becomes an extra
output of an onnxruntime session; each sample updates min/max and the per-sample percentiles.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import helper

from compiler.calibrate.table import CalibrationTable, TensorRange
from compiler.config import TensorSpec
from compiler.progress import progress_bar

DEFAULT_PERCENTILE = 99.99
SYNTHETIC_SAMPLES = 8


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of the float32 tensors computed by nodes (not constants)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    names = []
    for node in model.graph.node:
        if node.op_type in ("Constant",):
            continue
        for o in node.output:
            if o and types.get(o) == onnx.TensorProto.FLOAT:
                names.append(o)
    return names


def _run_observed(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], names: list[str],
                  description: str):
    """Yield (feed, {tensor name: value}) for every sample, with `names` exposed as extra outputs."""
    import onnxruntime as ort

    inst = onnx.ModelProto()
    inst.CopyFrom(model)
    existing = {o.name for o in inst.graph.output}
    for n in names:
        if n not in existing:
            inst.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="intformer-calib-") as tmp:
        path = os.path.join(tmp, "calib.onnx")
        onnx.save(inst, path, save_as_external_data=inst.ByteSize() > (1 << 30))
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    with progress_bar(description, total=len(samples)) as advance:
        for feed in samples:
            yield feed, dict(zip(names, sess.run(names, feed)))
            advance()


SHORT_LENGTHS = (3, 4, 6, 8, 12, 16, 24, 32)  # lengths of the short variants (cycled over the samples)
VARIANTS = 2  # short variants per sample (MiniLM on reviews, worst cosine: 0.83 with none, 0.973 with one,
# 0.979 with two, 0.981 with four; calibration time grows with each)


def mask_input(specs: list[TensorSpec]) -> str | None:
    """The attention-mask input (an integer input named *mask* of shape (batch, seq)), or None."""
    for s in specs:
        if "mask" in s.name.lower() and len(s.shape) == 2 and np.dtype(s.dtype).kind in "iub":
            return s.name
    return None


def augment_lengths(samples: list[dict[str, np.ndarray]], specs: list[TensorSpec]) -> list[dict]:
    """The samples, then for each one whose attention mask marks more than 3 tokens a short variant: its first
    l - 1 tokens and its last real token (the end marker: [SEP], </s>), the rest padding as in the sample, l
    from SHORT_LENGTHS in turn. Calibration text is usually long; what users send is often a few words, whose
    activations (the end marker after one word) lie outside long texts' ranges: seen on MiniLM, a 3-token review
    at cosine 0.83 with long-text ranges."""
    name = mask_input(specs)
    if name is None:
        return list(samples)
    seq_inputs = [s.name for s in specs if tuple(s.shape) == tuple(next(x for x in specs if x.name == name).shape)]
    out, k = list(samples), 0
    for feed in samples:
        mask = np.asarray(feed[name])
        if mask.shape[0] != 1:
            continue
        n = int(np.count_nonzero(mask[0]))
        if n <= 3 or not np.all(mask[0, :n]) or np.any(mask[0, n:]):
            continue  # only left-aligned masks: [1 .. 1 0 .. 0]
        for j in range(VARIANTS):
            length = SHORT_LENGTHS[(k + j * len(SHORT_LENGTHS) // VARIANTS) % len(SHORT_LENGTHS)]
            if length >= n:
                continue
            short = dict(feed)
            for inp in seq_inputs:
                v = np.array(feed[inp])
                pad = v[0, n] if n < v.shape[1] else np.zeros((), v.dtype)
                w = np.full_like(v, pad)
                w[0, :length - 1] = v[0, :length - 1]
                w[0, length - 1] = v[0, n - 1]
                short[inp] = w
            out.append(short)
        k += 1
    return out


def _real_positions(v: np.ndarray, mask) -> np.ndarray:
    """The values of v at positions the attention mask marks as real (v of shape (batch, seq, ...)); v whole
    for tensors of other shapes. Padding never enters a statistic."""
    if mask is not None and v.ndim >= 2 and v.shape[:2] == mask.shape:
        return v[mask.astype(bool)]
    return v


def _real_values(name: str, v: np.ndarray, feed: dict, positions, mask) -> np.ndarray:
    """The values of tensor `name` at real positions, flattened: by its token axes (positions) when they are
    known, else by a leading (batch, seq) of the mask's shape."""
    valid = positions.valid(name, v, feed) if positions is not None else None
    return v[valid] if valid is not None else _real_positions(v, mask).ravel()


def channel_stats(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], names: list[str],
                  max_rows: int = 512, seed: int = 0, mask_name: str | None = None, positions=None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-channel (last axis) max |x| of the named tensors over all samples (real positions only when the
    attention-mask input `mask_name` is given), and a random sample of their rows (at most `max_rows`).
    ``positions`` (calibrate/padding.py): each tensor's own token axes, the attention scores' included."""
    rng = np.random.default_rng(seed)
    absmax: dict[str, np.ndarray] = {}
    rows: dict[str, list] = {}
    per_sample = max(1, max_rows // max(1, len(samples)))
    for feed, values in _run_observed(model, samples, names, "calibrating (channels)"):
        mask = feed.get(mask_name) if mask_name else None
        for n, v in values.items():
            valid = positions.valid(n, v, feed) if positions is not None and v.ndim > 1 else None
            if valid is not None and v.ndim - 1 not in dict(positions.axes)[n]:
                r = v.reshape(-1, v.shape[-1])[valid[..., 0].reshape(-1)]
            else:
                v = _real_positions(v, mask)
                r = v.reshape(-1, v.shape[-1]) if v.size else v
            if not r.size:
                continue
            m = np.abs(r).max(axis=0)
            absmax[n] = m if n not in absmax else np.maximum(absmax[n], m)
            pick = rng.choice(r.shape[0], size=min(per_sample, r.shape[0]), replace=False)
            rows.setdefault(n, []).append(r[pick])
    return absmax, {n: np.concatenate(v)[:max_rows] for n, v in rows.items()}


def collect(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], model_sha256: str,
            input_specs: list[TensorSpec], source: str = "data",
            percentile: float = DEFAULT_PERCENTILE, positions=None) -> CalibrationTable:
    """Ranges of every float tensor of `model` (min/max and mean per-sample percentiles), over the positions
    the attention mask marks as real. ``positions`` (calibrate/padding.py): each tensor's own token axes (the
    attention scores' queries and keys included); otherwise a leading (batch, seq) of the mask's shape."""
    names = float_tensors(model)
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    plo: dict[str, list] = {n: [] for n in names}
    phi: dict[str, list] = {n: [] for n in names}
    in_lo = {s.name: np.inf for s in input_specs}
    in_hi = {s.name: -np.inf for s in input_specs}
    q = (100.0 - percentile, percentile)
    hists = {n: _AbsHistogram() for n in names}
    mask_name = mask_input(input_specs)
    for feed, values in _run_observed(model, samples, names, "calibrating"):
        for s in input_specs:
            in_lo[s.name] = min(in_lo[s.name], float(np.min(feed[s.name])))
            in_hi[s.name] = max(in_hi[s.name], float(np.max(feed[s.name])))
        mask = feed.get(mask_name) if mask_name else None
        for n, v in values.items():
            v = _real_values(n, v, feed, positions, mask)
            v = v[np.isfinite(v)]  # masked attention scores can reach -inf; ranges describe finite values
            if v.size == 0:
                continue
            lo[n] = min(lo[n], float(v.min()))
            hi[n] = max(hi[n], float(v.max()))
            hists[n].add(v)
            a, b = np.percentile(v, q)
            plo[n].append(float(a))
            phi[n].append(float(b))
    tensors = tuple(
        (n, TensorRange(lo[n], hi[n], float(np.mean(plo[n])), float(np.mean(phi[n])), *hists[n].result()))
        for n in names if np.isfinite(lo[n]) and np.isfinite(hi[n])
    )
    return CalibrationTable(
        model_sha256=model_sha256,
        input_shapes=tuple((s.name, s.shape) for s in input_specs),
        num_samples=len(samples), percentile=percentile, source=source, tensors=tensors,
        input_ranges=tuple((s.name, (in_lo[s.name], in_hi[s.name])) for s in input_specs),
    )


HIST_BINS = 2048


class _AbsHistogram:
    """Counts of |x| in HIST_BINS equal bins over [0, max seen]; a larger max re-bins the counts so far (each old
    bin's count moves to the new bin holding its centre)."""

    def __init__(self):
        self.counts = np.zeros(HIST_BINS, np.int64)
        self.top = 0.0

    def add(self, v: np.ndarray) -> None:
        a = np.abs(v.astype(np.float64))
        top = float(a.max()) if a.size else 0.0
        if top > self.top:
            if self.top > 0:
                centres = (np.arange(HIST_BINS) + 0.5) * self.top / HIST_BINS
                idx = np.minimum((centres / top * HIST_BINS).astype(np.int64), HIST_BINS - 1)
                self.counts = np.bincount(idx, weights=self.counts, minlength=HIST_BINS).astype(np.int64)
            self.top = top
        if self.top > 0:
            self.counts += np.histogram(a, bins=HIST_BINS, range=(0.0, self.top))[0]

    def result(self) -> tuple[tuple[int, ...], float]:
        return tuple(int(c) for c in self.counts), self.top


def synthetic_samples(model: onnx.ModelProto, specs: list[TensorSpec], n: int = SYNTHETIC_SAMPLES,
                      seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Stand-in calibration inputs when the user gives none: ids inside the embedding tables they index,
    masks of ones, floats from a unit normal. Accuracy on real data needs real calibration data."""
    rng = np.random.default_rng(seed)
    bounds = index_bounds(model)
    out = []
    for _ in range(n):
        feed = {}
        for s in specs:
            dt = np.dtype(s.dtype)
            if dt.kind == "f":
                feed[s.name] = rng.standard_normal(s.shape).astype(dt)
            elif dt.kind == "b" or "mask" in s.name.lower():
                feed[s.name] = np.ones(s.shape, dtype=dt)
            else:
                feed[s.name] = rng.integers(0, bounds.get(s.name, 2), size=s.shape).astype(dt)
        out.append(feed)
    return out


def index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """For each integer graph input, the row count of the smallest constant table it indexes (via Gather)."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    bounds = {}
    for inp in model.graph.input:
        frontier, seen, depth = [inp.name], set(), 0
        while frontier and depth < 6:
            nxt = []
            for t in frontier:
                for node in consumers.get(t, []):
                    if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == t \
                            and node.input[0] in inits:
                        rows = inits[node.input[0]].dims[0]
                        bounds[inp.name] = min(bounds.get(inp.name, rows), rows)
                    elif node.name not in seen:
                        seen.add(node.name)
                        nxt.extend(node.output)
            frontier, depth = nxt, depth + 1
    return bounds
