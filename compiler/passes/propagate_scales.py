"""Scale Propagation (Lin et al. 2020): carry every tensor as (integer tensor, scale, zero point) through the
graph and replace the float islands between the integer matmuls with integer arithmetic.

Expects: the output of IntegerizeMatmul: integer matmuls whose results are `dequantize`d, Q/DQ pairs from the
annotation on MatMul inputs, bias-add and LayerNorm outputs, float Softmax/LayerNorm/elementwise ops between.
Guarantees: for every op with a rule in RULES, the op computes on the integer representation:
data movement and positive scalar multiplies change only the scale; adds rescale both sides to the finer scale
in int64; gathers read int8 copies of constant tables; attention masks become integer saturating adds;
Softmax and LayerNorm run the integer kernels of compiler/intmath/integer_ops.py; an elementwise float island
fed by one 8/16-bit tensor becomes an exact lookup table; `quantize` becomes a fixed-point requantization.
An op without a rule keeps computing in float on a dequantized input (the verify stage lists it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import numpy as np
import tvm
from tvm import relax

from compiler.intmath import integer_ops as io
from compiler.passes import head_rules, intops
from compiler.passes.intrepr import INT_RANGE, IntRepr, Probe, op as _op, scalar as _scalar
from compiler.tvm_compat import (
    PyExprMutator,
    const,
    constant_value,
    expr_functor_mutator,
    mutate_functions,
    tensor_info,
)

R = relax.op
TABLE_DTYPE = "int8"  # 1-D tables; 2-D (embedding) tables get a scale per row (intmath.row_scaled_table)
REFINE = 256  # annotated int8 ranges are refined to int16 (same range, 256x finer)
_MASK_SATURATION = 2 ** 31 - 1  # masked scores saturate here (softmax gives them probability 0)


@expr_functor_mutator
class _Propagate(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.rep: dict = {}
        self.softmax_of: dict = {}  # a softmax's fine codes -> its input's IntRepr
        self.origin: dict = {}  # integer expr -> how a head rule built it (compiler/passes/head_rules.py)
        self.island_ends: set = set()  # float elementwise calls no island or quantize reads (e.g. an output)
        self.at_end = False  # the call being rewritten is one of them: no consumer will tabulate it
        self.layer_norms: dict = {}  # the var of each LayerNorm of the float graph -> its index, in graph order
        self.probes: dict = {}  # LayerNorm index -> the IntRepr of its integer output (`eval --per-layer`)
        self.rewritten = 0

    # -- helpers -------------------------------------------------------------------------------------------
    def binding(self, expr):
        """The (new) value bound to a var, following var aliases."""
        seen = 0
        while isinstance(expr, relax.Var) and seen < 16:
            v = self.lookup_binding(expr)
            if v is None:
                return None
            if not isinstance(v, relax.Var):
                return v
            expr, seen = v, seen + 1
        return None

    def rep_of(self, expr) -> Optional[IntRepr]:
        seen = 0
        while isinstance(expr, relax.Var) and seen < 16:
            if expr in self.rep:
                return self.rep[expr]
            v = self.lookup_binding(expr)
            if not isinstance(v, relax.Var):
                return None
            expr, seen = v, seen + 1
        return None

    def emit(self, e):
        return self.builder_.emit(e)

    def materialize(self, r: IntRepr):
        """The float view of r (only for consumers without an integer rule; dead otherwise)."""
        zdt = r.dtype if r.dtype in ("int8", "uint8", "int16", "int32") else "int32"
        x = r.expr if zdt == r.dtype else self.emit(R.astype(r.expr, zdt))
        return R.dequantize(x, const(r.scale, "float32"), const(r.zp, zdt), axis=-1, out_dtype="float32")

    def requantize(self, r: IntRepr, scale: float, zp: int, dtype: str):
        if r.dtype == dtype and r.zp == zp and np.float32(r.scale) == np.float32(scale):
            return r.expr
        x = self.softmax_of.get(r.expr)
        if x is not None:  # the softmax again, straight into these codes (its fine form dies unless used)
            return intops.emit_softmax(self.builder_, x.expr, x.scale, out_scale=scale, out_zp=zp, out_dtype=dtype)
        return intops.emit_requantize(self.builder_, r.expr, r.scale / scale, zp, dtype, in_zp=r.zp)

    # -- the mutator ---------------------------------------------------------------------------------------
    def visit_call_(self, call):
        end = call in self.island_ends
        call = self.visit_expr_post_order(call)
        self.at_end = end
        if not isinstance(call.op, tvm.ir.Op):
            return call
        rule = RULES.get(call.op.name)
        out = None if rule is None else rule(self, call)
        if out is None and end:  # an elementwise island nothing quantizes (a sigmoid at the output): a table
            out = _island_rep(self, call)
        if out is None:
            return call
        if isinstance(out, relax.ShapeExpr):
            self.rewritten += 1
            return out
        want = tensor_info(call)[1]
        got = tensor_info(out.expr if isinstance(out, IntRepr) else out)[1]
        if want is None or got != want:
            return call  # a rule that would change the value's shape (broadcasting) does not apply
        if isinstance(out, IntRepr):
            self.rewritten += 1
            var = self.emit(self.materialize(out))
            self.rep[var] = out
            return var
        self.rewritten += 1
        return out  # an integer expression replacing an integer-typed call (quantize)


# ---- rules: op name -> (mutator, visited call) -> IntRepr | integer expr | None --------------------------
def _dequantize(m: _Propagate, call):
    s, z = _scalar(call.args[1]), _scalar(call.args[2])
    dtype, _ = tensor_info(call.args[0])
    if s is None or z is None or dtype not in INT_RANGE:
        return None
    produced = _dq_of_quantized(m, call, s, int(z))
    if produced is not None:
        return produced
    return IntRepr(call.args[0], s, int(z), dtype, INT_RANGE[dtype] * 2)


def _dq_of_quantized(m: _Propagate, call, s: float, z: int):
    """dequantize(quantize(f(x))) with f a LayerNorm or an elementwise island over one integer tensor:
    compute f in integer straight into int16 on the annotated range refined REFINE times."""
    q = m.binding(call.args[0])
    if not (isinstance(q, relax.Call) and q.op == _op("relax.quantize")):
        return None
    inner = m.binding(q.args[0])
    s16, z16 = s / REFINE, z * REFINE
    if isinstance(inner, relax.Call) and inner.op == _op("relax.nn.layer_norm"):
        x = m.rep_of(inner.args[0])
        gamma, beta = constant_value(inner.args[1]), constant_value(inner.args[2])
        axes = [int(a) for a in inner.attrs.axes]
        _, shape = tensor_info(inner.args[0])
        if x is None or gamma is None or beta is None or shape is None or axes not in ([-1], [len(shape) - 1]):
            return None
        c = io.layernorm_constants(x.scale, shape[-1], x.bound, float(inner.attrs.epsilon), gamma, beta, s16, z16)
        y = intops.emit_layernorm(m.builder_, x.expr, c, "int16")
        out = IntRepr(y, s16, z16, "int16", 65536)
        k = m.layer_norms.get(q.args[0])
        if k is not None and k not in m.probes:
            m.probes[k] = out
        return out
    table = _tabulate(m, q.args[0], s16, z16)
    if table is not None:
        x, tab = table
        y = intops.emit_lookup(m.builder_, x.expr, tab, -int(np.iinfo(x.dtype).min), "int16")
        return IntRepr(y, s16, z16, "int16", 65536)
    return None


_ELEMENTWISE: dict[str, Callable] = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide,
    "relax.erf": np.vectorize(math.erf, otypes=[np.float64]), "relax.tanh": np.tanh, "relax.exp": np.exp,
    "relax.sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "relax.nn.relu": lambda v: np.maximum(v, 0.0),
    "relax.power": np.power, "relax.sqrt": np.sqrt, "relax.negative": np.negative,
    "relax.nn.gelu": lambda v: 0.5 * v * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(v / math.sqrt(2))),
    "relax.nn.gelu_tanh": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))),
    "relax.nn.silu": lambda v: v / (1.0 + np.exp(-v)),
}
_MAX_TABLE_NODES = 32


def _tabulate(m: _Propagate, root, s_out: float, z_out: int, out_dtype: str = "int16", values_only: bool = False):
    """If `root` is an elementwise float function of one 8/16-bit integer tensor (and scalar constants),
    return (its IntRepr, the table of the function on every input code, quantized to out_dtype)."""
    source: list = []

    def walk(e, depth):
        if depth > _MAX_TABLE_NODES:
            raise _NotTable
        r = m.rep_of(e)
        if r is not None:
            if r.dtype not in ("int8", "int16"):
                raise _NotTable
            if source and not source[0].expr.same_as(r.expr):
                raise _NotTable
            if not source:
                source.append(r)
            codes = np.arange(np.iinfo(r.dtype).min, np.iinfo(r.dtype).max + 1, dtype=np.float64)
            return (codes - r.zp) * np.float64(np.float32(r.scale))
        c = constant_value(e)
        if c is not None:
            if c.size != 1:
                raise _NotTable
            return np.float64(c.reshape(()).item())
        v = e if isinstance(e, relax.Call) else m.binding(e)
        if not (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name in _ELEMENTWISE):
            raise _NotTable
        return _ELEMENTWISE[v.op.name](*[walk(a, depth + 1) for a in v.args])

    try:
        values = walk(root, 0)
    except _NotTable:
        return None
    if not source or np.ndim(values) != 1:
        return None
    if values_only:
        return source[0], values
    info = np.iinfo(out_dtype)
    q = np.clip(np.floor(values / np.float64(np.float32(s_out)) + 0.5) + z_out, info.min, info.max)
    return source[0], q.astype(out_dtype)


class _NotTable(Exception):
    pass


def _quantize(m: _Propagate, call):
    """A requantization of an integer tensor; of one scaled per channel (smoothing); or an exact table of an
    elementwise island (e.g. GELU) straight into the output's int8 codes."""
    s, z = _scalar(call.args[1]), _scalar(call.args[2])
    out = str(call.attrs.out_dtype)
    if s is None or z is None or out not in ("int8", "int16"):
        return None
    src, moves = _peel_moves(m, call.args[0])  # quantize commutes with data movement
    y = _quantize_value(m, src, s, int(z), out)
    return None if y is None else _apply_moves(m, y, moves)


