"""The calibration table: observed per-tensor ranges, a JSON file that `compile` can reuse."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

from compiler.errors import IntformerError

FORMAT = "intformer-calibration"
VERSION = 1


@dataclass(frozen=True)
class TensorRange:
    """What calibration saw of one tensor over all samples."""

    min: float
    max: float
    pct_lo: float  # mean over samples of the low percentile
    pct_hi: float  # mean over samples of the high percentile
    hist: tuple[int, ...] = ()  # counts of |x| in equal bins over [0, hist_max] (entropy calibration)
    hist_max: float = 0.0

    def to_json(self) -> dict:
        d = {"min": self.min, "max": self.max, "pct_lo": self.pct_lo, "pct_hi": self.pct_hi}
        if self.hist:
            d.update(hist=list(self.hist), hist_max=self.hist_max)
        return d

    @staticmethod
    def from_json(d: dict) -> TensorRange:
        return TensorRange(float(d["min"]), float(d["max"]), float(d["pct_lo"]), float(d["pct_hi"]),
                           tuple(int(c) for c in d.get("hist", ())), float(d.get("hist_max", 0.0)))


@dataclass(frozen=True)
class CalibrationInfo:
    """What a library's manifest (and the compile report) records of its calibration: the method, where the
    samples came from, how many, the percentile. A library of several graphs (seq2seq) counts the encoder's and
    the decoder's samples apart."""

    method: str
    source: str
    percentile: float
    samples: Optional[int] = None
    encoder_samples: Optional[int] = None
    decoder_samples: Optional[int] = None

    def to_json(self) -> dict:
        d = {"method": self.method, "source": self.source}
        if self.samples is not None:
            d["samples"] = self.samples
        if self.encoder_samples is not None or self.decoder_samples is not None:
            d.update(encoder_samples=self.encoder_samples, decoder_samples=self.decoder_samples)
        d["percentile"] = self.percentile
        return d

    @staticmethod
    def from_json(d: dict) -> CalibrationInfo:
        return CalibrationInfo(d.get("method", "minmax"), d.get("source", ""), d.get("percentile", 0.0),
                               d.get("samples"), d.get("encoder_samples"), d.get("decoder_samples"))

    @staticmethod
    def of_table(method: str, table: CalibrationTable) -> CalibrationInfo:
        return CalibrationInfo(method, table.source, table.percentile, samples=table.num_samples)


@dataclass(frozen=True)
class CalibrationTable:
    """Ranges keyed by ONNX tensor name (of the shape-pinned, folded graph)."""

    model_sha256: str
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]
    num_samples: int
    percentile: float
    source: str  # "data" or "synthetic"
    tensors: tuple[tuple[str, TensorRange], ...]
    input_ranges: tuple[tuple[str, tuple[float, float]], ...] = ()
    smoothing_alpha: float = 0.0
    smoothing: tuple[tuple[str, tuple[float, ...]], ...] = ()  # activation -> per-channel factors s

    def smoothing_factors(self) -> dict:
        import numpy as np

        return {n: np.asarray(f, dtype=np.float32) for n, f in self.smoothing}

    def ranges(self) -> dict[str, TensorRange]:
        return dict(self.tensors)

    def sha256(self) -> str:
        """The digest a library's manifest records for the table it was compiled with."""
        import hashlib

        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "model_sha256": self.model_sha256,
            "input_shapes": {n: list(s) for n, s in self.input_shapes},
            "num_samples": self.num_samples, "percentile": self.percentile, "source": self.source,
            "input_ranges": {n: list(r) for n, r in self.input_ranges},
            "smoothing_alpha": self.smoothing_alpha,
            "smoothing": {n: list(f) for n, f in self.smoothing},
            "tensors": {n: r.to_json() for n, r in self.tensors},
        }

    @staticmethod
    def from_json(d: dict) -> CalibrationTable:
        return CalibrationTable(
            model_sha256=d["model_sha256"],
            input_shapes=tuple((n, tuple(s)) for n, s in d["input_shapes"].items()),
            num_samples=int(d["num_samples"]), percentile=float(d["percentile"]), source=d["source"],
            tensors=tuple((n, TensorRange.from_json(r)) for n, r in d["tensors"].items()),
            input_ranges=tuple((n, (float(r[0]), float(r[1]))) for n, r in d.get("input_ranges", {}).items()),
            smoothing_alpha=float(d.get("smoothing_alpha", 0.0)),
            smoothing=tuple((n, tuple(float(x) for x in f)) for n, f in d.get("smoothing", {}).items()),
        )

    @staticmethod
    def load(path: str) -> CalibrationTable:
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise IntformerError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IntformerError(f"{path}: not a JSON calibration table ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise IntformerError(f"{path}: not an intformer calibration table (write one with `intformer compile "
                                 "... --calibration-data CALIB.npz --save-calibration-table TABLE.json`)")
        if d.get("version") != VERSION:
            raise IntformerError(f"{path}: calibration table version {d.get('version')}, "
                                 f"this intformer reads {VERSION}")
        try:
            table = CalibrationTable.from_json(d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise IntformerError(f"{path}: malformed calibration table ({type(e).__name__}: {e}); write it again "
                                 "with --save-calibration-table") from None
        for name, r in table.tensors:
            values = (r.min, r.max, r.pct_lo, r.pct_hi, r.hist_max)
            if not all(math.isfinite(v) for v in values) or r.min > r.max:
                raise IntformerError(f"{path}: tensor '{name}' has the range [{r.min}, {r.max}] (percentiles "
                                     f"{r.pct_lo}, {r.pct_hi}); a range must be finite numbers, min <= max: "
                                     "recalibrate with --calibration-data")
        for name, f in table.smoothing:
            if not all(math.isfinite(x) and x > 0 for x in f):
                raise IntformerError(f"{path}: smoothing factors of '{name}' must be finite and positive; "
                                     "recalibrate with --calibration-data")
        return table

    def save(self, path: str) -> None:
        from compiler.io_safety import write_text

        write_text(path, json.dumps(self.to_json(), indent=1))
