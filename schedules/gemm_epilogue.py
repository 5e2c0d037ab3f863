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
- ``pair_requantize`` rewrites a chain's int64 requantizations whose constants allow it into int32 steps around
  ``mulhi`` (the product's high word, schedules/intrinsics/mulhi.py), with the same values (proof in
  ``pair_requant_steps``): on x86, 16 lanes per vector instead of 8 (compiler/passes/fuse_gemm_epilogue.py applies
  it for the x86 kernels).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm

from compiler.tvm_compat import SBlock, SBlockRealize, tirx
from schedules.intrinsics.mulhi import mulhi

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
    "mulhi": _binary(mulhi),  # int32 x int32 -> the product's high 32 bits (made by ``pair_requantize``)
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


_INT32 = np.iinfo(np.int32)
_REQUANT = ("astype", "multiply", "add", "right_shift")  # int64(x) * m + r >> s: a requantization's head
_INT32_TAIL = {"add", "subtract", "minimum", "maximum", "clip"}  # int64 steps after it that int32 can run


def _constants(step, operand) -> np.ndarray | None:
    return np.asarray(operand, np.int64) if step.operand in ("scalar", "vector") else None


def _as_int32_tail(steps, operands, bound: int):
    """The int64 steps after a requantization's shift, up to the cast that ends them, as int32 steps (their
    constants as int32) -> (steps, operands) or None: every intermediate value stays within int32 (``bound``:
    the largest magnitude the shift can give)."""
    out, ops, given = [], [], iter(operands)
    for step in steps:
        c = next(given) if step.operand else None
        if step.dtype != "int64":  # the cast to the narrow type ends the int64 chain
            if step.op != "astype" or step.dtype not in ("int32", "int16", "int8"):
                return None
            return out + [step], ops
        if step.op not in _INT32_TAIL:
            return None
        if step.op == "clip":
            lo, hi = max(step.attrs[0], int(_INT32.min)), min(step.attrs[1], int(_INT32.max))
            if lo > hi:  # both bounds beyond int32's range on one side
                return None
            out.append(EpilogueStep("clip", "int32", attrs=(lo, hi)))
            bound = max(abs(lo), abs(hi))
            continue
        v = _constants(step, c)
        if v is None or np.any(np.abs(v) >= (1 << 30)):
            return None
        bound = bound + int(np.abs(v).max()) if step.op in ("add", "subtract") else max(bound, int(np.abs(v).max()))
        if bound >= (1 << 31) - 1:
            return None
        out.append(EpilogueStep(step.op, "int32", step.operand, "int32", swap=step.swap))
        ops.append(v.astype(np.int32))
    return None


def _trailing_zeros(v: int) -> int:
    """The number of trailing zero bits of an integer (64 for 0: any shift keeps it a multiple)."""
    return (v & -v).bit_length() - 1 if v else 64


def _room(bound: int) -> int:
    """The largest t with |x| << t < 2**31 for every |x| <= bound."""
    return 30 - (max(int(bound), 1).bit_length() - 1)


def _column_plan(m: int, r: int, s: int, bound: int) -> tuple[int, int] | None:
    """(z, t) for one column of (x * m + r) >> s: x + z pre-shifted by t, with (r - z * m) << t a multiple of 2**32
    and s + t >= 32, |x + z| << t within int32; the least t with z = 0, else (a zero point folded into r) the z
    that makes r - z * m a multiple of 2**(32 - t) at the least t, when |z| stays small. None if neither fits."""
    t_min = max(0, 32 - s)
    t = max(t_min, 32 - _trailing_zeros(r))
    if t <= _room(bound):
        return 0, t
    k = 32 - t_min  # solve z * m = r (mod 2**k): m = 2**e * odd, r needs e trailing zeros too
    e = _trailing_zeros(m)
    if e >= k or r % (1 << e):
        return None
    mod = 1 << (k - e)
    z = ((r >> e) * pow(m >> e, -1, mod)) % mod
    z = z - mod if z >= mod // 2 else z
    if abs(z) >= (1 << 16) or t_min > _room(bound + abs(z)):
        return None
    return z, t_min