def _peel_moves(m: _Propagate, e):
    """Follow data-movement ops back from a float value to their source: (source, [ops outermost first])."""
    moves = []
    while m.rep_of(e) is None:
        v = m.binding(e)
        if not (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name in _DATA_MOVEMENT):
            break
        moves.append(v)
        e = v.args[0]
    return e, moves


def _apply_moves(m: _Propagate, y, moves):
    for v in reversed(moves):
        y = m.emit(relax.Call(v.op, [y] + list(v.args[1:]), v.attrs))
    return y


def _quantize_value(m: _Propagate, src, s: float, z: int, out: str):
    r = m.rep_of(src)
    if r is not None:
        return m.requantize(r, s, int(z), out)
    per_channel = _channel_scaled(m, src)
    if per_channel is not None:
        r, vec = per_channel
        mult = np.float64(np.float32(r.scale)) * vec.astype(np.float64) / np.float64(np.float32(s))
        return intops.emit_requantize(m.builder_, r.expr, mult, int(z), out, in_zp=r.zp)
    probe = _tabulate(m, src, 1.0, 0, values_only=True)
    if probe is None:
        return None
    x, values = probe
    arith = _arithmetic_island(m, x, values, step=s)
    if arith is not None:
        return m.requantize(arith, s, int(z), out)
    _, tab = _tabulate(m, src, s, int(z), out)
    return intops.emit_lookup(m.builder_, x.expr, tab, -int(np.iinfo(x.dtype).min), out)


