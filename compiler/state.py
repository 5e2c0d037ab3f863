"""The value every stage of the compile pipeline (compiler/pipeline.py) takes and returns: `CompileState`, and
the phases that say which of its fields a stage needs set and which it sets.

Frozen: a stage returns a new one (dataclasses.replace). One carrier, not one type per phase: the phases share
most fields (options, target, inputs/outputs, report), and the ranged and encoder-decoder paths re-enter the list
from states they link, so each stage instead declares the phase it takes and the phase it gives
(`Phase`, checked by the pipeline between stages). It lives apart from the pipeline so that the stages
(compiler/stages.py) import it without importing the pipeline that lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import onnx

from compiler.artifact import EntrySpec, IOQuant, Manifest
from compiler.calibrate.table import CalibrationTable
from compiler.config import CompileOptions, TensorSpec
from compiler.ranged import Bucket
from compiler.report import CompileReport

if TYPE_CHECKING:  # TVM's import takes seconds; the API checks its arguments first
    import tvm
    from tvm import relax

    from compiler.llm.integer import IntLlama
    from compiler.passes.intrepr import Probe
    from targets import TargetSpec


@dataclass(frozen=True)
class Seq2SeqParts:
    """What only the encoder-decoder path (compiler/seq2seq) carries: per graph up to `link`, then the linked
    module's spec for the manifest (its entry points are the state's `entries`)."""

    samples: tuple[Mapping[str, np.ndarray], ...] = ()  # calibration feeds recorded while decoding text
    samples_source: str = ""
    io_qparams: tuple[IOQuant, ...] = ()  # set by agree_crossings
    spec_json: Optional[dict[str, object]] = None  # set by link: the bundle's spec JSON (+ vocabulary)


@dataclass(frozen=True)
class LlmParts:
    """What only a decoder-only LM (compiler/llm/build.py) carries: its spec for the manifest and its twin."""

    spec_json: Optional[dict[str, object]] = None  # the LlmSpec JSON (+ the tokenizer's files, base64)
    model: Optional[IntLlama] = None  # the integer NumPy twin (the specification the library equals)


@dataclass(frozen=True)
class CompileState:
    model_path: str
    options: CompileOptions
    target_spec: Optional[TargetSpec] = None  # resolved before the first stage
    onnx_model: Optional[onnx.ModelProto] = None
    model_sha256: str = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    onnx_matmuls: int = 0
    table: Optional[CalibrationTable] = None
    table_sha256: str = ""
    relax_mod: Optional[tvm.IRModule] = None  # the integer graph (what the report and the NumPy reference describe)
    probes: tuple[Probe, ...] = ()  # LayerNorm outputs in the integer graph: `eval --per-layer`
    report: Optional[CompileReport] = None  # set by `verify` (and the links), extended by the later stages
    lowered_mod: Optional[tvm.IRModule] = None  # the same graph with matmuls on scheduled kernels (what is built)
    manifest: Optional[Manifest] = None
    executable: Optional[relax.VMExecutable] = None
    buckets: tuple[Bucket, ...] = ()  # ranged dims: the compiled sizes, one per bucket function
    entries: tuple[EntrySpec, ...] = ()  # a module with several entry points (seq2seq, decoder-only LM): each
    seq2seq: Seq2SeqParts = Seq2SeqParts()
    llm: LlmParts = LlmParts()


@dataclass(frozen=True)
class Phase:
    """A point of the pipeline, named after what the state then holds: the fields set from there on."""

    name: str
    needs: tuple[str, ...]

    def missing(self, st: CompileState) -> list[str]:
        return [f for f in self.needs if _unset(getattr(st, f))]


def _unset(value: object) -> bool:
    return value is None or (isinstance(value, tuple) and not value)


SOURCE = Phase("Source", ("target_spec",))  # a model path, its options and target
GRAPH = Phase("Graph", SOURCE.needs + ("onnx_model",))
SHAPED = Phase("ShapedGraph", GRAPH.needs + ("inputs",))  # static input shapes
CALIBRATED = Phase("CalibratedGraph", SHAPED.needs + ("table",))
RELAX = Phase("RelaxModule", CALIBRATED.needs + ("relax_mod", "outputs"))
# verified: the op report, every MatMul int8. Not cumulative: from here on no stage reads the ONNX graph or the
# table, and a decoder-only LM (compiler/llm/build.py) enters here from its own front end, without either.
INTEGER = Phase("IntegerModule", ("target_spec", "inputs", "outputs", "relax_mod", "report"))
SCHEDULED = Phase("ScheduledModule", INTEGER.needs + ("lowered_mod",))
ARTIFACT = Phase("Artifact", SCHEDULED.needs + ("manifest", "executable"))
PHASES = (SOURCE, GRAPH, SHAPED, CALIBRATED, RELAX, INTEGER, SCHEDULED, ARTIFACT)
