"""Check that every ONNX op of a model has a Relax converter: one error listing them all."""

from __future__ import annotations

from collections import defaultdict

import onnx

from compiler.errors import IntformerError


def _is_standard(node) -> bool:
    return node.domain in ("", "ai.onnx") and onnx.defs.has(node.op_type)


def check_supported_ops(model: onnx.ModelProto, source: str = "model", before_folding: bool = False) -> None:
    """Raise one error naming every unsupported op and its nodes.

    `before_folding`: standard ONNX ops pass too (constant folding may remove them); run this check again
    on the folded graph.
    """
    from compiler.tvm_compat import onnx_supported_ops

    supported = onnx_supported_ops()
    missing: dict[str, list[str]] = defaultdict(list)
    for i, node in enumerate(model.graph.node):
        ok = node.domain in ("", "ai.onnx") and node.op_type in supported
        if not ok and not (before_folding and _is_standard(node)):
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            missing[key].append(node.name or f"#{i} (unnamed, output {node.output[0]})")
    if missing:
        parts = []
        for op, names in sorted(missing.items()):
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} nodes)" if len(names) > 5 else "")
            parts.append(f"{op} [{shown}]")
        raise IntformerError(f"{source}: unsupported ONNX op(s): {'; '.join(parts)}. "
                             "Re-export without them (e.g. a lower opset or without fused contrib ops) "
                             "or file an issue naming the op")
