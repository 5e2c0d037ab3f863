"""The value every stage of the compile pipeline (compiler/pipeline.py) takes and returns: `CompileState`.

Frozen: a stage returns a new one (dataclasses.replace). It lives apart from the pipeline so that the stages
(compiler/stages.py) import it without importing the pipeline that lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import onnx

from compiler.calibrate.table import CalibrationTable
from compiler.config import CompileOptions, TensorSpec
from compiler.report import CompileReport


@dataclass(frozen=True)
class CompileState:
    model_path: str
    options: CompileOptions
    onnx_model: Optional[onnx.ModelProto] = None
    model_sha256: str = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    onnx_matmuls: int = 0
    table: Optional[CalibrationTable] = None
    table_sha256: str = ""
    relax_mod: Any = None  # the integer graph (what the report and the NumPy reference describe)
    probes: tuple = ()  # (LayerNorm index in graph order, IntRepr of its integer output): `eval --per-layer`
    lowered_mod: Any = None  # the same graph with matmuls on scheduled kernels (what is built)
    report: Optional[CompileReport] = None  # set by `verify` (and `link`), extended by the later stages
    target_spec: Any = None  # targets.TargetSpec, resolved before the first stage
    executable: Any = None
    manifest: Any = None
    # encoder-decoder bundles (compiler/seq2seq): per graph, then for the linked module
    samples: tuple = ()  # calibration feeds given by the caller (e.g. recorded while decoding text)
    samples_source: str = ""
    io_qparams: tuple = ()  # (name, scale, zero point): graph inputs/outputs that cross as int8
    entries: tuple = ()  # artifact.EntrySpec of each entry point of a linked module
    seq2seq: Any = None  # the bundle's spec JSON (+ vocabulary) for the manifest
    llm_model: Any = None  # decoder-only LMs: the integer NumPy twin (compiler/llm/integer.IntLlama)
    llm: Any = None  # decoder-only LMs (compiler/llm/build.py): the LlmSpec JSON (+ tokenizer) for the manifest
    buckets: tuple = ()  # ranged dims: the compiled sizes, ((variable, size), ...) per bucket function
