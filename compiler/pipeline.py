"""The compile pipeline: one flat, named list of stages, read top to bottom.

Each stage takes the frozen `CompileState` and returns a new one (dataclasses.replace). With
`CompileOptions.dump_ir`, the state's graph is written after every stage, so a wrong number can be chased
stage by stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import onnx

from compiler.calibrate.table import CalibrationTable
from compiler.config import CompileOptions, TensorSpec
from compiler.progress import status


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
    lowered_mod: Any = None  # the same graph with matmuls on scheduled kernels (what is built)
    report: dict = field(default_factory=dict)
    target_spec: Any = None  # targets.TargetSpec, resolved before the first stage
    executable: Any = None
    manifest: Any = None


def _stages() -> list[tuple[str, Callable[[CompileState], CompileState]]]:
    from compiler import stages as s

    return [
        ("load", s.load),                  # read + check the ONNX file
        ("pin_shapes", s.pin_shapes),      # static input shapes from the model or --input-shape
        ("check_ops", s.check_ops_before_folding),  # custom/unknown ops: one error listing all
        ("simplify", s.simplify),          # fold shape arithmetic, Gemm -> MatMul
        ("check_import", s.check_ops),     # every remaining op has a Relax converter
        ("calibrate", s.calibrate),        # ranges from --calibration-data, a saved table, or synthetic inputs
        ("smooth", s.smooth),              # per-channel activation ranges moved into the weights
        ("annotate", s.annotate),          # int8 Q/DQ around every MatMul from the ranges
        ("import", s.import_relax),        # ONNX -> Relax
        ("integerize", s.integerize),      # Relax passes: integer matmuls + fixed-point requantize
        ("verify", s.verify),              # op/dtype report; every MatMul int8
        ("schedule", s.schedule),          # int8 matmuls -> scheduled kernels (VNNI where the target has it)
        ("build", s.build),                # kernels + VM plan + int8 constants for the target
    ]


def stage_names() -> list[str]:
    return [name for name, _ in _stages()]


def run_pipeline(model_path: str, options: CompileOptions, until: Optional[str] = None) -> CompileState:
    """Run the stages in order; ``until``: stop after that stage (e.g. "schedule": what `tune` tunes)."""
    from targets import resolve_target
    from targets.toolchain import require_toolchain

    spec = resolve_target(options.target)
    require_toolchain(spec)  # before the stages: a missing cross compiler fails now, not after the build
    state = CompileState(model_path=model_path, options=options, target_spec=spec)
    stages = _stages()
    for i, (name, stage) in enumerate(stages):
        status(f"[{i + 1}/{len(stages)}] {name}")
        state = stage(state)
        _dump(state, i, name)
        if name == until:
            break
    return state


def _dump(state: CompileState, index: int, name: str) -> None:
    out = state.options.dump_ir
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, f"{index:02d}_{name}")
    mod = state.lowered_mod if state.lowered_mod is not None else state.relax_mod
    if mod is not None and name not in ("build",):
        with open(base + ".relax.py", "w") as f:
            f.write(mod.script(show_meta=False))
    elif state.onnx_model is not None and state.relax_mod is None:
        with open(base + ".onnx.txt", "w") as f:
            f.write(onnx.helper.printable_graph(state.onnx_model.graph))


__all__ = ["CompileState", "run_pipeline", "stage_names", "replace"]
