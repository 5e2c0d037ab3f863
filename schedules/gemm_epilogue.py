"""Elementwise epilogues fused into the int8 GEMM kernel: what runs on each int32 accumulator before it is stored.

Expects: an ``Epilogue``, a chain of ``EpilogueStep``s each naming an op of ``OPS`` (the pass
compiler/passes/fuse_gemm_epilogue.py builds them from Relax ops), and a GEMM compute of schedules/int8_matmul.py
whose last parameter is its int32 (Mp, Np) output ``out``.

Guarantees:
- ``Epilogue`` is hashable (the kernel cache keys on it) and holds no constant values: every constant operand
  is a parameter of the kernel, a vector along N (``per_channel``) read at the output column, a vector along M
  (``row``: a value computed at run time per output row, e.g. a token's scale exponent) read at the output row,
  a one-element buffer (a scalar), a 1-D lookup table indexed by the chain value, or the product of a row
  value and a column vector (``outer``: a token's zero point times the weights' column sums). Layers that differ
  only in constants share one kernel.
- ``with_epilogue`` turns the compute's ``out`` into an intermediate buffer and appends the block "epilogue"
  that writes the (m, n) output ``y`` (padding rows and lanes are never stored), one TIR expression per step,
  the same expression the Relax op legalizes to (topi's add / subtract / multiply / shifts / min / max / clip /
  cast / take), so the fused kernel equals the unfused graph bit for bit.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm

from compiler.tvm_compat import SBlock, SBlockRealize, tirx

EPILOGUE_BLOCK = "epilogue"
EPILOGUE_ATTR = "intformer.epilogue"  # Epilogue.to_json() of a fused GEMM kernel


@dataclass(frozen=True)
class EpilogueStep:
    """One op applied to the chain value ``x``: ``op`` a key of ``OPS``; ``dtype`` its result type.

    ``operand``: the constant's kind, "" (none: a unary op), "scalar", "vector" (per output column, length N),
    "row" (per output row, length M), "outer" (two parameters, a row (M,) and a vector (N,), both of
    ``operand_dtype``: the operand at (i, j) is row[i] * vector[j] in the step's type) or "table" (a 1-D lookup
    table of ``table_size`` entries, indexed by x);
    ``swap``: the constant is the left operand (``c - x``); ``attrs``: the op's static attributes (clip bounds,
    take mode)."""

    op: str
    dtype: str
    operand: str = ""
    operand_dtype: str = ""
    swap: bool = False
    attrs: tuple = ()
    table_size: int = 0


@dataclass(frozen=True)
class Epilogue:
    steps: tuple[EpilogueStep, ...]

    @property
    def out_dtype(self) -> str:
        return self.steps[-1].dtype

    def to_json(self) -> str:
        """The chain as JSON: the kernel attribute ``EPILOGUE_ATTR`` (tuning rebuilds the kernel from it)."""
        import json

        return json.dumps([[*(getattr(st, f) for f in _FIELDS[:-2]), list(st.attrs), st.table_size]
                           for st in self.steps])

    @staticmethod
    def from_json(text: str) -> Epilogue:
        import json

        return Epilogue(tuple(EpilogueStep(*row[:-2], attrs=tuple(row[-2]), table_size=row[-1])
                              for row in json.loads(text)))

    def tag(self) -> str:
        """A short, stable name for the chain (kernel names): its type, "lut" if it looks a value up, a digest
        of its steps (kernels of different chains must not share a symbol)."""
        import hashlib

        digest = hashlib.sha1(repr(self.steps).encode()).hexdigest()[:6]
        lut = "_lut" if any(st.op == "take" for st in self.steps) else ""
        return f"to_{self.out_dtype}{lut}_{digest}"


_FIELDS = ("op", "dtype", "operand", "operand_dtype", "swap", "attrs", "table_size")  # EpilogueStep's, in order


def _binary(fn: Callable) -> Callable:
    def build(x, c, step, _in_dtype):
        return fn(c, x) if step.swap else fn(x, c)
    return build


def _clip(x, _c, step, dtype):
    lo, hi = step.attrs  # topi.clip: max(min(x, hi), lo) in x's type
    return tirx.max(tirx.min(x, tirx.const(hi, dtype)), tirx.const(lo, dtype))


def _take(x, table, step, dtype):
    mode = step.attrs[0] if step.attrs else "fast"
    return table(_TAKE_INDEX[mode](x, step.table_size, dtype))


_TAKE_INDEX: dict[str, Callable] = {  # topi.take's index per mode
    "fast": lambda i, size, dt: i,
    "clip": lambda i, size, dt: tirx.min(tirx.max(i, tirx.const(0, dt)), tirx.const(size - 1, dt)),
    "wrap": lambda i, size, dt: tirx.floormod(i, tirx.const(size, dt)),
}

# op name -> (x, constant operand or None (a table: a function of the index), step, x's type) -> TIR expression.
OPS: dict[str, Callable] = {
    "add": _binary(lambda a, b: a + b),
    "subtract": _binary(lambda a, b: a - b),
    "multiply": _binary(lambda a, b: a * b),
    "right_shift": _binary(lambda a, b: a >> b),
    "left_shift": _binary(lambda a, b: a << b),
    "minimum": _binary(tirx.min),
    "maximum": _binary(tirx.max),
    "floor_divide": _binary(tirx.floordiv),
    "negative": lambda x, _c, step, _dt: -x,
    "astype": lambda x, _c, step, _dt: tirx.Cast(step.dtype, x),
    "clip": _clip,
    "take": _take,
}
TAKE_MODES = tuple(_TAKE_INDEX)


_FOLDABLE = {"add": 1, "subtract": -1}  # int32 steps a kernel can fold into its accumulators' initial value


def fold_into_init(epi: Epilogue, operands: tuple, n: int) -> tuple[Epilogue, tuple, np.ndarray]:
    """(the epilogue without its leading int32 ``x + c`` / ``x - c`` steps, their operands, the (n,) int64 sum
    of what they add): for a kernel whose accumulation starts from a per-column value (VNNI's bias), adding it
    there instead is exact (int32 addition wraps the same in any order). One step is always left."""
    steps, ops, addend = list(epi.steps), list(operands), np.zeros(n, np.int64)
    while len(steps) > 1 and steps[0].op in _FOLDABLE and steps[0].dtype == "int32" and not steps[0].swap \
            and steps[0].operand in ("scalar", "vector"):
        addend += _FOLDABLE[steps.pop(0).op] * np.asarray(ops.pop(0), np.int64)
    return Epilogue(tuple(steps)), tuple(ops), addend


OPERAND_SHAPES: dict[str, Callable] = {  # operand kind -> (m, n, step) -> the shapes of its parameter buffers
    "scalar": lambda m, n, step: [(1,)],
    "vector": lambda m, n, step: [(n,)],
    "row": lambda m, n, step: [(m,)],
    "outer": lambda m, n, step: [(m,), (n,)],
    "table": lambda m, n, step: [(step.table_size,)],
}


def operand_buffers(epi: Epilogue, n: int, m: int) -> list:
    """The parameter buffers of the operands, in step order (one per operand, two for an "outer" one: row then
    vector)."""
    bufs = []
    for i, step in enumerate(epi.steps):
        if step.operand:
            for j, shape in enumerate(OPERAND_SHAPES[step.operand](m, n, step)):
                bufs.append(tirx.decl_buffer(shape, step.operand_dtype, f"c{i}{'_' * j}_{step.op}"))
    return bufs


# operand kind -> (row, col) -> where each of its buffers is read for the output at (row, col) (tables: by value)
_READ_AT: dict[str, Callable] = {
    "scalar": lambda row, col: [0],
    "vector": lambda row, col: [col],
    "row": lambda row, col: [row],
    "outer": lambda row, col: [row, col],  # the product of the two
}


def _load(buf, idx, dtype: str):
    v = tirx.BufferLoad(buf, [idx])
    return v if buf.dtype == dtype else tirx.Cast(dtype, v)  # stored narrower: widened on load


def epilogue_value(epi: Epilogue, x, col, bufs: list, row=None):
    """The TIR expression of the chain on accumulator ``x`` at output (``row``, ``col``)."""
    it, dtype = iter(bufs), "int32"
    for step in epi.steps:
        c = None
        if step.operand == "table":
            c = (lambda b: lambda idx: tirx.BufferLoad(b, [idx]))(next(it))
        elif step.operand:
            c = functools.reduce(operator.mul, [_load(next(it), at, step.dtype)
                                                for at in _READ_AT[step.operand](row, col)])
        x, dtype = OPS[step.op](x, c, step, dtype), step.dtype
    return x


def _region(buf, *idx):
    return tirx.BufferRegion(buf, [tvm.ir.Range.from_min_extent(i, 1) for i in idx])


def with_epilogue(core, epi: Epilogue, m: int, n: int):
    """``core`` (…, out int32 (Mp, Np)) -> (…, constants…, y (m, n) of the epilogue's type): ``out`` becomes an
    intermediate of the root block and the block "epilogue" computes y[i, j] = chain(out[i, j])."""
    *params, out = core.params
    bufs = operand_buffers(epi, n, m)
    y = tirx.decl_buffer((m, n), epi.out_dtype, "y")
    i, j, vi, vj = (tirx.Var(name, "int32") for name in ("i", "j", "vi", "vj"))
    value = epilogue_value(epi, tirx.BufferLoad(out, [vi, vj]), vj, bufs, vi)
    reads = [_region(out, vi, vj)]
    it = iter(bufs)
    for step in (s for s in epi.steps if s.operand):
        if step.operand == "table":
            reads.append(tirx.BufferRegion(next(it), [tvm.ir.Range(0, step.table_size)]))
        else:
            reads += [_region(next(it), at) for at in _READ_AT[step.operand](vi, vj)]
    block = SBlock([tirx.IterVar(tvm.ir.Range(0, m), vi, 0), tirx.IterVar(tvm.ir.Range(0, n), vj, 0)],
                   reads, [_region(y, vi, vj)], EPILOGUE_BLOCK, tirx.BufferStore(y, value, [vi, vj]))
    loops = tirx.For(i, 0, m, tirx.ForKind.SERIAL,
                     tirx.For(j, 0, n, tirx.ForKind.SERIAL, SBlockRealize([i, j], True, block)))
    root = core.body.block
    body = tirx.SeqStmt([root.body, loops])
    new_root = SBlock(root.iter_vars, root.reads, root.writes, root.name_hint, body, root.init,
                      list(root.alloc_buffers) + [out], root.match_buffers, root.annotations)
    return tirx.PrimFunc([*params, *bufs, y], SBlockRealize([], True, new_root), attrs=core.attrs)


__all__ = ["EPILOGUE_ATTR", "EPILOGUE_BLOCK", "Epilogue", "EpilogueStep", "OPS", "TAKE_MODES", "epilogue_value",
           "fold_into_init", "operand_buffers", "with_epilogue"]
