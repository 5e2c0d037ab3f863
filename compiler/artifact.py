"""The compiled artifact's manifest: what a library takes and gives, for which target, built from what.

The manifest is embedded in the library (a VM function `intformer_manifest` returning its JSON) and written
beside it as `<library>.manifest.json`. This module imports no TVM, so the runtime can use it on a board.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from compiler.calibrate.table import CalibrationInfo
from compiler.config import TensorSpec
from compiler.report import GraphReport

FORMAT = "intformer-artifact"
VERSION = 1
MANIFEST_FUNC = "intformer_manifest"
ENTRY_FUNC = "main"


@dataclass(frozen=True)
class IOQuant:
    """An integer input or output that stands for a real tensor: real = scale * (q - zero_point) (the int8
    tensors crossing from one graph or decoding step to the next)."""

    name: str
    scale: float
    zero_point: int


@dataclass(frozen=True)
class IndexBound:
    """An input of ids that index an embedding table: its valid values, lo..hi."""

    name: str
    lo: int
    hi: int


@dataclass(frozen=True)
class EntrySpec:
    """One VM function of a library with several entry points (a seq2seq library: `encoder`, `decoder`).

    `quant`: each integer input/output that stands for a real tensor: the int8 tensors crossing from the encoder
    to the decoder and the decoder states."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    quant: tuple[IOQuant, ...] = ()
    input_bounds: tuple[IndexBound, ...] = ()
    model_sha256: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "inputs": [s.to_json() for s in self.inputs],
                "outputs": [s.to_json() for s in self.outputs],
                "quant": {q.name: [q.scale, q.zero_point] for q in self.quant},
                "input_bounds": {b.name: [b.lo, b.hi] for b in self.input_bounds}, "model_sha256": self.model_sha256}

    @staticmethod
    def from_json(d: dict) -> EntrySpec:
        return EntrySpec(d["name"], tuple(TensorSpec.from_json(x) for x in d["inputs"]),
                         tuple(TensorSpec.from_json(x) for x in d["outputs"]),
                         tuple(IOQuant(n, float(v[0]), int(v[1])) for n, v in d.get("quant", {}).items()),
                         tuple(IndexBound(n, int(v[0]), int(v[1])) for n, v in d.get("input_bounds", {}).items()),
                         d.get("model_sha256", ""))


@dataclass(frozen=True)
class Manifest:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    target: dict
    tool_versions: dict
    model_sha256: str
    calibration_table_sha256: str
    calibration: CalibrationInfo  # method, source, samples
    input_ranges: dict  # input name -> [lo, hi] seen in calibration (bench draws inputs from it)
    report: GraphReport  # summary of the compile report: matmul counts, float ops, every op's dtypes
    input_bounds: dict = None  # input name -> [lo, hi] valid values (ids that index an embedding table)
    entry: str = ENTRY_FUNC
    entries: tuple[EntrySpec, ...] = ()  # several entry points (inputs/outputs/entry then describe the first)
    seq2seq: dict = None  # the Seq2SeqSpec JSON, with the vocabulary file's bytes as base64 under "vocab_base64"
    token_scales: bool = False  # per-token activation scales (compile --token-scales): `eval --per-layer` rebuilds so
    llm: dict = None  # decoder-only LMs: compiler/llm/spec.LlmSpec JSON, with the tokenizer's files (base64)

    def entry_spec(self, name: str) -> EntrySpec:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"the library has no entry point '{name}' (it has {[e.name for e in self.entries]})")

    def to_json(self) -> dict:
        extra = {}
        if self.entries:
            extra = {"entries": [e.to_json() for e in self.entries], "seq2seq": self.seq2seq}
            if self.llm is not None:
                extra["llm"] = self.llm
        return {**extra,
            "format": FORMAT, "version": VERSION, "entry": self.entry,
            "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
            "target": self.target, "tool_versions": self.tool_versions,
            "model_sha256": self.model_sha256, "calibration_table_sha256": self.calibration_table_sha256,
            "calibration": self.calibration.to_json(), "input_ranges": self.input_ranges,
            "report": self.report.to_json(),
            "input_bounds": self.input_bounds or {}, "token_scales": self.token_scales,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False)

    @staticmethod
    def from_json(d: dict) -> Manifest:
        if d.get("format") != FORMAT:
            raise ValueError("not an intformer manifest")
        return Manifest(
            inputs=tuple(TensorSpec.from_json(x) for x in d["inputs"]),
            outputs=tuple(TensorSpec.from_json(x) for x in d["outputs"]),
            target=d["target"], tool_versions=d["tool_versions"], model_sha256=d["model_sha256"],
            calibration_table_sha256=d["calibration_table_sha256"],
            calibration=CalibrationInfo.from_json(d["calibration"]),
            input_ranges=d.get("input_ranges", {}), report=GraphReport.from_json(d.get("report") or {}),
            input_bounds=d.get("input_bounds", {}),
            entry=d.get("entry", ENTRY_FUNC),
            entries=tuple(EntrySpec.from_json(e) for e in d.get("entries", ())), seq2seq=d.get("seq2seq"),
            token_scales=bool(d.get("token_scales", False)),  # libraries from before the field: off
            llm=d.get("llm"),
        )


def manifest_path(library_path: str) -> str:
    return library_path + ".manifest.json"