def pair_requant_steps(steps, operands, in_dtype: str, bound):
    """``steps`` starting with int64(x) * m + r >> s (then int64 steps up to a narrowing cast) as int32 steps with
    ``mulhi`` -> (steps, operands, steps consumed) or None; ``bound``: |x| at most (per column or one value).

    With x' = (x + z) << t, p = x' * m and h = p >> 32: (x * m + r) >> s == (h + ((r - z m) << t >> 32)) >>
    (s + t - 32) when (r - z m) << t is a multiple of 2**32 (the low 32 bits of p then cannot carry past the
    2**32's place: floor((N + f) / 2**k) = floor(N / 2**k) for an integer N and 0 <= f < 1) and s + t >= 32.
    Each column takes a plan (z, t) (``_column_plan``: z = 0 when a pre-shift makes r such a multiple, else a
    small z, the zero point integerize folded into r); x' must fit int32 and m be in [0, 2**31), so
    |h| <= 2**30. A column with m = 0 is the constant r >> s. Returns None when a column has no plan or the steps
    after the shift need int64."""
    if len(steps) < 5 or in_dtype not in ("int32", "int16", "int8"):
        return None
    head = steps[:4]
    if [st.op for st in head] != list(_REQUANT) or any(st.dtype != "int64" for st in head) or head[3].swap:
        return None
    if any(st.operand not in ("scalar", "vector") for st in head[1:]):
        return None
    m, r, sh = (_constants(st, c) for st, c in zip(head[1:], operands[:3]))
    m_b, r_b, s_b, b_b = (v.reshape(-1) for v in np.broadcast_arrays(m, r, sh, np.asarray(bound, np.int64)))
    if np.any((m_b < 0) | (m_b > int(_INT32.max)) | (s_b < 0) | (s_b > 62) | (r_b <= -(1 << 62)) | (r_b >= 1 << 62)):
        return None  # (|r| < 2**62: r - z m and its pre-shift below stay in int64)
    z, t, r2, s2 = (np.zeros(len(m_b), np.int64) for _ in range(4))
    for j, (mj, rj, sj, bj) in enumerate(zip(m_b.tolist(), r_b.tolist(), s_b.tolist(), b_b.tolist())):
        if mj == 0:  # a dead column: its constant r >> s, shift 0
            r2[j] = rj >> sj
            continue
        plan = _column_plan(mj, rj, sj, bj)
        if plan is None:
            return None
        z[j], t[j] = plan
        rest = (rj - plan[0] * mj) << plan[1]
        if abs(rest) >= 1 << 62:
            return None
        r2[j], s2[j] = rest >> 32, sj + plan[1] - 32
    if np.any(s2 > 31) or np.any(np.abs(r2) >= (1 << 30)):
        return None
    tail = _as_int32_tail(steps[4:], operands[3:], int(np.max(((1 << 30) + np.abs(r2)) >> s2)) + 1)
    if tail is None:
        return None
    new = [] if in_dtype == "int32" else [EpilogueStep("astype", "int32")]
    ops = []

    def emit(op, value, given_kind):  # a vector only if given one or the columns differ
        kind = "vector" if given_kind == "vector" or np.any(value != value.flat[0]) else "scalar"
        new.append(EpilogueStep(op, "int32", kind, "int32"))
        ops.append((value.reshape(-1) if kind == "vector" else value.reshape(-1)[:1]).astype(np.int32))

    if np.any(z):
        emit("add", z, "scalar")
    if np.any(t):
        emit("left_shift", t, "scalar")
    emit("mulhi", m_b, head[1].operand)
    emit("add", r2, head[2].operand)
    emit("right_shift", s2, head[3].operand)
    return new + tail[0], ops + tail[1], 4 + len(tail[0])


def pair_requantize(epi: Epilogue, operands: tuple, acc_bound=None) -> tuple[Epilogue, tuple]:
    """The chain with each requantization ``int64(x) * m + r >> s`` (then adds, clips, a narrowing cast) that
    qualifies (``pair_requant_steps``) computed in int32 with ``mulhi`` (schedules/intrinsics/mulhi.py): the same
    values bit for bit, in about half the instructions on x86 (16 int32 lanes per vector instead of 8 int64
    ones). ``acc_bound``: |accumulator| at most, per column (128 times the weight column's sum of magnitudes for
    an int8 activation) or one value. Steps that do not qualify, or that read a row or outer operand, are kept."""
    steps, ops = list(epi.steps), list(operands)
    per_step = [0 if not st.operand else 2 if st.operand == "outer" else 1 for st in steps]
    top = np.int64(_INT32.max)
    bound = np.minimum(np.asarray(top if acc_bound is None else acc_bound, np.int64), top)
    out_steps, out_ops, i, k, dtype = [], [], 0, 0, "int32"
    while i < len(steps):
        found = pair_requant_steps(steps[i:], ops[k:], dtype, bound)
        if found is not None:
            new_steps, new_ops, used = found
            out_steps += new_steps
            out_ops += new_ops
            k += sum(per_step[i:i + used])
            i += used
            bound = _bound_after(out_steps[-1], top)
        else:
            step, given = steps[i], ops[k:k + per_step[i]]
            out_steps.append(step)
            out_ops += given
            bound = _bound_through(step, given, bound, top)
            k += per_step[i]
            i += 1
        dtype = out_steps[-1].dtype
    return Epilogue(tuple(out_steps)), tuple(out_ops)


def _bound_after(step, top):
    """|value| at most after a narrowing cast (the end of a rewritten requantization)."""
    return np.int64(min(int(top), 1 << (np.dtype(step.dtype).itemsize * 8 - 1)))


def _bound_through(step, given, bound, top):
    """|value| at most after ``step`` (int32 adds of constants, clips, casts); ``top`` when unknown."""
    if step.op in ("add", "subtract") and step.dtype == "int32" and step.operand in ("scalar", "vector"):
        return np.minimum(bound + np.abs(np.asarray(given[0], np.int64)), top)
    if step.op == "clip":
        return np.minimum(bound, max(abs(int(step.attrs[0])), abs(int(step.attrs[1]))))
    if step.op == "astype" and step.dtype in ("int8", "int16"):
        return np.minimum(bound, _bound_after(step, top))
    if step.op == "astype" and step.dtype in ("int32", "int64"):
        return bound  # |value| <= bound < 2**31 survives either cast
    return top  # an unsigned cast (a negative value becomes a large one), any other op


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
           "fold_into_init", "operand_buffers", "pair_requantize", "with_epilogue"]
