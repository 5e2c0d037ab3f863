"""Lower integer matmuls onto the project's scheduled int8 kernels (schedules/int8_matmul.py).

Expects: the integer graph after verification: `relax.matmul(int8, int8, out_dtype="int32")` calls, the
right operand either a constant weight or an activation.
Guarantees: each becomes a call to a PrimFunc with a deterministic default schedule for the target (packed
weights and the dot-product intrinsic where the target has one: x86 VNNI / AVX2, aarch64 SMMLA / SDOT / NEON),
computing the same int32 values bit for bit (tests/schedules). Targets whose kernel is "generic" (no intrinsic
of the project's, e.g. 32-bit ARM) keep plain matmuls. Runs after the report and the reference are taken, so
both still see plain matmuls, and after FuseGemmEpilogue, which already lowered the constant-weight matmuls
whose requantize chain it fused (fuse_gemm_epilogue.py). With ``active_rows`` (a ranged library: function name
-> (its length B, an int64 parameter of it holding the input's length)), a GEMM of B rows in that function
computes only the input's rows (schedules/int8_matmul.with_active_rows; the rest are zeros).
"""

from __future__ import annotations

import tvm

from compiler.ranged import length_arg
from compiler.tvm_compat import PyExprMutator, constant_value, expr_functor_mutator, mutate_functions, tensor_info
from schedules.int8_matmul import emit_int8_batch_matmul, emit_int8_matmul, select_kernel

_MATMUL = tvm.ir.Op.get("relax.matmul")


@expr_functor_mutator
class _Lower(PyExprMutator):
    def __init__(self, mod, target, rows_free: bool):
        super().__init__(mod)
        self.target = target
        self.rows_free = rows_free
        self.current = None  # (B, rows var) of the function being visited, if it has them
        self.has_kernel = select_kernel(target).isa != "generic"
        self.lowered = 0

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op != _MATMUL or str(call.attrs.out_dtype) != "int32":
            return call
        a, b = call.args
        (a_dt, a_shape), (b_dt, b_shape) = tensor_info(a), tensor_info(b)
        if a_dt != "int8" or b_dt != "int8" or a_shape is None or b_shape is None:
            return call
        if not self.has_kernel:
            return call  # no kernel of the project's for this ISA (e.g. 32-bit ARM): LLVM's own code
        w = constant_value(b)
        self.lowered += 1
        if w is not None and w.ndim == 2:
            return emit_int8_matmul(self.builder_, a, w, self.target, rows_free=self.rows_free,
                                    active=length_arg(self.current, a_shape))
        if w is None and len(a_shape) == len(b_shape) and len(a_shape) >= 2 and a_shape[:-2] == b_shape[:-2]:
            return emit_int8_batch_matmul(self.builder_, a, b, self.target, self.rows_free)
        self.lowered -= 1
        return call


@tvm.transform.module_pass(opt_level=0, name="IntformerLowerIntMatmul")
class LowerIntMatmul:
    """``rows_free``: kernels whose schedule does not depend on the row count (a library of several lengths);
    ``active_rows``: see the module's docstring."""

    def __init__(self, target, rows_free: bool = False, active_rows: dict | None = None):
        self.target = target
        self.rows_free = rows_free
        self.active_rows = active_rows or {}
        self.lowered = 0

    def transform_module(self, mod, ctx):
        mutator = _Lower(mod, self.target, self.rows_free)

        def on_function(name):
            mutator.current = self.active_rows.get(name)

        mod = mutate_functions(mutator, mod, on_function)  # with the kernels' PrimFuncs added
        self.lowered = mutator.lowered
        return mod
