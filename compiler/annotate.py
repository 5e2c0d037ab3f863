"""Annotate: place int8 quantize/dequantize pairs around every MatMul, from the calibration table.

Expects: a folded ONNX graph where every matrix product is a MatMul (Gemm already rewritten) and a
calibration table that covers the MatMuls' activation inputs and outputs.
Guarantees: each non-constant MatMul input passes through QuantizeLinear/DequantizeLinear (operand 0
asymmetric int8, operand 1 symmetric int8), each MatMul output is quantized to asymmetric int8 (after its bias
Add when a constant bias follows), each LayerNormalization output too, and constant operands stay float (the
Relax pass quantizes weights per output channel). These Q/DQ pairs carry the calibrated ranges to the integer
rewrite, which refines them (int16 where the range has outliers). The graph computes the fake-quantized
function that the integer rewrite then makes exact in integer arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.calibrate.table import CalibrationTable, TensorRange
from compiler.config import QParams
from compiler.errors import IntformerError

QMIN, QMAX = -128, 127
_EPS = 1e-12


def asymmetric_qparams(lo: float, hi: float) -> QParams:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (QMAX - QMIN), _EPS)
    zp = int(np.clip(round(QMIN - lo / scale), QMIN, QMAX))
    return QParams((float(np.float32(scale)),), zp)


def symmetric_qparams(lo: float, hi: float) -> QParams:
    a = max(abs(lo), abs(hi))
    return QParams((float(np.float32(max(a / QMAX, _EPS))),), 0)


def _bias_adds(g, consts: set[str]) -> dict[str, str]:
    """Add nodes that add a constant vector to a MatMul's result (its only consumer): name -> MatMul output.
    The integer rewrite folds such a bias into the int32 accumulator, so the output is quantized after it."""
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    mm_out = {n.output[0] for n in g.node if n.op_type == "MatMul"}
    out = {}
    for n in g.node:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        for a, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            if a in mm_out and b in consts and uses.get(a) == 1:
                out[n.name or n.output[0]] = a
                if not n.name:
                    n.name = n.output[0]
    return out


def insert_qdq(model: onnx.ModelProto, table: CalibrationTable,
               method: Callable[[TensorRange], tuple[float, float]]) -> tuple[onnx.ModelProto, int]:
    """Return the annotated model and the number of MatMuls annotated."""
    g = model.graph
    ranges = table.ranges()
    for name, (lo, hi) in table.input_ranges:  # float graph inputs read by a MatMul (a decoder's encoder keys)
        ranges.setdefault(name, TensorRange(lo, hi, lo, hi))
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}

    def qparams(tensor: str, symmetric: bool, node: str) -> QParams:
        r = ranges.get(tensor)
        if r is None:
            raise IntformerError(f"calibration table has no range for tensor '{tensor}' (MatMul node '{node}'): "
                                 "it was made for another model or input shape; recalibrate with --calibration-data")
        lo, hi = method(r)
        return symmetric_qparams(lo, hi) if symmetric else asymmetric_qparams(lo, hi)

    new_nodes: list = []
    shared: dict[tuple[str, bool], str] = {}
    count = 0

    def emit_qdq(src: str, dst_dq: str, qp: QParams, base: str) -> None:
        s_name, z_name = f"{base}/scale", f"{base}/zero_point"
        g.initializer.append(numpy_helper.from_array(np.array(qp.scale[0], np.float32), s_name))
        g.initializer.append(numpy_helper.from_array(np.array(qp.zero_point, np.int8), z_name))
        new_nodes.append(helper.make_node("QuantizeLinear", [src, s_name, z_name], [f"{base}/q"], name=f"{base}/Q"))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}/q", s_name, z_name], [dst_dq],
                                          name=f"{base}/DQ"))

    def quantize_output(node, name: str) -> None:
        """The node now writes `<out>/raw`; Q/DQ turn it back into `<out>` for every consumer."""
        out = node.output[0]
        qp = qparams(out, False, name)
        node.output[0] = f"{out}/raw"
        new_nodes.append(node)
        emit_qdq(f"{out}/raw", out, qp, f"{out}/qdq_out")

    bias_add = _bias_adds(g, consts)
    biased = set(bias_add.values())
    for node in g.node:
        if node.op_type == "LayerNormalization" or (node.op_type == "Add" and node.name in bias_add):
            quantize_output(node, node.name or node.output[0])
            continue
        if node.op_type != "MatMul":
            new_nodes.append(node)
            continue
        count += 1
        name = node.name or node.output[0]
        for idx in (0, 1):
            src = node.input[idx]
            if src in consts:
                continue
            key = (src, idx == 1)
            if key not in shared:
                base = f"{src}/qdq_{'sym' if idx == 1 else 'asym'}"
                emit_qdq(src, f"{base}/dq", qparams(src, idx == 1, name), base)
                shared[key] = f"{base}/dq"
            node.input[idx] = shared[key]
        if node.output[0] in biased:
            new_nodes.append(node)  # quantized after its bias Add
        else:
            quantize_output(node, name)
    del g.node[:]
    g.node.extend(new_nodes)
    return model, count
