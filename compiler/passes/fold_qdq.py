"""Fold quantize(dequantize(x)) with identical parameters into x.

Expects: a Relax module with relax.quantize / relax.dequantize calls whose scales and zero points are constants.
Guarantees: every `quantize(dequantize(x, s, z), s, z)` to the same dtype is replaced by `x` (an exact identity:
the int8 values round-trip), so an int8 tensor that feeds several integer ops is not re-quantized through float.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from compiler.tvm_compat import PyExprMutator, constant_value, expr_functor_mutator, mutate_functions, tensor_info

_QUANTIZE = tvm.ir.Op.get("relax.quantize")
_DEQUANTIZE = tvm.ir.Op.get("relax.dequantize")


def _same_const(x, y) -> bool:
    a, b = constant_value(x), constant_value(y)
    return a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b)


@expr_functor_mutator
class _FoldQDQ(PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op != _QUANTIZE or not isinstance(call.args[0], relax.Var):
            return call
        dq = self.lookup_binding(call.args[0])
        if not (isinstance(dq, relax.Call) and dq.op == _DEQUANTIZE):
            return call
        src_dtype, _ = tensor_info(dq.args[0])
        if src_dtype != str(call.attrs.out_dtype):
            return call
        if _same_const(dq.args[1], call.args[1]) and _same_const(dq.args[2], call.args[2]):
            return dq.args[0]
        return call


@tvm.transform.module_pass(opt_level=0, name="IntformerFoldQDQ")
class FoldQDQ:
    def transform_module(self, mod, ctx):
        return mutate_functions(_FoldQDQ(mod), mod)