RELU_GAIN_RTOL = 1e-6


GELU_ACCEPT_STEPS = 0.1  # the integer GELU replaces an island's table when within this share of an int8 step


def _arithmetic_island(m: _Propagate, x: IntRepr, values: np.ndarray, step: Optional[float] = None
                       ) -> Optional[IntRepr]:
    """An island computed in int32 arithmetic instead of a table of every code: a gather from a 64K-entry table
    costs a few cycles per element (inside a GEMM epilogue, more than the GEMM's own epilogue), arithmetic
    vectorizes. A scaled ReLU is exact (a max on the codes); GELU (erf or tanh form) is intmath.igelu, used only
    when, on every code of x, it is within GELU_ACCEPT_STEPS of the output `step` (default: an int8 step over the
    island's range) of the exact values; anything else stays a table."""
    return _relu_rep(m, x, values) or _gelu_rep(m, x, values, step)


def _gelu_rep(m: _Propagate, x: IntRepr, values: np.ndarray, step: Optional[float] = None) -> Optional[IntRepr]:
    if x.dtype not in ("int8", "int16"):
        return None
    info = np.iinfo(x.dtype)
    codes = np.arange(info.min, info.max + 1, dtype=np.int64)
    try:
        c = io.gelu_constants(float(np.float32(x.scale)))
    except ValueError:
        return None
    v = io.igelu(codes, x.zp, c).astype(np.int64)
    unit = float(np.float32(x.scale)) / (1 << io.GELU_FRAC_BITS)
    gain = float(values[-1]) / (float(v[-1]) * unit) if v[-1] > 0 else 0.0
    span = float(np.max(values) - np.min(values))
    tol = GELU_ACCEPT_STEPS * (float(step) if step else span / 255)
    if gain <= 0 or span <= 0 or np.max(np.abs(v * unit * gain - values)) > tol:
        return None
    y = intops.emit_gelu(m.builder_, x.expr, x.zp, c)
    return IntRepr(y, unit * gain, 0, "int32", int(np.max(np.abs(v))) + 1)


