"""Link: the integer graphs of a bundle's encoder and decoder into one Relax module whose functions are named
`encoder` and `decoder` (the VM entry points of the library), with the manifest entries that describe them.

Expects: one CompileState per graph after `verify` (an integer `main` each, no other functions yet: kernels
are added later by `schedule`, once for the linked module). Guarantees: a CompileState whose `relax_mod` holds
both functions (the reference interpreter runs either by name), whose `entries` give each one's inputs,
outputs, int8 crossing scales and index bounds, and whose report merges both graphs' reports.
"""

from __future__ import annotations

import base64
import os
from dataclasses import replace

import tvm
from tvm import relax

from compiler.artifact import EntrySpec, IndexBound
from compiler.calibrate.collect import index_bounds
from compiler.calibrate.table import CalibrationInfo
from compiler.errors import IntformerError
from compiler.report import CompileReport, GraphReport
from compiler.seq2seq.spec import Seq2SeqSpec
from compiler.state import CompileState

ENTRIES = ("encoder", "decoder")


def link_modules(mods: dict) -> tvm.IRModule:
    funcs = {}
    for name, mod in mods.items():
        others = [gv.name_hint for gv in mod.functions if gv.name_hint != "main"]
        if others:
            raise IntformerError(f"{name}: cannot link a module with functions besides main: {others}")
        funcs[relax.GlobalVar(name)] = mod["main"].with_attr("global_symbol", name)
    return tvm.IRModule(funcs)


def link_states(states: dict[str, CompileState], spec: Seq2SeqSpec, bundle: str) -> CompileState:
    entries = []
    for name in ENTRIES:
        st = states[name]
        quant = tuple(q for q in st.seq2seq.io_qparams
                      if q.name in {s.name for s in st.inputs} | {s.name for s in st.outputs})
        bounds = tuple(IndexBound(n, -rows, rows - 1) for n, rows in index_bounds(st.onnx_model).items())
        entries.append(EntrySpec(name, st.inputs, st.outputs, quant, bounds, st.model_sha256))
    spec_json = spec.to_json()
    if spec.vocab:
        with open(os.path.join(bundle, spec.vocab), "rb") as f:
            spec_json["vocab_base64"] = base64.b64encode(f.read()).decode("ascii")
    enc, dec = states["encoder"], states["decoder"]
    graphs = {n: states[n].report.summary() for n in ENTRIES}
    calibration = CalibrationInfo(enc.options.calibration_method, dec.table.source, dec.table.percentile,
                                  encoder_samples=enc.table.num_samples, decoder_samples=dec.table.num_samples)
    report = CompileReport.of(GraphReport.merge(graphs), graphs=tuple(graphs.items()), calibration=calibration)
    mod = link_modules({n: states[n].relax_mod for n in ENTRIES})
    parts = replace(enc.seq2seq, io_qparams=(), spec_json=spec_json)
    return replace(enc, model_path=bundle, relax_mod=mod, lowered_mod=None, report=report, seq2seq=parts,
                   entries=tuple(entries),
                   model_sha256=enc.model_sha256 + "+" + dec.model_sha256,
                   table_sha256=enc.table_sha256 + "+" + dec.table_sha256)
