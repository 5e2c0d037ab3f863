"""Fold the exporter's shape arithmetic and canonicalize Gemm, so that the Relax importer sees a plain graph.

Expects: an ONNX model whose inputs all have static shapes.
Guarantees: constant subgraphs are folded (onnxruntime basic optimizations: standard ONNX ops only),
every Gemm is a MatMul (plus an Add of its bias), every Clip with constant bounds is a Max and/or a Min (the
importer would write a clip with one bound as a TIR call that the integer rules cannot read), and the graph still
computes the same function.
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
            raise IntformerError(_too_long(model) or
                                 f"onnxruntime cannot load the model to fold its constants: {first}") from None
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


def _constant(g, name: str, inits: dict, consts: dict):
    """The value of a graph constant (initializer or Constant node output), or None."""
    if name in inits:
        return numpy_helper.to_array(inits[name])
    return consts.get(name)


def clip_to_max_min(model: onnx.ModelProto) -> onnx.ModelProto:
    """Clip(x, lo, hi) with constant (or absent) bounds -> Max(x, lo) -> Min(., hi): the same values, NaN
    propagated as Clip does."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    out = []
    for node in g.node:
        ins = list(node.input) + ["", ""]
        if node.op_type != "Clip" or not node.input:
            out.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bounds = []
        for op, name, attr in (("Max", ins[1], "min"), ("Min", ins[2], "max")):
            v = _constant(g, name, inits, consts) if name else attrs.get(attr)
            if name and v is None:
                bounds = None
                break
            if v is not None:
                bounds.append((op, np.asarray(v, np.float32).reshape(())))
        if bounds is None:
            out.append(node)
            continue
        cur, base = node.input[0], node.name or node.output[0]
        if not bounds:
            out.append(helper.make_node("Identity", [cur], [node.output[0]], name=base))
            continue
        for k, (op, v) in enumerate(bounds):
            cname = f"{base}/{op.lower()}_bound"
            g.initializer.append(numpy_helper.from_array(v, cname))
            nxt = node.output[0] if k == len(bounds) - 1 else f"{base}/{op.lower()}_out"
            out.append(helper.make_node(op, [cur, cname], [nxt], name=f"{base}/{op.lower()}"))
            cur = nxt
    del g.node[:]
    g.node.extend(out)
    return model


def remove_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {i for n in model.graph.node for i in n.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    return remove_unused_initializers(clip_to_max_min(gemm_to_matmul(fold_constants(model))))


def _too_long(model: onnx.ModelProto) -> str:
    """Why folding failed when an input is longer than the model's position table (e.g. BERT's 512
    positions): its largest embedding table indexed by computed positions, not by an input's values.
    '' if that is not it."""
    inits = {i.name: i for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    tables = [(inits[n.input[0]].dims[0], n.input[0]) for n in model.graph.node
              if n.op_type == "Gather" and len(n.input) > 1 and n.input[0] in inits and n.input[1] not in inputs]
    if not tables:
        return ""
    rows, table = max(tables)
    for inp in model.graph.input:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if inp.name not in inits and len(dims) > 1 and max(dims[1:]) > rows:
            given = "x".join(map(str, dims))
            fixed = "x".join(map(str, dims[:1] + [min(d, rows) for d in dims[1:]]))
            return (f"--input-shape {inp.name}={given}: the model's position table {table} has {rows} rows, so "
                    f"it takes at most {rows} tokens; use e.g. --input-shape {inp.name}={fixed}")
    return ""
