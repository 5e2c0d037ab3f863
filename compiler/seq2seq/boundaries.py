"""The tensors that cross between the two graphs of a bundle (encoder outputs read by the decoder) or between
decoding steps (states) travel as int8: one symmetric scale per tensor, agreed by both sides, so that no float
is needed between the token ids in and the log-probabilities out, and an all-zeros int8 state is the real zero
state the decoder starts from.

`crossing_qparams` picks the scales from the producers' calibration ranges; `quantize_io` rewrites an
annotated ONNX graph so that those inputs are int8 (followed by DequantizeLinear) and those outputs int8
(after QuantizeLinear): the integer passes then carry them as integers like any other Q/DQ pair.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.calibrate.table import CalibrationTable, TensorRange
from compiler.errors import IntformerError
from compiler.seq2seq.spec import Seq2SeqSpec

DTYPE = "int8"
QMAX = 127


def crossing_qparams(spec: Seq2SeqSpec, encoder: CalibrationTable, decoder: CalibrationTable,
                     method: Callable[[TensorRange], tuple[float, float]]) -> dict[str, tuple[float, int]]:
    """name -> (scale, 0) for every encoder output the decoder reads and every state (input and output name)."""
    out: dict[str, tuple[float, int]] = {}
    produced = [(n, encoder, n) for n in spec.encoder_outputs] + [(s.output, decoder, s.input) for s in spec.states]
    for name, table, other in produced:
        r = table.ranges().get(name)
        if r is None:
            raise IntformerError(f"calibration saw no values of '{name}' (is it a float output of its graph?)")
        lo, hi = method(r)
        scale = float(np.float32(max(abs(lo), abs(hi), 1e-8) / QMAX))
        out[name] = out[other] = (scale, 0)
    return out


def quantize_io(model: onnx.ModelProto, qparams: dict[str, tuple[float, int]]) -> onnx.ModelProto:
    """Graph inputs and outputs named in `qparams` become int8 (a new model; the input is not changed)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    first, last = [], []
    for vi in list(g.input) + list(g.output):
        if vi.name not in qparams:
            continue
        is_input = any(vi is x for x in g.input)
        scale, zp = qparams[vi.name]
        s_name, z_name = f"{vi.name}/io_scale", f"{vi.name}/io_zero_point"
        if s_name not in {i.name for i in g.initializer}:
            g.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), s_name))
            g.initializer.append(numpy_helper.from_array(np.array(zp, np.int8), z_name))
        inner = f"{vi.name}/io_float"
        for node in g.node:
            for i, x in enumerate(node.input):
                if x == vi.name:
                    node.input[i] = inner
            if not is_input:
                for i, x in enumerate(node.output):
                    if x == vi.name:
                        node.output[i] = inner
        if is_input:
            first.append(helper.make_node("DequantizeLinear", [vi.name, s_name, z_name], [inner],
                                          name=f"{vi.name}/io_DQ"))
        else:
            last.append(helper.make_node("QuantizeLinear", [inner, s_name, z_name], [vi.name], name=f"{vi.name}/io_Q"))
        vi.type.tensor_type.elem_type = onnx.TensorProto.INT8
    nodes = first + list(g.node) + last
    del g.node[:]
    g.node.extend(nodes)
    return m