def _relu_rep(m: _Propagate, x: IntRepr, values: np.ndarray) -> Optional[IntRepr]:
    """An island equal to c * relu(x) (c > 0) as max(x, zero point) with the scale times c; else None."""
    gain = _relu_gain(x, values)
    if gain is None:
        return None
    return IntRepr(m.emit(R.maximum(x.expr, const(x.zp, x.dtype))), x.scale * gain, x.zp, x.dtype, x.bound)


def _relu_gain(x: IntRepr, values: np.ndarray) -> Optional[float]:
    """c > 0 when an island's values on every code of x are c * relu(x's real value) (ReLU, a scaled ReLU): such
    an island is a max on the codes and a requantization. A gather from a 64K-entry table costs a few cycles per
    element inside a GEMM epilogue; the max and the fixed-point multiply vectorize."""
    info = np.iinfo(x.dtype)
    real = (np.arange(info.min, info.max + 1, dtype=np.float64) - x.zp) * np.float64(np.float32(x.scale))
    top = float(np.max(real))
    if top <= 0 or float(np.max(values)) <= 0:
        return None
    gain = float(values[-1]) / top
    want = gain * np.maximum(real, 0.0)
    ok = np.allclose(values, want, rtol=RELU_GAIN_RTOL, atol=RELU_GAIN_RTOL * abs(gain) * top)
    return gain if ok and gain > 0 else None


def _channel_scaled(m: _Propagate, e):
    """x * c with x an integer tensor and c a positive constant vector along the last axis."""
    v = m.binding(e)
    if not (isinstance(v, relax.Call) and v.op == _op("relax.multiply")):
        return None
    for x, c in ((v.args[0], v.args[1]), (v.args[1], v.args[0])):
        cv = constant_value(c)
        if cv is None or cv.ndim < 1 or cv.size != cv.shape[-1] or not np.all(cv > 0):
            continue
        r = m.rep_of(x) or _island_rep(m, x)
        if r is not None:
            return r, cv.reshape(-1)
    return None


