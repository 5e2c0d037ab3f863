"""Make the buckets' copies of a kernel one kernel over a symbolic length, shared by every bucket.

A ranged library (compiler/ranged.py) holds one Relax function per length bucket, all built from the same graph,
so call site k of every bucket function runs the same operation at another length: the same loops, with the
bucket's size (and its multiples, quotients and the schedule's splits of it) written into the code. Compiled
apart, every bucket carried its own copy of every kernel (about 0.25 MB each for MiniLM), which is what bounded
the number of buckets under the size budget.

Expects: a module after share_kernels (scheduled PrimFuncs called through ``call_tir``) whose bucket functions
are named by `compiler.ranged.bucket_name`, with their sizes (`buckets`); their call sites line up one to one
(buckets whose call sites do not, a bucket of size 1 whose row ops fuse_rows grouped otherwise, share only with
the buckets that line up with them).
Guarantees: at each call site, the kernels that buckets differing along one ranged dim call there, when their
TVMScript is equal but for integer literals and variable names, become one kernel with an integer parameter
``n`` (int32 or int64 as the literals are; placed after its inputs) in which each differing literal is an exact
function ``(p*n + q) // d`` of the bucket's size along that dim, or of the size rounded up to a tile
(``ceil(n / c)`` for n); each call passes its bucket's size as a PrimValue. Kernels equal in every literal are
merged without a parameter. A shared kernel is used only if, specialized at each member's size and simplified,
it prints as the same TVMScript as that member simplified (but for variable names): each call computes what it
did before. Replaced kernels no call refers to are removed (exported ones included).
Kernels that differ in structure (a schedule that parallelizes only the longer buckets, say) stay apart, or
form their own shared kernel with the buckets they match.
"""

from __future__ import annotations

import io
import math
import re
import tokenize
from collections import defaultdict
from fractions import Fraction

import tvm
from tvm import relax

from compiler.tvm_compat import (
    PrimFunc,
    PyExprMutator,
    SBlock,
    dead_code_elimination,
    expr_functor_mutator,
    parse_prim_func,
    simplify_prim_func,
    structural_equal,
    tirx,
    walk_ir,
)

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_FIXED_LOOPS = (tirx.ForKind.VECTORIZED, tirx.ForKind.UNROLLED)
_DIVISIONS = (tirx.Div, tirx.Mod, tirx.FloorDiv, tirx.FloorMod)
# names the kernel's static shape (read by tuning, before this pass); the exported name (the shared kernel gets its own)
_DESCRIPTIVE_ATTRS = ("intformer.kernel", "global_symbol")
_DTYPE_NAME = re.compile(r"(u?int|float|bfloat)\d+(x\d+)?")


def _plain(func: PrimFunc) -> PrimFunc:
    for attr in _DESCRIPTIVE_ATTRS:
        if func.attrs is not None and attr in func.attrs:
            func = func.without_attr(attr)
    return func


def _script(func: PrimFunc) -> str:
    text = re.sub(r"def \w+\(", "def kernel(", _plain(func).script(), count=1)
    # 0.27 prints a one-element buffer's read region as `buf.source[0]` and its load as `buf`, neither of which
    # parses back; the check of the parsed kernel against each member confirms this reading of them
    text = re.sub(r"\b(\w+)\.source\[", r"\1[", text)
    for name in re.findall(r"(\w+): T\.Buffer\(\((?:T\.int64\()?1\)?,\)", text):
        text = re.sub(rf"\b{name}\b(?!\s*[\[:.])", f"{name}[0]", text)
    return text


