"""The phases of compiler/state.py and the pipeline's check of them: each stage says the phase it takes and the
phase it gives, and the runner fails at the stage that is run out of place or forgets what it promised."""

from dataclasses import fields

import pytest

from compiler import pipeline
from compiler.config import CompileOptions
from compiler.state import GRAPH, INTEGER, PHASES, SOURCE, CompileState


def test_phases_name_fields_of_the_state_and_grow():
    """Each phase needs more than the one before, except that from IntegerModule on the ONNX graph and the
    calibration table are no longer needed (no later stage reads them; a decoder-only LM enters there without)."""
    names = {f.name for f in fields(CompileState)}
    for before, after in zip(PHASES, PHASES[1:]):
        assert set(after.needs) <= names
        kept = set(before.needs) - ({"onnx_model", "table"} if after is INTEGER else set())
        assert kept < set(after.needs)
    assert not {"onnx_model", "table"} & set(INTEGER.needs)


def test_the_stage_list_chains_its_phases():
    stages = pipeline._stages()
    assert stages[0].takes == SOURCE
    for a, b in zip(stages, stages[1:]):
        assert set(b.takes.needs) <= set(a.gives.needs), f"{b.name} takes more than {a.name} gives"


def test_a_stage_run_out_of_place_fails_naming_what_is_missing():
    verify = next(s for s in pipeline._stages() if s.name == "verify")
    st = CompileState(model_path="m.onnx", options=CompileOptions(), target_spec=object())
    with pytest.raises(AssertionError, match="'verify' takes a RelaxModule.*onnx_model"):
        pipeline._run(st, [verify])


def test_a_stage_that_does_not_give_its_phase_fails():
    st = CompileState(model_path="m.onnx", options=CompileOptions(), target_spec=object())
    lazy = pipeline.Stage("lazy", lambda s: s, SOURCE, GRAPH)
    with pytest.raises(AssertionError, match="'lazy' gives a Graph.*onnx_model"):
        pipeline._run(st, [lazy])
