"""The NumPy reference of a compiled integer graph: executes the Relax `main` function op by op with NumPy.

After the integer passes, `main` holds integer ops only (plus the dequantize of its outputs), so this
interpreter is the bit-exact twin of the compiled library: integer arithmetic has one meaning, and the few
float operations at the edges are single multiplies. Every op it knows is in OPS; an unknown op is an error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from compiler.tvm_compat import constant_value


def _attr(call, name, default=None):
    attrs = call.attrs
    if attrs is None or not hasattr(attrs, name):
        return default
    v = getattr(attrs, name)
    return v


# relax.take's mode -> np.take's: "fast" assumes ids in range (NumPy then raises instead of reading outside)
_TAKE_MODES = {"fast": "raise", "clip": "clip", "wrap": "wrap"}


def _axes(call, name="axis"):
    v = _attr(call, name)
    if v is None:
        return None
    try:
        return tuple(int(a) for a in v)
    except TypeError:
        return int(v)


def _dtype(call):
    return str(_attr(call, "dtype") or _attr(call, "out_dtype"))


def _shape(arg):
    if isinstance(arg, relax.ShapeExpr):
        return tuple(int(v) for v in arg.values)
    return tuple(int(v) for v in arg)


def _matmul(call, a, b):
    out = _dtype(call)
    if np.issubdtype(a.dtype, np.integer):
        # int8/int16 products summed over K stay below 2**53: float64 BLAS is exact here, and fast
        small = a.dtype.itemsize <= 2 and b.dtype.itemsize <= 2 and a.shape[-1] <= (1 << 20)
        acc = (np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64) if small
               else np.matmul(a.astype(np.int64), b.astype(np.int64)))
        return acc.astype(out if out != "None" else np.int64)
    return np.matmul(a, b).astype(out if out not in ("None", "void") else a.dtype)


def _dequantize(call, x, s, z):
    out = (x.astype(np.int64) - np.asarray(z).astype(np.int64)).astype(np.float32)
    return (out * np.asarray(s, dtype=np.float32)).astype(_dtype(call))


def _reduce(fn):
    def go(call, x):
        ax = _axes(call)
        keep = bool(_attr(call, "keepdims", False))
        return fn(x, axis=ax, keepdims=keep).astype(x.dtype)  # TVM reduces in the input dtype (wraps)
    return go


def _strided_slice(call, x, axes, begin, end, strides=None):
    sl = [slice(None)] * x.ndim
    steps = list(strides) if strides is not None else [1] * len(axes)
    for a, b, e, st in zip(axes, begin, end, steps):
        sl[int(a)] = slice(int(b), int(e), int(st))
    return x[tuple(sl)]


def _gather_nd(call, data, idx):
    b = int(_attr(call, "batch_dims", 0) or 0)
    idx = idx.astype(np.int64)
    if b == 0:
        return data[tuple(np.moveaxis(idx, -1, 0))]
    lead = data.shape[:b]
    d = data.reshape((-1,) + data.shape[b:])
    i = idx.reshape((d.shape[0],) + idx.shape[b:])
    out = np.stack([d[k][tuple(np.moveaxis(i[k], -1, 0))] for k in range(d.shape[0])])
    return out.reshape(lead + out.shape[1:])


OPS: dict[str, Callable] = {
    "relax.add": lambda c, a, b: np.add(a, b),
    "relax.subtract": lambda c, a, b: np.subtract(a, b),
    "relax.multiply": lambda c, a, b: np.multiply(a, b),
    "relax.floor_divide": lambda c, a, b: np.floor_divide(a, b),
    "relax.right_shift": lambda c, a, b: np.right_shift(a, b),
    "relax.left_shift": lambda c, a, b: np.left_shift(a, b),
    "relax.minimum": lambda c, a, b: np.minimum(a, b),
    "relax.bitwise_and": lambda c, a, b: np.bitwise_and(a, b),
    "relax.maximum": lambda c, a, b: np.maximum(a, b),
    "relax.less": lambda c, a, b: np.less(a, b),
    "relax.greater": lambda c, a, b: np.greater(a, b),
    "relax.greater_equal": lambda c, a, b: np.greater_equal(a, b),
    "relax.less_equal": lambda c, a, b: np.less_equal(a, b),
    "relax.equal": lambda c, a, b: np.equal(a, b),
    "relax.not_equal": lambda c, a, b: np.not_equal(a, b),
    "relax.logical_and": lambda c, a, b: np.logical_and(a, b),
    "relax.logical_or": lambda c, a, b: np.logical_or(a, b),
    "relax.logical_not": lambda c, a: np.logical_not(a),
    "relax.negative": lambda c, a: np.negative(a),
    "relax.abs": lambda c, a: np.abs(a),
    "relax.where": lambda c, k, a, b: np.where(k, a, b),
    "relax.clip": lambda c, x, lo, hi: np.clip(x, int(lo), int(hi)).astype(x.dtype),
    "relax.astype": lambda c, x: x.astype(_dtype(c)),
    "relax.matmul": _matmul,
    "relax.sum": _reduce(np.sum),
    "relax.max": _reduce(np.max),
    "relax.min": _reduce(np.min),
    "relax.take": lambda c, t, i: np.take(t, i.astype(np.int64), axis=int(_attr(c, "axis", 0) or 0),
                                         mode=_TAKE_MODES[str(_attr(c, "mode", "fast"))]),
    "relax.reshape": lambda c, x, shape: np.reshape(x, _shape(shape)),
    "relax.permute_dims": lambda c, x: np.transpose(x, _axes(c, "axes")),
    "relax.expand_dims": lambda c, x: np.expand_dims(x, _axes(c)),
    "relax.squeeze": lambda c, x: np.squeeze(x, _axes(c)) if _axes(c) is not None else np.squeeze(x),
    "relax.full_like": lambda c, x, v: np.full_like(x, v, dtype=_dtype(c) if _dtype(c) not in ("None", "void")
                                                    else x.dtype),
    "relax.shape_of": lambda c, x: tuple(x.shape),
    "relax.shape_to_tensor": lambda c, s: np.array(s, dtype=np.int64),
    "relax.strided_slice": _strided_slice,
    "relax.flatten": lambda c, x: x.reshape(-1),
    "relax.broadcast_to": lambda c, x, shape: np.broadcast_to(x, _shape(shape)).copy(),
    "relax.dequantize": _dequantize,
    "relax.gather_nd": _gather_nd,
    "relax.cumsum": lambda c, x: np.cumsum(x, axis=_attr(c, "axis") if _attr(c, "axis") is None else int(
        _attr(c, "axis")), dtype=_dtype(c) if _dtype(c) not in ("None", "void") else x.dtype),
}


class Interpreter:
    """Runs `main` of a Relax module (before legalization) on NumPy inputs."""

    def __init__(self, mod: tvm.IRModule, func_name: str = "main"):
        self.func = mod[func_name]

    def __call__(self, *args: np.ndarray, trace: dict | None = None, override: dict | None = None):
        """The outputs; with `trace` (var -> None), also fills it with the value of each of those vars (as
        computed); with `override` (var -> array), the graph continues from those values instead."""
        env = dict(zip(self.func.params, args))
        computed = {}

        def value(e):
            if isinstance(e, relax.Var):
                return env[e]
            c = constant_value(e)
            if c is not None:
                return c
            if isinstance(e, relax.ShapeExpr):
                return e
            if isinstance(e, relax.Tuple):
                return [value(f) for f in e.fields]
            if hasattr(e, "value") and not isinstance(e, relax.Call):  # PrimValue
                v = e.value
                return v.value if hasattr(v, "value") else v
            raise NotImplementedError(f"reference interpreter: cannot evaluate {type(e).__name__}")

        for block in self.func.body.blocks:
            for b in block.bindings:
                e = b.value
                if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
                    fn = OPS.get(e.op.name)
                    if fn is None:
                        raise NotImplementedError(f"reference interpreter: no NumPy twin for {e.op.name}")
                    env[b.var] = fn(e, *[value(a) for a in e.args])
                elif isinstance(e, relax.TupleGetItem):
                    env[b.var] = value(e.tuple_value)[e.index]
                else:
                    env[b.var] = value(e)
                if override is not None and b.var in override:
                    computed[b.var] = env[b.var]
                    env[b.var] = np.asarray(override[b.var]).astype(env[b.var].dtype).reshape(env[b.var].shape)
        out = value(self.func.body.body)
        if trace is not None:
            for var in trace:
                trace[var] = computed.get(var, env.get(var))
        return out if isinstance(out, list) else [out]
