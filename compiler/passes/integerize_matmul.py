"""Integerize MatMuls: dequantize(quantize(matmul(dequantize(a), dequantize(b) | W) [+ bias])) -> integer matmul.

Expects: a Relax module imported from the annotated ONNX graph, where every matmul's activation operands come
from `relax.dequantize` of int8 tensors, constant operands are float constants, and the matmul result goes
through a `relax.quantize` -> `relax.dequantize` pair that carries its calibrated int8 range.
Guarantees: each such matmul becomes `matmul(int8, int8, out_dtype=int32)` with the zero-point terms folded
into int32 constants (or exact runtime corrections when both operands vary), a constant bias vector added
in int32 at the accumulator's scale, followed by a fixed-point
requantization (int64 multiply by an int32 mantissa, rounding shift, clip) to int16 on the output range
(16x wider where the function returns the result; int32, 2**23 times finer than int8, where only adds read the
result of a constant-weight matmul: the residual stream), then a dequantize for the float ops that follow
(scale propagation turns those into integer arithmetic).
Constant weights are quantized symmetric int8 per output channel. With ``row_scales`` (`--token-scales`), the
activation of a constant-weight matmul that is not a normalization's output (a LayerNorm's range per token is set
by gamma and beta; an activation's or an attention context's is not) is instead carried as int16 codes of
TOKEN_HEADROOM times its calibrated range and quantized to int8 per row (token) at run time with a power-of-two
step and a zero point of its own (intmath.row_quantize); the requantization adds each row's zero point times the
weights' column sums and shifts each row by its own amount (intmath.requantize_rows), the bias added at the
output scale. Nothing else changes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from compiler.intmath.integer_ops import row_multipliers
from compiler.passes.intops import (
    emit_qmatmul,
    emit_requantize,
    emit_requantize_rows,
    emit_row_quantize,
    quantize_weight,
)
from compiler.passes.intrepr import scalar as _scalar
from compiler.tvm_compat import (
    PyExprMutator,
    const,
    constant_value,
    expr_functor_mutator,
    mutate_functions,
    tensor_info,
)

_QUANTIZE = tvm.ir.Op.get("relax.quantize")
_DEQUANTIZE = tvm.ir.Op.get("relax.dequantize")
_MATMUL = tvm.ir.Op.get("relax.matmul")
_ADD = tvm.ir.Op.get("relax.add")

# Matmul results are requantized to int16 on the calibrated int8 range refined 256 times: the FFN outputs of
# BERT-family models carry outlier dimensions (Bondarenko et al. 2021) that per-tensor int8 destroys
# (MiniLM embeddings: mean cosine 0.86 with int8 outputs, see the README's accuracy table).
OUT_DTYPE = "int16"
OUT_REFINE = 256
# A matmul whose result only adds read (the residual stream before a LayerNorm) is requantized to
# int32 on the same range, 2**23 times finer than int8: its consumer computes in int64 anyway, and BERT-family
# residual streams carry outlier dimensions (MiniLM: one at 221 where the others stay below 10) that leave an
# int16 grid too coarse for every other dimension (the feed-forward block of layer 0 lost 0.4% cosine there).
# Per-token activation scales (row_scales): the int16 codes span TOKEN_HEADROOM times the calibrated range, so a
# token far outside it (short texts: a word whose feed-forward activations reach 3.4x what long calibration texts
# gave) is not clipped, and a token inside it still gets steps no coarser than the static int8 scale's.
TOKEN_HEADROOM = 16
WIDE_DTYPE = "int32"
WIDE_REFINE = 2 ** 23
OUTPUT_HEADROOM = 16  # a model output (logits) keeps 16x its calibrated range (steps still 16x finer than int8):
# inputs unlike the calibration text must not saturate what the user reads
_NORMS = {"relax.nn.layer_norm", "relax.nn.rms_norm"}
_LAYOUT = {"relax.reshape", "relax.squeeze", "relax.expand_dims", "relax.permute_dims", "relax.strided_slice"}


@expr_functor_mutator
class _Integerize(PyExprMutator):
    def __init__(self, mod, row_scales: bool = False):
        super().__init__(mod)
        self.rewritten = 0
        self.row_scaled = 0
        self.row_scales = row_scales
        self.outputs = _output_calls(mod)
        self.added = _added_calls(mod)

    def _producer(self, expr, op):
        if isinstance(expr, relax.Var):
            value = self.lookup_binding(expr)
            if isinstance(value, relax.Call) and value.op == op:
                return value
        return None

    def _operand(self, expr):
        """(int8 expr, scale (scalar or per-channel array), zero point, constant int8 value or None)."""
        dq = self._producer(expr, _DEQUANTIZE)
        if dq is not None:
            s, z = _scalar(dq.args[1]), _scalar(dq.args[2])
            dtype, _ = tensor_info(dq.args[0])
            if s is None or z is None or dtype != "int8":
                return None
            return dq.args[0], np.float64(s), int(z), constant_value(dq.args[0])
        w = constant_value(expr)
        if w is not None and w.dtype == np.float32 and w.ndim >= 2:
            wq, ws = quantize_weight(w)
            return const(wq, "int8"), ws.astype(np.float64), 0, wq
        return None

    def visit_call_(self, call):
        refine = OUT_REFINE // OUTPUT_HEADROOM if call in self.outputs else OUT_REFINE
        out_dtype = OUT_DTYPE
        wide = call in self.added and call not in self.outputs
        call = self.visit_expr_post_order(call)
        if call.op != _DEQUANTIZE:
            return call
        q = self._producer(call.args[0], _QUANTIZE)
        if q is None or str(q.attrs.out_dtype) != "int8":
            return call
        mm = self._producer(q.args[0], _MATMUL)
        bias = None
        if mm is None:
            add = self._producer(q.args[0], _ADD)
            if add is not None:
                for x, c in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
                    cv = constant_value(c)
                    if cv is not None and self._producer(x, _MATMUL) is not None:
                        mm, bias = self._producer(x, _MATMUL), cv
                        break
        so, zo = _scalar(q.args[1]), _scalar(q.args[2])
        if mm is None or so is None or zo is None:
            return call
        a = self._operand(mm.args[0])
        b = self._operand(mm.args[1])
        if a is None or b is None or np.ndim(a[1]) != 0:
            return call
        (a_q, sa, za, a_val), (b_q, sb, zb, b_val) = a, b
        if a_val is not None and b_val is None:
            return call  # a constant left operand: rare; kept as it is
        _, a_shape = tensor_info(a_q)
        _, b_shape = tensor_info(b_q)
        if a_shape is None or b_shape is None or len(a_shape) < 2 or len(b_shape) < 2:
            return call
        if wide and b_val is not None and np.max(sa * np.asarray(sb) * WIDE_REFINE / float(np.float32(so))) < 2 ** 29:
            refine, out_dtype = WIDE_REFINE, WIDE_DTYPE  # a projection into the residual stream (the ratio of
            # scales stays inside the fixed-point multiplier's range; else the int16 grid as for any matmul)
        bb = self.builder_
        n = b_shape[-1]
        if bias is not None:
            if bias.size not in (1, n) or (bias.size == n and bias.shape[-1] != n):
                return call  # not a per-output-channel vector: the matmul stays as it was
            bias = np.broadcast_to(bias.reshape(-1), (n,))
        # The annotation's int8 grid, refined OUT_REFINE times: same range, finer steps (outlier-safe).
        s_out = np.float64(np.float32(so)) / refine
        z_out = int(zo) * refine
        rows = self._row_scaled(mm.args[0], sa, za, sb, zb, b_val, bias, s_out, z_out, b_q, out_dtype)
        if rows is not None:
            self.rewritten += 1
            self.row_scaled += 1
            return relax.op.dequantize(rows, const(s_out, "float32"), const(z_out, out_dtype), axis=-1,
                                       out_dtype="float32")
        acc = emit_qmatmul(bb, a_q, za, b_q, zb, b_val)
        if bias is not None:
            acc_scale = sa * np.asarray(sb, dtype=np.float64)
            q_bias = np.clip(np.round(bias.astype(np.float64) / acc_scale), -(2 ** 31), 2 ** 31 - 1)
            acc = bb.emit(relax.op.add(acc, const(q_bias.astype(np.int64), "int32")))
        self.rewritten += 1
        y = emit_requantize(bb, acc, sa * np.asarray(sb) / s_out, z_out, out_dtype)
        return relax.op.dequantize(y, const(s_out, "float32"), const(z_out, out_dtype), axis=-1,
                                   out_dtype="float32")


    def _normalized(self, expr) -> bool:
        """A LayerNorm / RMSNorm output (through smoothing's constant multiply, Q/DQ pairs and layout ops): its
        per-token range is set by gamma and beta, so one calibrated scale serves every token: no row scale."""
        for _ in range(16):
            if not isinstance(expr, relax.Var):
                return False
            v = self.lookup_binding(expr)
            if isinstance(v, relax.Var):
                expr = v
                continue
            if not isinstance(v, relax.Call) or not isinstance(v.op, tvm.ir.Op):
                return False
            if v.op.name in _NORMS:
                return True
            if v.op.name in _LAYOUT or v.op.name in ("relax.quantize", "relax.dequantize"):
                expr = v.args[0]
            elif v.op.name == "relax.multiply" and constant_value(v.args[1]) is not None:
                expr = v.args[0]
            else:
                return False
        return False

    def _row_scaled(self, a_expr, sa, za, sb, zb, b_val, bias, s_out, z_out, b_q, out_dtype):
        """Per-token activation scales: the activation of a constant-weight matmul as int16 codes of the
        calibrated range (symmetric), quantized to int8 row by row at run time (intmath.row_quantize: a shift and
        a zero point per row), the accumulators requantized with each row's zero point and shift
        (intmath.requantize_rows). None if not applicable."""
        if not self.row_scales or b_val is None or b_val.ndim != 2 or zb != 0:
            return None
        q = self._producer(self._producer(a_expr, _DEQUANTIZE).args[0], _QUANTIZE)
        if q is None or self._normalized(q.args[0]):
            return None
        s16 = max(abs(-128 - za), abs(127 - za)) * float(sa) * TOKEN_HEADROOM / 32767.0
        mults = row_multipliers(s16 * np.asarray(sb, np.float64) / s_out, int(b_val.shape[0]))
        if mults is None:
            return None
        bb = self.builder_
        x16 = bb.emit(relax.op.quantize(q.args[0], const(s16, "float32"), const(0, "int16"), axis=-1,
                                        out_dtype="int16"))
        a_q, k, z = emit_row_quantize(bb, x16)
        acc = bb.emit(relax.op.matmul(a_q, b_q, out_dtype="int32"))
        n = b_val.shape[-1]
        b_out = np.zeros(n) if bias is None else np.round(bias.astype(np.float64) / s_out)
        b_out = np.clip(b_out, -(2 ** 40), 2 ** 40).astype(np.int64)
        colsum = b_val.astype(np.int64).sum(axis=0)
        return emit_requantize_rows(bb, acc, *mults, k, z, colsum, b_out, z_out, out_dtype)


def _added_calls(mod) -> set:
    """The calls (a matmul result's dequantize) whose value only adds read, directly or through layout ops: a
    projection into the residual stream (not, say, the input of a tanh-GELU, which an add reads among others)."""
    out = set()
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        values = {b.var: b.value for block in func.body.blocks for b in block.bindings}
        users: dict = {}
        for var, v in values.items():
            for a in relax.analysis.free_vars(v) if isinstance(v, relax.Expr) else ():
                users.setdefault(a, []).append(var)
        returned = set(relax.analysis.free_vars(func.body.body))

        def readers(var, depth=0, values=values, users=users, returned=returned):
            """The non-layout calls that read var (through layout ops and aliases); None if the function
            returns it."""
            if var in returned or depth > 16:
                return None
            found = []
            for u in users.get(var, []):
                v = values[u]
                if isinstance(v, relax.Var) or (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)
                                                and v.op.name in _LAYOUT):
                    more = readers(u, depth + 1, values, users, returned)
                    if more is None:
                        return None
                    found += more
                else:
                    found.append(v)
            return found

        for var, v in values.items():
            if isinstance(v, relax.Call) and v.op == _DEQUANTIZE:
                rd = readers(var)
                if rd and all(isinstance(r, relax.Call) and r.op == _ADD for r in rd):
                    out.add(v)
    return out


def _output_calls(mod) -> set:
    """The calls whose values a function returns, directly or through layout ops."""
    out = set()
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        values = {b.var: b.value for block in func.body.blocks for b in block.bindings}
        ret = func.body.body
        todo = list(ret.fields) if isinstance(ret, relax.Tuple) else [ret]
        while todo:
            v = values.get(todo.pop())
            if isinstance(v, relax.Var):
                todo.append(v)
            elif isinstance(v, relax.Call):
                out.add(v)
                if isinstance(v.op, tvm.ir.Op) and v.op.name in _LAYOUT:
                    todo.append(v.args[0])
    return out


@tvm.transform.module_pass(opt_level=0, name="IntformerIntegerizeMatmul")
class IntegerizeMatmul:
    def __init__(self, row_scales: bool = False):
        self.rewritten = 0
        self.row_scaled = 0
        self.row_scales = row_scales

    def transform_module(self, mod, ctx):
        mutator = _Integerize(mod, self.row_scales)
        mod = mutate_functions(mutator, mod)
        self.rewritten = mutator.rewritten
        self.row_scaled = mutator.row_scaled
        return mod
