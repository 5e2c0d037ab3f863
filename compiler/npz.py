"""The .npz convention: one array per model input (or output), named as in the model, leading sample axis."""

from __future__ import annotations

import os

import numpy as np

from compiler.config import TensorSpec
from compiler.errors import IntformerError
from compiler.io_safety import atomic_output


def load_samples(path: str, specs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Read an .npz of inputs and split it into per-sample feeds, checking names, shapes and dtypes."""
    if not os.path.exists(path):
        raise IntformerError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, zlib.error, a SyntaxError in a damaged header...
        raise IntformerError(f"{path}: not a readable .npz file ({e or type(e).__name__}); write it again with "
                             "numpy.savez") from None
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in arrays]
    extra = [n for n in arrays if n not in expected]
    if missing or extra:
        msg = f"{path}: arrays {sorted(arrays)} do not match the model's inputs {expected}"
        if missing:
            msg += f"; missing {missing}"
        if extra:
            msg += f"; unexpected {extra}"
        raise IntformerError(msg)
    counts = set()
    for s in specs:
        a = arrays[s.name]
        if a.shape == s.shape:  # a single sample without the leading axis
            a = a[None]
            arrays[s.name] = a
        if s.ranges and a.ndim == len(s.shape) and s.accepts(a.shape):  # one sample of a ranged library
            a = a[None]
            arrays[s.name] = a
        if tuple(a.shape[1:]) != s.shape and not (s.ranges and s.accepts(a.shape[1:])):
            want = s.shape_text().replace("x", ", ")
            raise IntformerError(f"{path}: array '{s.name}' has shape {tuple(a.shape)}, expected (samples, "
                                 f"{want}) for input shape {s.shape_text()}")
        arrays[s.name] = a = _cast(path, s, a)
        if a.dtype.kind == "f" and a.size and not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise IntformerError(f"{path}: array '{s.name}' holds {bad} NaN or infinite values; give finite "
                                 "numbers")
        counts.add(a.shape[0])
    if len(counts) != 1:
        raise IntformerError(f"{path}: arrays disagree on the number of samples: "
                             f"{ {s.name: arrays[s.name].shape[0] for s in specs} }")
    n = counts.pop()
    if n == 0:
        raise IntformerError(f"{path}: holds zero samples")
    return [{s.name: arrays[s.name][i] for s in specs} for i in range(n)]


def check_index_bounds(path: str, samples: list[dict[str, np.ndarray]], rows: dict[str, int]) -> None:
    """Ids that index an embedding table of ``rows[name]`` rows must lie in [0, rows): an error naming the file,
    array and table size otherwise."""
    for name, n in rows.items():
        values = [f[name] for f in samples if name in f and np.size(f[name])]
        if not values:
            continue
        lo, hi = min(int(np.min(v)) for v in values), max(int(np.max(v)) for v in values)
        if lo < 0 or hi >= n:
            raise IntformerError(f"{path}: array '{name}' has values in [{lo}, {hi}], but the model's table has "
                                 f"{n} rows (valid ids 0 to {n - 1}); was it tokenized for another model?")


def _cast(path: str, spec: TensorSpec, a: np.ndarray) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if a.dtype == want:
        return a
    if want.kind in "iub":
        if a.dtype.kind not in "iub" or (a.size and (a.min() < np.iinfo(want).min if want.kind != "b" else False)):
            raise IntformerError(f"{path}: array '{spec.name}' has dtype {a.dtype}, expected {want}")
        if want.kind != "b" and a.size and a.max() > np.iinfo(want).max:
            raise IntformerError(f"{path}: array '{spec.name}' has values beyond {want}")
        return a.astype(want)
    if want.kind == "f" and a.dtype.kind in "fiu":
        return a.astype(want)
    raise IntformerError(f"{path}: array '{spec.name}' has dtype {a.dtype}, expected {want}")


def save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    """An .npz at exactly ``path`` (np.savez would append .npz to another name), written atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
