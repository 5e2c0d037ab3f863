"""Scale-propagation rules for the heads that encoder exports put after the last layer: masked mean pooling
(sentence-transformers), L2 normalization, and the sums, maxima and integer-input casts they are written with.

Expects: the mutator of compiler/passes/propagate_scales.py (its `rep_of`, `binding`, `emit`, `builder_` and the
`origin` dict this module fills), calls visited in order.
Guarantees:
- an integer tensor cast to float (an attention mask, a count) is that integer tensor at scale 1;
- x * w with x an activation and w such a cast is the exact int64 product (no shift): its sum over an axis,
  divided by the sum of w over the same axis (clipped below by a constant or not), is the integer masked mean
  of intmath.imasked_mean (zero counts divide by 1, never by 0);
- x / max(sqrt(sum(x * x)), eps), broadcast or not, is intmath.il2_normalize: Q15 int32, |y| <= 1;
- a sum over axes of any integer tensor is an int64 sum, a mean the sum at the scale / N; max(x, c) a max on
  the codes (c rounded up to a code).
Each records what it built in `origin` (by integer expression), so that the divide that closes a pattern can
check its operands were built from the same tensors over the same axes.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import tvm
from tvm import relax

from compiler.intmath import integer_ops as io
from compiler.passes import intops
from compiler.passes.intrepr import INT_RANGE, IntRepr, scalar
from compiler.tvm_compat import const, tensor_info

R = relax.op
_INT64_SAFE = 1 << 62
_FLOAT_VIEW_MOVES = {"relax.broadcast_to", "relax.reshape", "relax.expand_dims", "relax.squeeze"}


def _axes(call, ndim: int) -> Optional[tuple]:
    ax = call.attrs.axis
    if ax is None:
        return tuple(range(ndim))
    return tuple(sorted(int(a) % ndim for a in ax))


def cast_input(m, call) -> Optional[IntRepr]:
    """astype(integer tensor without a representation -> float): the integers themselves at scale 1."""
    src = call.args[0]
    dtype, shape = tensor_info(src)
    out = str(call.attrs.dtype)
    if m.rep_of(src) is not None or dtype is None or not out.startswith("float"):
        return None
    if dtype == "bool":
        bound = 1
    elif dtype in INT_RANGE:
        bound = INT_RANGE[dtype]
    else:
        return None
    r = IntRepr(src, 1.0, 0, dtype, bound)
    m.origin[src] = ("integers",)
    return r


def weighted_or_square(m, call) -> Optional[IntRepr]:
    """x * w (w an integer input at scale 1): the exact int64 product; x * x: the generic product, remembered
    as a square (the caller builds it)."""
    a, b = m.rep_of(call.args[0]), m.rep_of(call.args[1])
    if a is None or b is None:
        return None
    for x, w in ((a, b), (b, a)):
        if m.origin.get(w.expr) == ("integers",) and m.origin.get(x.expr) != ("integers",):
            xe = intops.emit_rescale(m.builder_, x.expr, x.zp, 1.0)
            y = m.emit(R.multiply(xe, intops.emit_rescale(m.builder_, w.expr, 0, 1.0)))
            m.origin[y] = ("weighted", x, w.expr)
            return IntRepr(y, x.scale, 0, "int64", min(x.bound * w.bound, _INT64_SAFE))
    return None


def note_square(m, call, out: Optional[IntRepr]) -> Optional[IntRepr]:
    """Remember that `out` is x * x (x the representation of both operands)."""
    if out is not None and call.args[0].same_as(call.args[1]):
        m.origin[out.expr] = ("square", m.rep_of(call.args[0]))
    return out


def reduce_sum(m, call, mean: bool = False) -> Optional[IntRepr]:
    """sum (or mean) over axes of an integer tensor: int64 sum of (x - zp); a mean divides the scale by N."""
    r = m.rep_of(call.args[0])
    _, shape = tensor_info(call.args[0])
    if r is None or shape is None:
        return None
    axes = _axes(call, len(shape))
    n = int(np.prod([shape[a] for a in axes])) if axes else 1
    keep = bool(call.attrs.keepdims)
    x = intops.emit_rescale(m.builder_, r.expr, r.zp, 1.0)
    y = m.emit(R.sum(x, axis=list(axes), keepdims=keep))
    origin = m.origin.get(r.expr)
    if origin and origin[0] == "weighted":
        m.origin[y] = ("weighted_sum", origin[1], origin[2], axes, keep)
    elif origin == ("integers",):
        m.origin[y] = ("count", r.expr, axes, keep)
    elif origin and origin[0] == "square":
        m.origin[y] = ("sum_squares", origin[1], axes, keep)
    return IntRepr(y, r.scale / n if mean else r.scale, 0, "int64", min(r.bound * n, _INT64_SAFE))


def _stacked_pair(m, call):
    """(x, c) when `call` is max(stack([broadcast(x), broadcast(c)]), axis=0) with c a scalar constant: how the
    importer writes ONNX Max(x, c), and so Clip with one constant bound (compiler/frontend/simplify.py)."""
    axis = call.attrs.axis
    stack = m.binding(call.args[0])
    if axis is None or [int(a) for a in axis] != [0] or not (
            isinstance(stack, relax.Call) and stack.op == tvm.ir.Op.get("relax.stack")):
        return None
    fields = list(stack.args[0].fields) if isinstance(stack.args[0], relax.Tuple) else []
    if len(fields) != 2:
        return None
    parts = []
    for f in fields:
        v = m.binding(f) if isinstance(f, relax.Var) else None
        parts.append(v.args[0] if isinstance(v, relax.Call) and v.op == tvm.ir.Op.get("relax.broadcast_to") else f)
    for x, c in (parts, parts[::-1]):
        if scalar(c) is not None and scalar(x) is None:
            return x, scalar(c)
    return None


def stacked_max(m, call) -> Optional[IntRepr]:
    """max(stack([broadcast(x), broadcast(c)]), axis=0): max(x, c) on the codes."""
    pair = _stacked_pair(m, call)
    return None if pair is None else _max_codes(m, m.rep_of(pair[0]), pair[1])


def maximum_const(m, call) -> Optional[IntRepr]:
    """max(x, c) with c a scalar constant: a max on the codes, c rounded up to the next code."""
    return _max_codes(m, m.rep_of(call.args[0]), scalar(call.args[1]))


def _max_codes(m, r: Optional[IntRepr], c: Optional[float]) -> Optional[IntRepr]:
    if r is None or c is None:
        return None
    code = r.zp + math.ceil(c / r.scale)
    dtype = r.dtype if r.dtype in INT_RANGE and abs(code) < INT_RANGE[r.dtype] // 2 else "int64"
    x = r.expr if dtype == r.dtype else intops.emit_rescale(m.builder_, r.expr, 0, 1.0)
    y = m.emit(R.maximum(x, const(code, dtype)))
    origin = m.origin.get(r.expr)
    if origin and origin[0] == "count":
        m.origin[y] = origin
    return IntRepr(y, r.scale, r.zp, dtype, max(r.bound, abs(code - r.zp)))


def divide(m, call) -> Optional[IntRepr]:
    """The masked mean and the L2 normalization (see the module docstring); None for any other division."""
    return _masked_mean(m, call) or _l2_normalize(m, call)


def _masked_mean(m, call) -> Optional[IntRepr]:
    num, den = m.rep_of(call.args[0]), m.rep_of(call.args[1])
    if num is None or den is None:
        return None
    a, b = m.origin.get(num.expr), m.origin.get(den.expr)
    if not (a and b and a[0] == "weighted_sum" and b[0] == "count"):
        return None
    _, x, w, axes, keep = a
    if not (w.same_as(b[1]) and axes == b[2] and keep == b[3]) or len(axes) != 1:
        return None
    y = intops.emit_masked_mean(m.builder_, x.expr, x.zp, w, list(axes), x.bound, keep)
    f = io.quotient_frac_bits(x.bound)
    return IntRepr(y, x.scale / (1 << f), 0, "int64", (x.bound << f) + 1)


def _l2_normalize(m, call) -> Optional[IntRepr]:
    x = m.rep_of(call.args[0])
    _, shape = tensor_info(call.args[0])
    if x is None or shape is None:
        return None
    e, eps = call.args[1], 0.0
    for _ in range(8):  # peel the float view: broadcast / reshape, max(., eps), sqrt
        v = m.binding(e)
        if not (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)):
            return None
        name = v.op.name
        if name in _FLOAT_VIEW_MOVES:
            e = v.args[0]
        elif name == "relax.maximum" and scalar(v.args[1]) is not None:
            eps, e = max(eps, scalar(v.args[1])), v.args[0]
        elif name == "relax.max" and _stacked_pair(m, v) is not None:
            e, c = _stacked_pair(m, v)
            eps = max(eps, c)
        elif name == "relax.sqrt":
            e = v.args[0]
            break
        else:
            return None
    else:
        return None
    s = m.rep_of(e)
    origin = m.origin.get(s.expr) if s is not None else None
    if not (origin and origin[0] == "sum_squares"):
        return None
    sq, axes = origin[1], origin[2]
    if sq is None or not sq.expr.same_as(x.expr) or len(axes) != 1:
        return None
    axis = axes[0]
    eps_code = max(math.ceil(eps / x.scale), 1) if eps > 0 else 1
    y = intops.emit_l2_normalize(m.builder_, x.expr, x.zp, x.bound, eps_code, axis)
    scale = 2.0 ** -io.L2_OUT_FRAC_BITS
    return IntRepr(y, scale, 0, "int32", (1 << io.L2_OUT_FRAC_BITS) + 1)