def _island_rep(m: _Propagate, e) -> Optional[IntRepr]:
    """An elementwise island as an int16 table lookup on the range of its own values (no annotation needed); a
    scaled ReLU as the max on the codes (no table)."""
    e, moves = _peel_moves(m, e)
    probe = _tabulate(m, e, 1.0, 0, "int16", values_only=True)
    if probe is None:
        return None
    x, values = probe
    arith = _arithmetic_island(m, x, values)
    if arith is not None:
        return IntRepr(_apply_moves(m, arith.expr, moves), arith.scale, arith.zp, arith.dtype, arith.bound)
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    scale = max((hi - lo) / 65535.0, 1e-12)
    zp = int(np.clip(np.round(-32768 - lo / scale), -32768, 32767))
    _, tab = _tabulate(m, e, scale, zp, "int16")
    y = intops.emit_lookup(m.builder_, x.expr, tab, -int(np.iinfo(x.dtype).min), "int16")
    return IntRepr(_apply_moves(m, y, moves), scale, zp, "int16", 65536)


def _same_scale(m: _Propagate, call):
    """Data movement: the op applies to the integer tensor, the scale is unchanged."""
    r = m.rep_of(call.args[0])
    if r is None:
        return None
    new = relax.Call(call.op, [r.expr] + list(call.args[1:]), call.attrs, call.sinfo_args
                     if hasattr(call, "sinfo_args") else None)
    return IntRepr(m.emit(new), r.scale, r.zp, r.dtype, r.bound)


def _scale_by_const(m: _Propagate, call, invert: bool):
    for x, c in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
        r, k = m.rep_of(x), _scalar(c)
        if r is not None and k is not None and k > 0:
            return IntRepr(r.expr, r.scale / k if invert else r.scale * k, r.zp, r.dtype, r.bound)
        if invert:
            break  # only x / c
    return None


def _multiply(m, call):
    """x * c scales; x * y of two activations (e.g. an SSRU gate times its state) is an integer product."""
    by_const = _scale_by_const(m, call, invert=False)
    if by_const is not None:
        return by_const
    weighted = head_rules.weighted_or_square(m, call)  # x * mask: exact, for a masked sum
    if weighted is not None:
        return weighted
    pair = _operand_reps(m, call)
    if pair is None:
        return None
    return head_rules.note_square(m, call, _product(m, *pair))


def _product(m: _Propagate, a: IntRepr, b: IntRepr) -> IntRepr:
    k = io.product_shift(a.bound, b.bound)
    y = intops.emit_mul(m.builder_, a.expr, a.zp, b.expr, b.zp, k)
    return IntRepr(y, a.scale * b.scale * 2.0 ** k, 0, "int64", ((a.bound * b.bound) >> k) + 1)


def _power(m: _Propagate, call):
    """x ** 2 (how some exporters write a sum of squares) as the integer product x * x."""
    r = m.rep_of(call.args[0])
    if r is None or _scalar(call.args[1]) != 2.0 or (_in_island(m, call) and not m.at_end):
        return None
    out = _product(m, r, r)
    m.origin[out.expr] = ("square", r)
    return out


def _in_island(m: _Propagate, call) -> bool:
    """Whether `call` is still part of an elementwise function of one 8/16-bit tensor: it stays float so that
    the consumer tabulates the whole island (one exact table instead of a chain of rounded steps)."""
    if not isinstance(call.op, tvm.ir.Op) or call.op.name not in _ELEMENTWISE:
        return False
    sources = []
    for a in call.args:
        if _scalar(a) is not None:
            continue
        t = _tabulate(m, a, 1.0, 0, values_only=True)
        if t is None:
            return False
        sources.append(t[0].expr)
    return bool(sources) and all(s.same_as(sources[0]) for s in sources)


def _operand_reps(m: _Propagate, call):
    """Both operands as integer tensors, an island operand becoming an int16 table on its own range; None when
    the call itself is part of an island, or an operand has no integer form."""
    if _in_island(m, call) and not m.at_end:  # x * x of one 8/16-bit tensor (tanh GELU's x^3): the consumer
        return None  # tabulates it whole
    a, b = m.rep_of(call.args[0]), m.rep_of(call.args[1])
    if a is None or b is None:
        a = a or _island_rep(m, call.args[0])
        b = b or _island_rep(m, call.args[1])
    return None if a is None or b is None else (a, b)