class _Tokens:
    """A kernel's TVMScript split into tokens: the integer literals (with whether they are written as
    ``T.int64(k)``), and a key that is equal for two kernels equal but for those literals and variable names."""

    def __init__(self, text: str):
        self.text = text
        self.toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
        self.ints: list[tuple[int, int, bool]] = []  # (token index, value, written as T.int64(value))
        names: dict[str, str] = {}
        key = []
        for i, t in enumerate(self.toks):
            if t.type == tokenize.NUMBER and t.string.isdigit():
                wide = i >= 4 and [x.string for x in self.toks[i - 4:i]] == ["T", ".", "int64", "("]
                self.ints.append((i, int(t.string), wide))
                key.append("#")
            elif (t.type == tokenize.NAME and any(c.isdigit() for c in t.string)
                  and not _DTYPE_NAME.fullmatch(t.string) and not (i and self.toks[i - 1].string == ".")):
                key.append(names.setdefault(t.string, f"v{len(names)}"))
            else:
                key.append(t.string)
        self.key = "\x00".join(key)
        self._line_starts = [0]
        for line in text.splitlines(keepends=True):
            self._line_starts.append(self._line_starts[-1] + len(line))

    def offset(self, pos: tuple[int, int]) -> int:
        """Character offset in the text of a token's (row, column)."""
        return self._line_starts[pos[0] - 1] + pos[1]


