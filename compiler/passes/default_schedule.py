"""Deterministic default CPU schedules for the non-matmul integer kernels (no tuning).

Expects: a Relax module after LegalizeOps + FuseOps + FuseTIR (compiler/tvm_compat.py `fuse`), and an LLVM
target. PrimFuncs marked ``tir.is_scheduled`` (the int8 GEMM kernels of schedules/, records applied from a
MetaSchedule database) are not touched.
Guarantees: every other PrimFunc that one of the `RULES` matches gets a schedule derived only from the target
(vector width from its features, its number of cores) and the kernel's shapes, and is marked ``tir.is_scheduled``:
  * spatial producers are inlined into their consumers (one loop nest instead of one buffer per fused op);
  * the innermost output loop is vectorized (split to the native lane count of the widest integer the kernel
    computes in);
  * the outer loops are fused and run in parallel only when the kernel does at least `parallel_min_work`
    element operations (a fork-join costs microseconds; small kernels stay on one thread);
  * a row-wise kernel (softmax: max -> exp -> sum -> normalize; LayerNorm: mean -> variance -> normalize)
    runs its rows in parallel with every stage of a row computed under the row loop, inner loops vectorized
    (under its last stage's rows; under its first stage's when a stage before the last writes a result too);
  * a single reduction over a non-innermost axis (column sums) reduces with the columns as vector lanes.
The schedule only reorders, splits, inlines and annotates loops: results are bit-exact. A PrimFunc no rule
can handle (or whose scheduling raises) is left as it was and counted in a debug log line; the build never
fails because of this pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import tvm

from compiler.tvm_compat import IntImm, PrimFunc, Schedule, normalize_prim_func

log = logging.getLogger(__name__)

# Element operations below which a kernel stays on one thread: a fork-join of TVM's thread pool costs a few
# microseconds, a vectorized int64 element operation well under a nanosecond. Not swept yet: with it, MiniLM
# seq 128 runs 17.4 ms on 1 thread and 9.3 ms on 2 (AVX512-VNNI, 2 cores); candidates for a sweep are 2**12..2**16.
PARALLEL_MIN_WORK = 1 << 14
INLINE_MAX_COPY = 64  # expression nodes an inlined producer may be copied into (loads x its size)
INLINE_MAX_BLOCKS = 24
VECTOR_BITS_FALLBACK = 128  # a target whose LLVM reports no vector width (no SIMD feature given)


@dataclass(frozen=True)
class CpuParams:
    vector_bits: int
    cores: int
    parallel_min_work: int = PARALLEL_MIN_WORK


def cpu_params(target) -> CpuParams:
    from tvm.target.codegen import llvm_get_vector_width

    bits = int(llvm_get_vector_width(target))
    cores = int(target.attrs.get("num-cores", 1) or 1) if hasattr(target.attrs, "get") else 1
    return CpuParams(vector_bits=bits if bits > 0 else VECTOR_BITS_FALLBACK, cores=max(cores, 1))


# --- helpers over one schedule ------------------------------------------------------------------------------

def _extent(sch, loop) -> Optional[int]:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, IntImm) else None


def _region_buffer(region):
    buf = getattr(region, "source", None)  # 0.27 names a region's buffer `source`
    return buf if buf is not None else region.buffer


def _value_nodes(stmt):
    """(buffer loads, casts, node count) of a block's body: what its values are computed from."""
    from compiler.tvm_compat import Cast, TensorLoad, walk_ir

    loads, casts, n = [], [], [0]

    def visit(node):
        n[0] += 1
        if isinstance(node, TensorLoad):
            loads.append(node)
        elif isinstance(node, Cast):
            casts.append(node)

    walk_ir(stmt.body, visit)
    return loads, casts, n[0]


def _widest_bits(sch, block) -> int:
    """Bits of the widest integer the block loads, stores or casts to (its vector lanes follow from it)."""
    stmt = sch.get(block)
    loads, casts, _ = _value_nodes(stmt)
    dtypes = [_region_buffer(r).dtype for r in stmt.writes] + [ld.source.dtype for ld in loads]
    dtypes += [c.ty.dtype for c in casts]
    bits = [tvm.DataType(str(d)).bits for d in dtypes if str(d) != "bool"]
    return max(bits or [32])


