"""The compiled artifact's manifest: what a library takes and gives, for which target, built from what.

The manifest is embedded in the library (a VM function `intformer_manifest` returning its JSON) and written
beside it as `<library>.manifest.json`. This module imports no TVM, so the runtime can use it on a board.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from compiler.config import TensorSpec

FORMAT = "intformer-artifact"
VERSION = 1
MANIFEST_FUNC = "intformer_manifest"
ENTRY_FUNC = "main"


@dataclass(frozen=True)
class Manifest:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    target: dict
    tool_versions: dict
    model_sha256: str
    calibration_table_sha256: str
    calibration: dict  # method, source, samples
    input_ranges: dict  # input name -> [lo, hi] seen in calibration (bench draws inputs from it)
    report: dict  # summary of the compile report: matmul counts, float ops
    input_bounds: dict = None  # input name -> [lo, hi] valid values (ids that index an embedding table)
    entry: str = ENTRY_FUNC

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "entry": self.entry,
            "inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
            "target": self.target, "tool_versions": self.tool_versions,
            "model_sha256": self.model_sha256, "calibration_table_sha256": self.calibration_table_sha256,
            "calibration": self.calibration, "input_ranges": self.input_ranges, "report": self.report,
            "input_bounds": self.input_bounds or {},
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False)

    @staticmethod
    def from_json(d: dict) -> "Manifest":
        if d.get("format") != FORMAT:
            raise ValueError("not an intformer manifest")
        return Manifest(
            inputs=tuple(TensorSpec.from_json(x) for x in d["inputs"]),
            outputs=tuple(TensorSpec.from_json(x) for x in d["outputs"]),
            target=d["target"], tool_versions=d["tool_versions"], model_sha256=d["model_sha256"],
            calibration_table_sha256=d["calibration_table_sha256"], calibration=d["calibration"],
            input_ranges=d.get("input_ranges", {}), report=d.get("report", {}), input_bounds=d.get("input_bounds", {}), entry=d.get("entry", ENTRY_FUNC),
        )


def manifest_path(library_path: str) -> str:
    return library_path + ".manifest.json"