def _fit(points: list[tuple[int, int]]) -> tuple[int, int, int, int] | None:
    """(c, p, q, d) with value == (p*ceil(size / c) + q) // d exactly at every (size, value), or None. c = 1
    is an affine function of the size; c > 1 a padded one (a dim rounded up to a tile or a vector, c | it)."""
    for c in (1, 2, 4, 8, 16, 32, 64):
        units = [(-(-s // c), v) for s, v in points]
        if len({u for u, _ in units}) < 2:
            continue
        (s1, v1), (s2, v2) = units[0], next(uv for uv in units if uv[0] != units[0][0])
        slope = Fraction(v2 - v1, s2 - s1)
        offset = v1 - slope * s1
        d = slope.denominator * offset.denominator // math.gcd(slope.denominator, offset.denominator)
        p, q = int(slope * d), int(offset * d)
        if all((p * u + q) % d == 0 and (p * u + q) // d == v for u, v in units):
            return c, p, q, d
    return None


def _expr(c: int, p: int, q: int, d: int, wide: bool, n_wide: bool) -> str:
    """TVMScript of (p*ceil(n / c) + q) // d in the literal's type: int64 where it was written T.int64(k), else
    int32; `n` is int64 when `n_wide` (a cast where the literal is int32)."""
    n = "T.int32(n)" if n_wide and not wide else "n"
    if c != 1:
        n = f"(({n} + {c - 1}) // {c})"
    text = n if p == 1 else f"{n} * {p}"
    if q:
        text = f"{text} + {q}" if q > 0 else f"{text} - {-q}"
    return f"(({text}) // {d})" if d != 1 else f"({text})"


def _symbolic(members: dict[int, PrimFunc], toks: dict[int, _Tokens], n_inputs: int) -> PrimFunc | None:
    """One kernel over `n` for {size: kernel} (same key; `toks`: their tokens), or None when no exact one
    exists."""
    sizes = sorted(members)
    first = toks[sizes[0]]
    changes = []
    for k, (i, _, wide) in enumerate(first.ints):
        values = [toks[s].ints[k][1] for s in sizes]
        if len(set(values)) == 1:
            continue
        fitted = _fit(list(zip(sizes, values)))
        if fitted is None:
            return None
        changes.append((i, wide, fitted))
    # n takes the literals' type (int32 for the project's GEMMs, int64 for Relax's kernels); int64 if they mix
    n_wide = any(wide for _, wide, _ in changes)
    edits = []
    for i, wide, fitted in changes:
        start, end = (first.toks[i - 4].start, first.toks[i + 1].end) if wide else (first.toks[i].start,
                                                                                     first.toks[i].end)
        edits.append((first.offset(start), first.offset(end), _expr(*fitted, wide, n_wide)))
    text = first.text
    for a, b, new in sorted(edits, reverse=True):
        text = text[:a] + new + text[b:]
    text = text.replace("def kernel(", f"def kernel(n: T.{'int64' if n_wide else 'int32'}, ", 1)
    try:
        func = parse_prim_func(text)
    except Exception:  # noqa: BLE001  (a kernel TVMScript does not read back: leave it per bucket)
        return None
    n_var, *rest = func.params
    func = PrimFunc([*rest[:n_inputs], n_var, *rest[n_inputs:]], func.body, func.ret_type, func.attrs)
    if _slower(func, n_var):
        return None
    for s in sizes:
        original = members[s]
        try:
            special = simplify_prim_func(func.specialize({n_var: tirx.IntImm(str(n_var.ty), s)}))
            # compared as TVMScript: a parsed buffer's type carries a layout object that specialize leaves
            # symbolic, which structural equality sees and the generated code does not
            a, b = _Tokens(_script(special)), _Tokens(_script(simplify_prim_func(original)))
            same = a.key == b.key and [v for _, v, _ in a.ints] == [v for _, v, _ in b.ints]
        except Exception:  # noqa: BLE001  (a form the simplifier rejects: not shown equal, so not shared)
            same = False
        if not same:
            return None
    return func


def _uses(expr, var) -> bool:
    found = []
    walk_ir(expr, lambda node: found.append(True) if isinstance(node, tirx.Var) and node.same_as(var) else None)
    return bool(found)


def _slower(func: PrimFunc, n) -> bool:
    """Whether a symbolic `n` cannot be, or would cost the kernel speed: a vectorized or unrolled loop of `n`
    iterations (the target has no scalable vectors), a division or remainder by a value of `n` (no longer a
    multiply and shift: the bucket's reshapes and slices index with them per element), or a scratch buffer with
    rows of `n` (measured: the softmax's scratch rows became allocations per task, 2x slower)."""
    slow = []

    def visit(node):
        if isinstance(node, _DIVISIONS) and _uses(node.b, n):
            slow.append(node)
        elif isinstance(node, tirx.For) and node.kind in _FIXED_LOOPS and _uses(node.extent, n):
            slow.append(node)
        elif isinstance(node, SBlock) and any(_row_sized(b, n) for b in node.alloc_buffers):
            slow.append(node)

    walk_ir(func.body, visit)
    return bool(slow)


def _row_sized(buffer, n) -> bool:
    """A scratch buffer whose rows are `n` long: its innermost dim (of more than one element) depends on `n`.
    The static kernel's scratch is compacted to what one task touches (a row); with `n` in the row, every task
    allocates. A buffer with `n` only in its outer dims still compacts to a fixed size per task."""
    dims = [d for d in buffer.ty.shape if not (isinstance(d, tirx.IntImm) and d.value == 1)]
    return bool(dims) and _uses(dims[-1], n)


def _tir_calls(func) -> list:
    """The ``call_tir`` calls of a Relax function, in binding order."""
    calls = []

    def visit(e):
        if isinstance(e, relax.Call) and e.op.same_as(_CALL_TIR):
            calls.append(e)

    relax.analysis.post_order_visit(func, visit)
    return calls


@expr_functor_mutator
class _Redirect(PyExprMutator):
    """The planned call sites of a function (see redirect_calls) -> their new kernels and arguments."""

    def __init__(self, mod, plan: dict):
        super().__init__(mod)
        self.plan = plan
        self.function = ""
        self.seen: dict = defaultdict(int)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if not call.op.same_as(_CALL_TIR):
            return call
        key = (self.function, call.args[0].name_hint)
        index = self.seen[key]
        self.seen[key] += 1
        target = self.plan.get((*key, index))
        if target is None:
            return call
        gv, extra = target
        fields = [*call.args[1].fields, *extra]
        return relax.Call(call.op, [gv, relax.Tuple(fields), *call.args[2:]], call.attrs, call.ty_args)


def redirect_calls(mod, plan: dict, names: list[str]):
    """`mod` with call sites of the functions `names` sent to other kernels: `plan` maps (function, call's
    kernel name, n-th call of that kernel in the function) -> (GlobalVar, arguments appended to the call's)."""
    mutator = _Redirect(mod, plan)
    for name in names:
        mutator.function = name
        gv = mod.get_global_var(name)
        mutator.builder_.update_func(gv, mutator.visit_expr(mod[gv]))
    return mutator.builder_.get()


def share_buckets(mod, buckets: list[dict[str, int]], names: list[str]):
    """The module with the buckets' kernels shared (see the module docstring); returns (module, kernels
    removed). `names[i]` is the function of `buckets[i]`."""
    if len(buckets) < 2:
        return mod, 0
    varying = [v for v in buckets[0] if len({b[v] for b in buckets}) > 1]
    if not varying:
        return mod, 0
    dim = max(varying, key=lambda v: len({b[v] for b in buckets}))  # the sequence, when it has the most sizes
    sites = {name: _tir_calls(mod[name]) for name in names}
    counts = {name: len(c) for name, c in sites.items()}
    if len(set(counts.values())) != 1:
        # a bucket of size 1 may group its row ops otherwise (fuse_rows drops unit axes): the buckets whose call
        # sites line up share among themselves
        total = 0
        for count in sorted(set(counts.values())):
            part = [(b, name) for b, name in zip(buckets, names) if counts[name] == count]
            if len(part) > 1:
                mod, removed = share_buckets(mod, [b for b, _ in part], [name for _, name in part])
                total += removed
        return mod, total
    bb = relax.BlockBuilder(mod)
    made: dict = {}  # members (as names) -> (GlobalVar, dtype of its n or None)
    plan: dict = {}
    tokens: dict = {}  # kernel name -> its _Tokens (a kernel shared by several sites is printed once)
    counters = {name: defaultdict(int) for name in names}
    for k in range(len(sites[names[0]])):
        groups: dict = defaultdict(dict)  # (other dims' sizes, inputs, key) -> {size: (function, kernel, n-th)}
        for b, name in zip(buckets, names):
            call = sites[name][k]
            gv = call.args[0]
            occurrence = counters[name][gv.name_hint]
            counters[name][gv.name_hint] += 1
            n_inputs = len(call.args[1].fields)
            other = tuple((v, b[v]) for v in b if v != dim)
            if gv.name_hint not in tokens:
                tokens[gv.name_hint] = _Tokens(_script(mod[gv]))
            groups[(other, n_inputs, tokens[gv.name_hint].key)][b[dim]] = (name, gv, occurrence)
        for (_, n_inputs, _), members in groups.items():
            if len(members) < 2:
                continue
            ident = tuple((s, gv.name_hint) for s, (_, gv, _) in sorted(members.items()))
            if ident not in made:
                made[ident] = _shared(bb, mod, members, tokens, n_inputs)
            gv_new, dtype = made[ident]
            if gv_new is None:
                continue
            for s, (name, gv, occurrence) in members.items():
                size = [relax.prim_value(tirx.IntImm(dtype, s))] if dtype else []
                plan[(name, gv.name_hint, occurrence)] = (gv_new, size)
    if not plan:
        return mod, 0
    out = bb.get()
    before = sum(1 for f in out.functions.values() if isinstance(f, PrimFunc))
    out = without_unused({kernel for _, kernel, _ in plan}, redirect_calls(out, plan, names))
    after = sum(1 for f in out.functions.values() if isinstance(f, PrimFunc))
    return out, before - after


def without_unused(replaced: set, mod):
    """`mod` after dead-code elimination, and without the replaced kernels no call refers to any more (an
    exported kernel, one with a global symbol, is an entry point to DCE and would stay)."""
    mod = dead_code_elimination()(mod)
    used = set()
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            for call in _tir_calls(func):
                used.add(call.args[0].name_hint)
    for gv in list(mod.get_global_vars()):
        if isinstance(mod[gv], PrimFunc) and gv.name_hint in replaced and gv.name_hint not in used:
            del mod[gv]
    return mod


def _shared(bb, mod, members: dict, tokens: dict, n_inputs: int):
    """(GlobalVar of the kernel shared by `members` {size: (function, kernel, occurrence)}, the dtype of its
    n or None when it takes none), or (None, None)."""
    funcs = {s: mod[gv] for s, (_, gv, _) in members.items()}
    first = funcs[min(funcs)]
    if all(structural_equal(_plain(f), _plain(first)) for f in funcs.values()):
        return members[min(members)][1], None
    func = _symbolic(funcs, {s: tokens[gv.name_hint] for s, (_, gv, _) in members.items()}, n_inputs)
    if func is None:
        return None, None
    gv = bb.add_func(func, f"{members[min(members)][1].name_hint}_n")
    if first.attrs is not None and "global_symbol" in first.attrs:  # exported under its own (unique) name
        bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    return gv, str(func.params[n_inputs].ty)


__all__ = ["redirect_calls", "share_buckets", "without_unused"]