def _divide(m, call):
    return _scale_by_const(m, call, invert=True) or head_rules.divide(m, call)


def _to_common(m: _Propagate, r: IntRepr, scale: float):
    mult = r.scale / scale
    return intops.emit_rescale(m.builder_, r.expr, r.zp, mult), int(math.ceil(r.bound * mult)) + 1


def _where_of_constants(m: _Propagate, e):
    """where(cond, c1, c2) with scalar constants: (cond, c1, c2)."""
    v = m.binding(e)
    if isinstance(v, relax.Call) and v.op == _op("relax.where"):
        c1, c2 = _scalar(v.args[1]), _scalar(v.args[2])
        if c1 is not None and c2 is not None:
            return v.args[0], c1, c2
    c = constant_value(e)
    if c is not None:
        return None, c, None
    return None


def _common(m: _Propagate, a: IntRepr, b: IntRepr):
    """Both at the finer scale in int64: (xa, xb, scale, bound of each)."""
    scale = min(a.scale, b.scale)
    (xa, ba), (xb, bb_) = _to_common(m, a, scale), _to_common(m, b, scale)
    return xa, xb, scale, max(ba, bb_)


def _add(m: _Propagate, call, sign: int = 1):
    a, b = m.rep_of(call.args[0]), m.rep_of(call.args[1])
    if a is not None and b is not None:
        xa, xb, scale, bound = _common(m, a, b)
        y = m.emit(R.add(xa, xb) if sign > 0 else R.subtract(xa, xb))
        return IntRepr(y, scale, 0, "int64", 2 * bound)
    r, other = (a, call.args[1]) if a is not None else (b, call.args[0])
    w = None if r is None else _where_of_constants(m, other)
    if w is None:
        pair = _operand_reps(m, call)
        if pair is not None:  # an elementwise island on one side (e.g. an SSRU's (1 - f) * x)
            xa, xb, scale, bound = _common(m, *pair)
            return IntRepr(m.emit(R.add(xa, xb) if sign > 0 else R.subtract(xa, xb)), scale, 0, "int64", 2 * bound)
        return None
    cond, c1, c2 = w
    if sign < 0 and a is None:  # c - x = -(x - c)
        return _negate(m, _add(m, relax.Call(call.op, [call.args[1], call.args[0]], call.attrs), sign=-1))

    def q(c):
        v = np.clip(np.floor(np.asarray(c, np.float64) / np.float64(np.float32(r.scale)) + 0.5),
                    -_MASK_SATURATION, _MASK_SATURATION) * sign
        return v.astype(np.int64)

    if cond is None:  # a constant tensor (position embeddings, biases)
        cv = q(c1)
        x = intops.emit_rescale(m.builder_, r.expr, r.zp, 1.0)
        y = m.emit(R.clip(m.emit(R.add(x, const(cv, "int64"))), -_MASK_SATURATION, _MASK_SATURATION))
        return IntRepr(y, r.scale, 0, "int64", r.bound + int(np.max(np.abs(cv), initial=0)))
    small = max(abs(int(q(c1))), abs(int(q(c2)))) if max(abs(c1), abs(c2)) < 1e30 else 0
    if r.dtype in ("int8", "int16", "int32") and r.bound < 1 << 29:
        # an attention mask on 8/16-bit scores: in int32, the mask saturated where x + mask cannot overflow
        # (softmax clips int32 inputs at -2**30: a masked score still gets exp 0)
        sat = _MASK_SATURATION - r.bound

        def q32(c):
            return const(np.clip(q(c), -sat, sat).astype(np.int32), "int32")

        x32 = m.emit(R.astype(r.expr, "int32")) if r.dtype != "int32" else r.expr
        if r.zp:
            x32 = m.emit(R.subtract(x32, const(r.zp, "int32")))
        y = m.emit(R.add(x32, m.emit(R.where(cond, q32(c1), q32(c2)))))
        return IntRepr(y, r.scale, 0, "int32", r.bound + small)
    x = intops.emit_rescale(m.builder_, r.expr, r.zp, 1.0)
    add = m.emit(R.where(cond, const(q(c1), "int64"), const(q(c2), "int64")))
    y = m.emit(R.clip(m.emit(R.add(x, add)), -_MASK_SATURATION, _MASK_SATURATION))
    return IntRepr(y, r.scale, 0, "int64", r.bound + small)