def _lanes(p: CpuParams, bits: int, extent: Optional[int]) -> int:
    """Native lane count for `bits`, halved until it divides `extent` (1: do not vectorize)."""
    lanes = max(p.vector_bits // bits, 1)
    while lanes > 1 and (extent is None or extent % lanes):
        lanes //= 2
    return lanes


def _vectorize_inner(sch, block, p: CpuParams):
    """Split the block's innermost loop to its lane count and vectorize it; returns the remaining loops."""
    loops = sch.get_loops(block)
    lanes = _lanes(p, _widest_bits(sch, block), _extent(sch, loops[-1]))
    if lanes <= 1:
        return list(loops)
    if _extent(sch, loops[-1]) == lanes:
        sch.vectorize(loops[-1])
        return list(loops[:-1])
    outer, inner = sch.split(loops[-1], factors=[None, lanes])
    sch.vectorize(inner)
    return list(loops[:-1]) + [outer]


def _work(sch, block) -> int:
    n = 1
    for loop in sch.get_loops(block):
        n *= _extent(sch, loop) or 1
    return n


def _parallel(sch, loops, work: int, p: CpuParams):
    """Fuse `loops` into one; run it in parallel when the work pays for a fork-join."""
    if not loops:
        return None
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if p.cores > 1 and work >= p.parallel_min_work and (_extent(sch, fused) or 0) >= 2:
        sch.parallel(fused)
    return fused


def _inline_cost_ok(sch, block) -> bool:
    """Inlining copies the producer's expression once per load in each consumer: allow it when that stays small
    (chains such as isqrt's Newton steps read each value twice and would grow exponentially)."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        return False
    buf = _region_buffer(stmt.writes[0])
    uses = 0
    for consumer in sch.get_consumers(block):
        loads, _, _ = _value_nodes(sch.get(consumer))
        uses = max(uses, sum(1 for ld in loads if ld.source.same_as(buf)))
    return uses <= 1 or uses * _value_nodes(stmt)[2] <= INLINE_MAX_COPY


def _writes_output(sch, block, outputs) -> bool:
    return any(_region_buffer(w).same_as(b) for w in sch.get(block).writes for b in outputs)


def _wide(sch, block, depth: int) -> bool:
    """The block computes whole rows (it has the kernel's deepest loop nest), not a per-row scalar."""
    return len(sch.get_loops(block)) >= depth


def _inline(sch, blocks):
    """Inline spatial blocks into their consumers (or, failing that, into their producer) until none moves.
    In kernels with more than INLINE_MAX_BLOCKS blocks (LayerNorm with its isqrt chain of per-row scalars) only
    whole-row blocks are inlined, into their consumers: a per-row scalar costs nothing where it is, and each
    refused attempt costs a schedule error with the whole kernel printed in it. A block that would not move is
    not tried again."""
    blocks = list(blocks)
    many = len(blocks) > INLINE_MAX_BLOCKS
    func = sch.mod["main"]
    outputs = list(func.params)  # 0.27: the parameters are the buffers (no buffer_map)
    hows = (sch.compute_inline,) if many else (sch.compute_inline, sch.reverse_compute_inline)
    depth = max(len(sch.get_loops(b.block_rv)) for b in blocks) if blocks else 0
    rows = any(not b.is_injective() for b in blocks)  # a row kernel: its reductions read rows more than once
    refused: set = set()
    changed = True
    while changed:
        changed = False
        for i, b in enumerate(blocks):
            name = sch.get(b.block_rv).name_hint
            if name in refused or not b.is_injective() or many and not _wide(sch, b.block_rv, depth):
                continue
            if rows and len(sch.get_consumers(b.block_rv)) > 1:
                continue  # read by several stages of a row: computed once, kept for the row (in L1)
            for how in hows:
                if how == sch.compute_inline and (_writes_output(sch, b.block_rv, outputs)
                                                  or not _inline_cost_ok(sch, b.block_rv)):
                    continue
                try:
                    how(b.block_rv)
                except Exception:  # noqa: BLE001  (not inlinable: an output, a reduction's input, ...)
                    continue
                blocks.pop(i)
                changed = True
                break
            if changed:
                break
            refused.add(name)
    return blocks


# --- rules: (schedule, block infos after inlining, params) -> True if scheduled -----------------------------

def _elementwise(sch, blocks, p: CpuParams) -> bool:
    """One spatial loop nest: vectorize the innermost loop, the rest fused and parallel if large."""
    if len(blocks) != 1 or not blocks[0].is_injective():
        return False
    block = blocks[0].block_rv
    work = _work(sch, block)
    _parallel(sch, _vectorize_inner(sch, block, p), work, p)
    return True


def _leading_spatial(sch, blocks) -> int:
    """Leading loops that are spatial with the same extent in every block (the rows every block shares)."""
    n = None
    first = [_extent(sch, lp) for lp in sch.get_loops(blocks[-1].block_rv)]
    for b in blocks:
        kinds = b.dom_kind()
        ext = [_extent(sch, lp) for lp in sch.get_loops(b.block_rv)]
        lead = 0
        while lead < min(len(kinds), len(ext), len(first)) and kinds[lead] == "S" and ext[lead] == first[lead]:
            lead += 1
        n = lead if n is None else min(n, lead)
    return n or 0


def _lane_partials(sch, block, kinds: str, p: CpuParams):
    """A reduction over its innermost loop (max, sum of a row) split into one partial per vector lane: rfactor
    gives a block that reduces each lane's strided elements (vectorized once under the row loop) and leaves the
    original block to reduce the lane partials. The loop-carried scalar reduction LLVM would otherwise run costs
    a cycle or more per element. Returns (the partials block, its lane count), or None when the block does not
    qualify (several reduction axes, a row shorter than two vectors) or rfactor refuses it."""
    loops = sch.get_loops(block)
    n = _extent(sch, loops[-1])
    lanes = _lanes(p, _widest_bits(sch, block), n)
    if not kinds.endswith("R") or kinds.count("R") != 1 or lanes <= 1 or n is None or n < 2 * lanes:
        return None
    try:
        _, lane = sch.split(loops[-1], factors=[None, lanes])
        ndim = len(_region_buffer(sch.get(block).writes[0]).shape)
        return sch.rfactor(lane, factor_axis=ndim), lanes
    except Exception:  # noqa: BLE001  (not a recognized reducer, or an init rfactor cannot carry)
        return None


def _vectorize_partials(sch, rf, lanes: int, moved: bool = True):
    """The partials block under the row loop: its lane loop (extent `lanes`) moved innermost and vectorized.
    A block left where rfactor put it (the first block of a kernel scheduled from its first block's rows) has
    its lane loop innermost already."""
    loops = list(sch.get_loops(rf))
    if not moved:
        if _extent(sch, loops[-1]) == lanes:
            sch.vectorize(loops[-1])
        return
    lane = next((lp for lp in loops[1:] if _extent(sch, lp) == lanes), None)  # compute_at puts it first
    if lane is None:
        return
    if not lane.same_as(loops[-1]):
        sch.reorder(loops[-1], lane)
    sch.vectorize(sch.get_loops(rf)[-1])


def _rows(sch, blocks, p: CpuParams) -> bool:
    """Blocks sharing leading spatial axes (softmax, LayerNorm and its per-row isqrt chain): one parallel row
    loop, every block computed under it; spatial inner loops vectorized, row reductions reduced in vector lanes
    (`_lane_partials`) when the row holds at least two vectors."""
    single_reduction = len(blocks) == 1 and not blocks[0].is_injective()
    if not blocks or not single_reduction and (len(blocks) < 2 or not blocks[-1].is_injective()):
        return False
    lead = _leading_spatial(sch, blocks)
    if all(b.is_injective() for b in blocks):  # elementwise stages only: the innermost axis stays the vector
        lead = min(lead, len(sch.get_loops(blocks[-1].block_rv)) - 1)
    if lead <= 0:
        return False
    work = sum(_work(sch, b.block_rv) for b in blocks)
    order, partials = [], []  # blocks in dataflow order, a reduction's partials block right before it
    for b in blocks:
        rf = None
        if not b.is_injective() and len(sch.get_loops(b.block_rv)) == lead + 1 and not single_reduction:
            rf = _lane_partials(sch, b.block_rv, b.dom_kind(), p)
        if rf is not None:
            order.append(rf[0])
            partials.append(rf)
        order.append(b.block_rv)
    outputs = list(sch.mod["main"].params)
    if any(_writes_output(sch, b, outputs) for b in order[:-1]):
        # a result mid-row (a per-row scale the next matmul reads beside the row's int8 values): an output block
        # cannot move under a consumer's loop, so the first block's rows carry every later block instead. Each
        # later block must read a buffer computed here: one that reads only the kernel's inputs would run over
        # every row inside each row's iteration.
        if any(not sch.get_producers(b) for b in order[1:]):
            return False
        row = _parallel(sch, list(sch.get_loops(order[0])[:lead]), work, p)
        for b in order[1:]:
            sch.reverse_compute_at(b, row, preserve_unit_loops=True)
        inner = blocks
    else:
        last = order[-1]
        loops = sch.get_loops(last)
        if blocks[-1].is_injective() and len(loops) > lead:
            loops = _vectorize_inner(sch, last, p)
        row = _parallel(sch, list(loops[:lead]), work, p)
        for b in reversed(order[:-1]):
            sch.compute_at(b, row, preserve_unit_loops=True)
        inner = blocks[:-1]
    for b in inner:
        if b.is_injective() and len(sch.get_loops(b.block_rv)) > 1:
            _vectorize_inner(sch, b.block_rv, p)
    for rf, lanes in partials:
        _vectorize_partials(sch, rf, lanes, moved=not rf.same_as(order[0]))
    return True


def _columns(sch, blocks, p: CpuParams) -> bool:
    """One reduction over an axis that is not the input's innermost (column sums: ``sum(x, axis=-2)``, the
    zero-point corrections of the attention products): the reduction loop moved outside the innermost spatial
    axis, which becomes the vector (each lane sums its own column, contiguous loads); the outer spatial loops
    parallel. The "rows" rule would reduce each column as a strided scalar loop."""
    if len(blocks) != 1 or blocks[0].is_injective():
        return False
    block = blocks[0].block_rv
    kinds = blocks[0].dom_kind()
    if kinds.count("R") != 1 or not kinds.endswith("R") or "S" not in kinds:
        return False
    stmt = sch.get(block)
    last = stmt.iter_vars[len(kinds) - 2].var  # the innermost spatial axis
    if not any(r.region and r.region[-1].min.same_as(last) for r in stmt.reads):
        return False
    *outer, col, red = sch.get_loops(block)
    lanes = _lanes(p, _widest_bits(sch, block), _extent(sch, col))
    if lanes <= 1:
        return False
    work = _work(sch, block)
    col_out, col_in = sch.split(col, factors=[None, lanes])
    sch.reorder(col_out, red, col_in)
    sch.vectorize(col_in)  # before decompose_reduction: vectorize needs the reduction block whole
    _parallel(sch, [*outer, col_out], work, p)
    init = sch.decompose_reduction(block, red)
    sch.vectorize(sch.get_loops(init)[-1])
    return True


def _per_block(sch, blocks, p: CpuParams) -> bool:
    """Anything else (e.g. LayerNorm's isqrt chain: many per-row scalar blocks): each block on its own, spatial
    inner loops vectorized, leading spatial loops parallel when that block's work is large enough."""
    for b in blocks:
        work = _work(sch, b.block_rv)
        kinds = b.dom_kind()
        if b.is_injective():
            _parallel(sch, _vectorize_inner(sch, b.block_rv, p), work, p)
        elif kinds.startswith("S"):
            lead = len(kinds) - len(kinds.lstrip("S"))
            _parallel(sch, list(sch.get_loops(b.block_rv)[:lead]), work, p)
    return True


RULES: dict[str, Callable] = {"elementwise": _elementwise, "columns": _columns, "rows": _rows,
                              "per_block": _per_block}


def schedule_primfunc(func, p: CpuParams):
    """(scheduled PrimFunc, rule name), or (None, reason) when no rule applies."""
    failed = None
    for name, rule in RULES.items():  # each rule on a fresh schedule: one that raises hands over to the next
        sch = Schedule(func)
        blocks = normalize_prim_func(sch)
        if not blocks:
            return None, "not normalizable"
        blocks = _inline(sch, blocks)
        try:
            if rule(sch, blocks, p):
                return sch.mod["main"], name
        except Exception as e:  # noqa: BLE001
            failed = e
    if failed is not None:
        raise failed
    return None, "no rule"


def apply_default_schedules(mod, target, params: Optional[CpuParams] = None):
    """Schedule every unscheduled PrimFunc of `mod` for `target` (see the module docstring); returns a new module."""
    p = params or cpu_params(target)
    out = mod.clone()  # attributes and global infos kept; functions replaced below
    counts: dict[str, int] = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, PrimFunc) or func.attrs is not None and func.attrs.get("tir.is_scheduled"):
            continue
        try:
            new, why = schedule_primfunc(func, p)
        except Exception as e:  # noqa: BLE001  (a rule that fails leaves the kernel unscheduled, never the build)
            new, why = None, f"error: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
        counts[why] = counts.get(why, 0) + 1
        if new is not None:
            out[gv] = new.with_attr("tir.is_scheduled", True)
        else:
            log.debug("default schedule: left %s as is (%s)", gv.name_hint, why)
    log.debug("default schedules: %s", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return out
