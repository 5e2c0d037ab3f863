"""Fold the exporter's shape arithmetic and canonicalize Gemm, so that the Relax importer sees a plain graph.

Expects: an ONNX model whose inputs all have static shapes.
Guarantees: constant subgraphs are folded (onnxruntime basic optimizations: standard ONNX ops only),
every Gemm is a MatMul (plus an Add of its bias), and the graph still computes the same function.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.errors import IntformerError


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnxruntime's basic (standard-op, semantics-preserving) graph optimizations offline."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="intformer-fold-") as tmp:
        src = os.path.join(tmp, "in.onnx")
        dst = os.path.join(tmp, "out.onnx")
        large = model.ByteSize() > (1 << 30)
        onnx.save(model, src, save_as_external_data=large)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = dst
        if large:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "out.data")
        so.log_severity_level = 3
        try:
            ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            first = str(e).strip().splitlines()[0]
            raise IntformerError(f"onnxruntime cannot load the model to fold its constants: {first}") from None
        folded = onnx.load(dst, load_external_data=True)
    return folded


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every Gemm as MatMul(A', B') [* alpha] [+ beta * C], transposing constant operands offline."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    for node in g.node:
        if node.op_type != "Gemm":
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        base = node.name or node.output[0]
        if attrs.get("transA", 0):
            new_nodes.append(helper.make_node("Transpose", [a], [f"{base}/At"], name=f"{base}/transA", perm=[1, 0]))
            a = f"{base}/At"
        if attrs.get("transB", 0):
            if b in inits:
                w = numpy_helper.to_array(inits[b]).T.copy()
                name = f"{b}__T"
                g.initializer.append(numpy_helper.from_array(w, name))
                inits[name] = g.initializer[-1]
                b = name
            else:
                new_nodes.append(helper.make_node("Transpose", [b], [f"{base}/Bt"], name=f"{base}/transB", perm=[1, 0]))
                b = f"{base}/Bt"
        out = node.output[0]
        mm_out = f"{base}/MatMul_out" if (c or alpha != 1.0) else out
        new_nodes.append(helper.make_node("MatMul", [a, b], [mm_out], name=base))
        cur = mm_out
        if alpha != 1.0:
            sname = f"{base}/alpha"
            g.initializer.append(numpy_helper.from_array(np.array(alpha, np.float32), sname))
            nxt = f"{base}/scaled" if c else out
            new_nodes.append(helper.make_node("Mul", [cur, sname], [nxt], name=f"{base}/mul_alpha"))
            cur = nxt
        if c:
            if beta != 1.0:
                if c in inits:
                    cv = numpy_helper.to_array(inits[c]) * np.float32(beta)
                    c2 = f"{c}__beta"
                    g.initializer.append(numpy_helper.from_array(cv.astype(np.float32), c2))
                    c = c2
                else:
                    bname = f"{base}/beta"
                    g.initializer.append(numpy_helper.from_array(np.array(beta, np.float32), bname))
                    new_nodes.append(helper.make_node("Mul", [c, bname], [f"{base}/C_beta"], name=f"{base}/mul_beta"))
                    c = f"{base}/C_beta"
            new_nodes.append(helper.make_node("Add", [cur, c], [out], name=f"{base}/bias"))
    del g.node[:]
    g.node.extend(new_nodes)
    return model


def remove_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {i for n in model.graph.node for i in n.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    return remove_unused_initializers(gemm_to_matmul(fold_constants(model)))