def _subtract(m, call):
    return _add(m, call, sign=-1)


def _negate(m: _Propagate, r: Optional[IntRepr]) -> Optional[IntRepr]:
    if r is None:
        return None
    x = intops.emit_rescale(m.builder_, r.expr, r.zp, 1.0)
    return IntRepr(m.emit(R.subtract(const(0, "int64"), x)), r.scale, 0, "int64", r.bound)


def _relu(m: _Propagate, call):
    """ReLU on the codes of a wide tensor (an 8/16-bit one is an island, tabulated by its consumer):
    max(x, zero point), same scale (intmath.irelu)."""
    r = m.rep_of(call.args[0])
    if r is None or _in_island(m, call):
        return None
    y = m.emit(R.maximum(r.expr, const(r.zp, r.dtype)))
    return IntRepr(y, r.scale, r.zp, r.dtype, r.bound)


def _log_softmax(m: _Propagate, call):
    """Integer log-softmax (intmath.ilog_softmax): int32 or int64 in the input's scale."""
    r = m.rep_of(call.args[0])
    _, shape = tensor_info(call.args[0])
    if r is None or shape is None or int(call.attrs.axis) not in (-1, len(shape) - 1):
        return None
    y = intops.emit_log_softmax(m.builder_, r.expr, r.scale)
    d_max = intops.difference_bound(r.expr, r.scale)  # by type: masked logits lie outside r.bound
    return IntRepr(y, r.scale, 0, tensor_info(y)[0], io.log_softmax_bound(int(shape[-1]), r.scale, d_max))


def _take(m: _Propagate, call):
    if m.rep_of(call.args[0]) is not None:
        return _same_scale(m, call)  # a gather from an activation moves data
    table = constant_value(call.args[0])
    idx_dtype, _ = tensor_info(call.args[1])
    if table is None or table.dtype.kind != "f" or idx_dtype is None or not idx_dtype.startswith(("int", "uint")):
        return None
    axis = None if call.attrs is None or call.attrs.axis is None else int(call.attrs.axis)
    if table.ndim >= 2 and axis == 0 and table.shape[0] > 1:  # an embedding table: a scale per row
        codes, mult, fine = io.row_scaled_table(table)
        y = intops.emit_gather_rows(m.builder_, codes, mult, call.args[1])
        return IntRepr(y, fine, 0, "int32", 127 * int(mult.max()) + 1)
    absmax = float(np.max(np.abs(table))) or 1.0
    qmax = np.iinfo(TABLE_DTYPE).max
    scale = absmax / qmax
    tq = np.clip(np.round(table / scale), -qmax, qmax).astype(TABLE_DTYPE)
    y = m.emit(relax.Call(call.op, [const(tq, TABLE_DTYPE), call.args[1]], call.attrs))
    return IntRepr(y, scale, 0, TABLE_DTYPE, qmax + 1)


def _softmax(m: _Propagate, call):
    r = m.rep_of(call.args[0])
    _, shape = tensor_info(call.args[0])
    if r is None or shape is None or int(call.attrs.axis) not in (-1, len(shape) - 1):
        return None
    # fine codes; a consumer that quantizes them (the P.V matmul's input) gets its own codes straight from the
    # row sums instead (requantize), with no 64-bit multiply per element
    y = intops.emit_softmax(m.builder_, r.expr, r.scale, fine=True)
    m.softmax_of[y] = r
    return IntRepr(y, 1.0 / io.SOFTMAX_FINE_LEVELS, 0, "int32", io.SOFTMAX_FINE_LEVELS + 1)


def _where(m: _Propagate, call):
    """where(isnan(x), c, y): integers are never NaN, so this is y. where(cond, x, y) of two integer tensors
    (a cache written at one position): both at the finer scale."""
    cond = m.binding(call.args[0])
    if isinstance(cond, relax.Call) and cond.op == _op("relax.isnan") and m.rep_of(cond.args[0]) is not None:
        return m.rep_of(call.args[2])
    a, b = m.rep_of(call.args[1]), m.rep_of(call.args[2])
    if a is None or b is None or tensor_info(call.args[0])[0] != "bool":
        return None
    if a.scale == b.scale and a.zp == b.zp and a.dtype == b.dtype:
        return IntRepr(m.emit(R.where(call.args[0], a.expr, b.expr)), a.scale, a.zp, a.dtype, max(a.bound, b.bound))
    xa, xb, scale, bound = _common(m, a, b)
    return IntRepr(m.emit(R.where(call.args[0], xa, xb)), scale, 0, "int64", bound)


def _shape_of(m: _Propagate, call):
    """The static shape of an integer tensor's float view (so that the float view is not kept alive for it)."""
    _, shape = tensor_info(call.args[0])
    if m.rep_of(call.args[0]) is None or shape is None:
        return None
    return relax.ShapeExpr(list(shape))


_DATA_MOVEMENT = {"relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze", "relax.flatten"}

RULES: dict[str, Callable] = {
    "relax.dequantize": _dequantize,
    "relax.quantize": _quantize,
    **{op: _same_scale for op in _DATA_MOVEMENT},
    "relax.strided_slice": _same_scale,
    "relax.multiply": _multiply,
    "relax.divide": _divide,
    "relax.add": _add,
    "relax.subtract": _subtract,
    "relax.take": _take,
    "relax.nn.softmax": _softmax,
    "relax.nn.log_softmax": _log_softmax,
    "relax.nn.relu": _relu,
    "relax.shape_of": _shape_of,
    "relax.where": _where,
    "relax.astype": head_rules.cast_input,
    "relax.sum": head_rules.reduce_sum,
    "relax.mean": lambda m, call: head_rules.reduce_sum(m, call, mean=True),
    "relax.maximum": head_rules.maximum_const,
    "relax.max": head_rules.stacked_max,
    "relax.power": _power,
}


@tvm.transform.module_pass(opt_level=0, name="IntformerPropagateScales")
class PropagateScales:
    """After the pass, `probes`: a Probe (LayerNorm index in graph order, IntRepr of its integer output) per
    LayerNorm, so that the error of every layer's output can be read off the integer graph
    (compiler/layer_errors.py)."""

    def __init__(self):
        self.rewritten = 0
        self.probes: tuple[Probe, ...] = ()

    def transform_module(self, mod, ctx):
        mutator = _Propagate(mod)
        mutator.island_ends = _island_ends(mod)
        mutator.layer_norms = {b.var: k for k, b in enumerate(
            b for f in mod.functions.values() if isinstance(f, relax.Function) and isinstance(f.body, relax.SeqExpr)
            for block in f.body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and b.value.op == _op("relax.nn.layer_norm"))}
        mod = mutate_functions(mutator, mod)
        self.rewritten = mutator.rewritten
        self.probes = tuple(Probe(k, r) for k, r in sorted(mutator.probes.items(), key=lambda kv: kv[0]))
        return mod


def _island_ends(mod) -> set:
    """Elementwise float calls whose values no other elementwise op and no quantize reads (returned, or read by
    a reduction): no consumer tabulates their island, so they are tabulated themselves."""
    calls, users = {}, {}

    def note(arg, user):
        if isinstance(arg, relax.Var):
            users.setdefault(arg, []).append(user)
        elif isinstance(arg, relax.Tuple):
            for f in arg.fields:
                note(f, user)

    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        for block in func.body.blocks:
            for b in block.bindings:
                v = b.value
                if isinstance(v, relax.Call):
                    name = v.op.name if isinstance(v.op, tvm.ir.Op) else ""
                    if name in _ELEMENTWISE:
                        calls[b.var] = v
                    for a in v.args:
                        note(a, name)
                else:
                    note(v, "")
        note(func.body.body, "")
    return {c for var, c in calls.items()
            if all(u not in _ELEMENTWISE and u != "relax.quantize" for u in users.get(var, []))}
