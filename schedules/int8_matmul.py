"""Int8 matmul kernels with deterministic default schedules (no tuning): the lowering of integer MatMuls.

Expects: Relax int8 tensors of static shape; ``w_q`` a constant int8 (K, N) NumPy array; an LLVM target given in
TVM's dict form, e.g. ``{"kind": "llvm", "mcpu": "rocketlake", "mtriple": "x86_64-linux-gnu", "num-cores": 2}``.

Guarantees:
- ``emit_int8_matmul`` / ``emit_int8_batch_matmul`` return an int32 Relax expression equal bit for bit to
  ``a.astype(int32) @ b.astype(int32)`` (int32 wrap-around, as NumPy does); given ``active`` (a ranged
  library's length), only the rows up to it rounded up to the row tile, the later rows zeros.
- Each emits one ``call_tir`` to a PrimFunc that is already scheduled (tiled from the target's vector width,
  tensorized with a dot-product intrinsic where the ISA has one, outer loop parallel over TVM's thread pool).
  The PrimFunc carries ``op_pattern = kOpaque`` and ``tir.is_scheduled``, so the default Relax pipeline
  (``tvm.compile``: LegalizeOps, AnnotateTIROpPattern, FuseOps, FuseTIR) neither fuses nor re-lowers it.
- The kernel is chosen by target features (and, for ARM, the aarch64 triple) through ``INTRINSICS``, ordered by
  preference, "generic" last: AVX512-VNNI (zmm ``vpdpbusd``), AVX-VNNI (ymm ``vpdpbusd``), I8MM (``smmla``),
  dotprod (``sdot``), AVX2 (ymm ``vpmaddwd`` on int16, exact), NEON (``smull`` + ``sadalp``, exact), else a
  vectorized int32 kernel (any LLVM target, e.g. 32-bit ARM). The batch kernel packs B at run time into words of
  k_group bytes for the first kernel with ``runtime_pack`` (VNNI, dotprod, NEON; I8MM targets use ``sdot``),
  else the vectorized int32 kernel.
- On CPUs with AMX-INT8 the first entry, "amx", is a tile kernel (schedules/amx_gemm.py: ``tdpbssd``, s8 x s8)
  for both the GEMM and the batch matmul; it is fixed (no register tile to choose, not tuned) and writes the
  batch result unpadded.

With an ``Epilogue`` (schedules/gemm_epilogue.py: the requantize chain after the matmul, a lookup, ...),
``emit_int8_matmul`` emits one kernel that applies it to each register tile right after the tile's k loop (the
accumulators stay in "local" registers: the dot intrinsics' ``local_name`` variants) and writes the (M, N)
result of the epilogue's type directly, unpadded (no int32 tensor, no slice). Its ``intformer.epilogue``
attribute lets tuning rebuild it with a tuned tile (schedules/tune.py).

The VNNI kernels compute ``(a + 128) (u8) x w (s8)`` and subtract the compile-time constant
``128 * colsum(w)`` by starting each output tile's accumulation from it. The ARM kernels are s8 x s8 (no offset).
Weights are packed at compile time into each intrinsic's block, ``pack_weight(w, lanes, k_group)``: (N/16, K/4,
16, 4) for zmm VNNI, (N/4, K/4, 4, 4) for sdot, (N/4, K/2, 4, 2) for NEON, (N/2, K/8, 2, 8) for smmla (two output
columns of 8 k each). smmla also packs the activation rows in pairs, (M/2, K/8, 2, 8), and accumulates each
register tile in 2x2 blocks (a "local" buffer LLVM keeps in q registers) unpacked to row-major after the k loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from tvm import relax

from compiler.tvm_compat import (
    SBlock,
    SBlockRealize,
    Schedule,
    const,
    llvm_cpu_has_features,
    llvm_triple,
    make_target,
    mutate_ir,
    tensor_info,
    tensor_type,
    tir_script as T,
    tirx,
    visit_ir,
)
from schedules import amx_gemm
from schedules.gemm_epilogue import EPILOGUE_ATTR, EPILOGUE_BLOCK, Epilogue, fold_into_init, with_epilogue
from schedules.intrinsics.arm_dot import NEON_4x2, SDOT_4x4, SMMLA_2x2x8
from schedules.intrinsics.dot import DotIntrin, packed_word
from schedules.intrinsics.x86_avx2 import PMADDWD_8x2
from schedules.intrinsics.x86_vnni import AVXVNNI_8x4, VNNI_16x4

KERNEL_ATTR = "intformer.kernel"  # "gemm M K N" / "bmm BT M K N": how schedules/tune.py rebuilds the compute
FIXED_ATTR = "intformer.fixed"  # a kernel tuning leaves alone, and why (the AMX tile kernels)
AMX_FIXED = "AMX tiles"
ROWS_FREE_FIXED = "one schedule for every length of a ranged library"
OP_PATTERN_OPAQUE = 8  # relax OpPatternKind::kOpaque: FuseOps leaves the call alone
ACT_OFFSET = 128  # int8 activation + 128 = uint8 operand of vpdpbusd
MAX_TILE_ROWS = 12
PAD_PENALTY = 0.97  # a tile that pads M rows also pays a strided_slice copy of the output
L2_WEIGHT_BYTES = 1 << 20  # weights up to this size stay in L2 across calls (half a 2 MiB L2)
MIN_ROW_TILES = 8  # splitting M across threads needs enough row tiles to balance
KERNEL_PREFIX = "intformer_qgemm_"  # every GEMM kernel's name (compiler/passes/bound_rows.py reads it)
BATCH_PREFIX = "intformer_qbmm_"  # every batch GEMM kernel's name (activation x activation, no epilogue)
ROWS_FREE_M = 4  # a rows-free kernel (several lengths, compiler/passes/share_buckets.py): the tile for 4 rows
# (a bucket it does not divide, the range's top, say, pads its output and slices it); told the input's length
# (with_active_rows), a kernel with a 4-row tile computes the whole tiles and a remainder of 1-2 rows in one
# 2-row tile (3 rows: one more 4-row tile; a 2-row tile, AVX2's at N >= 32, has no tail). Zen 4, 40x384x1536
# alone: 4x4 accumulators 104.2 us, 8x3 103.6, 2x8 107.8.
LOAD_COST = 0.25  # per operand load of a k step, in units of one dot-product instruction


@dataclass(frozen=True)
class GemmKernel:
    """How one ISA runs an int8 GEMM: the weight packing and the register tile of the micro-kernel.

    ``lanes`` int32 outputs per vector, ``k_group`` products summed per output lane per instruction, ``registers``
    vector registers (the accumulator tile leaves room for weights and a broadcast). The activation operand is
    ``act_dtype``; a non-zero ``act_offset`` (VNNI: u8 x s8) is added to it and compensated by a bias of
    ``-act_offset * colsum(w)``, the reduction's initial value. ``rows`` output rows per accumulator vector:
    1 for dot products (a broadcast activation group), 2 for ``smmla`` (a 2 x ``lanes`` block from two activation
    rows, packed in pairs by the "a_in" stage). ``runtime_pack``: the batch kernel may pack B at run time into
    words of ``k_group`` bytes for this intrinsic (``DotIntrin.word_name``); otherwise it uses another kernel.
    """

    isa: str
    lanes: int
    k_group: int
    registers: int
    intrin: DotIntrin | None = None
    act_dtype: str = "int8"
    act_offset: int = 0
    scratch: int = 0  # extra vector registers per step (vpmaddwd, smull need one or two before the add)
    rows: int = 1
    runtime_pack: bool = False
    tiles: bool = False  # a matrix-tile unit (AMX): built whole by schedules/amx_gemm.py, not tensorized or tuned
    pair_mulhi: bool = False  # requantize epilogues in int32 with mulhi (gemm_epilogue.pair_requantize): x86

    def register_budget(self) -> int:
        """Vector registers the accumulator tile may take (the rest: weights, the broadcast, scratch)."""
        return (self.registers - 8 if self.registers >= 32 else self.registers - 4) - self.scratch

    def tile(self, n_blocks: int, m: int) -> tuple[int, int]:
        """(rows mr, vectors nr) of the accumulator tile: mr a multiple of ``rows``, (mr / rows) * nr accumulator
        vectors within the register budget, nr dividing n_blocks (the N/lanes weight blocks). Score: accumulators
        (instructions per k step), discounted by the rows padded when mr does not divide m (and a little more:
        padding costs a slice copy), minus the mr / rows + nr loads per k step (a thin tile is load-bound)."""
        budget = self.register_budget()
        r = self.rows

        def score(mr_nr):
            mr, nr = mr_nr
            padded = _round_up(m, mr)
            return (mr // r) * nr * m / padded * (1.0 if padded == m else PAD_PENALTY) - LOAD_COST * (mr // r + nr), nr

        options = [(mr, nr) for nr in (4, 3, 2, 1) if n_blocks % nr == 0
                   for mr in range(r, min(MAX_TILE_ROWS, _round_up(m, r), max(1, budget // nr) * r) + 1, r)]
        return max(options, key=score)


# Ordered by preference; the first whose features (and architecture) the target has wins, "generic" always matches.
INTRINSICS: dict[str, GemmKernel] = {
    "amx": GemmKernel("amx", 16, 4, 8, runtime_pack=True, tiles=True, pair_mulhi=True),
    "avx512vnni": GemmKernel("avx512vnni", 16, 4, 32, VNNI_16x4, act_dtype="uint8", act_offset=ACT_OFFSET,
                             runtime_pack=True, pair_mulhi=True),
    "avxvnni": GemmKernel("avxvnni", 8, 4, 16, AVXVNNI_8x4, act_dtype="uint8", act_offset=ACT_OFFSET,
                          runtime_pack=True, pair_mulhi=True),
    "i8mm": GemmKernel("i8mm", 2, 8, 32, SMMLA_2x2x8, rows=2),
    "dotprod": GemmKernel("dotprod", 4, 4, 32, SDOT_4x4, runtime_pack=True),
    "avx2": GemmKernel("avx2", 8, 2, 16, PMADDWD_8x2, act_dtype="int16", scratch=1, pair_mulhi=True),
    "neon": GemmKernel("neon", 4, 2, 32, NEON_4x2, scratch=2, runtime_pack=True),
    "generic": GemmKernel("generic", lanes=16, k_group=1, registers=32),
}
# LLVM features each ISA needs (default: its own name).
_REQUIRES: dict[str, tuple[str, ...]] = {"avx512vnni": ("avx512vnni", "avx512bw"), "amx": amx_gemm.FEATURES}
# Target architectures (mtriple prefixes) an ISA's code is for; the LLVM intrinsics exist for that backend only
# ("neon" is also a 32-bit ARM feature, whose backend has other intrinsic names).
_AARCH64 = ("aarch64", "arm64")
_ARCH: dict[str, tuple[str, ...]] = {"i8mm": _AARCH64, "dotprod": _AARCH64, "neon": _AARCH64, "amx": ("x86_64",)}
# Vector width of the generic kernel by the widest feature the target has.
_GENERIC_WIDTH: dict[str, tuple[int, int]] = {"avx512bw": (16, 32), "avx2": (8, 16), "neon": (4, 32)}


def _has(target, features) -> bool:
    try:
        return llvm_cpu_has_features(features, target)
    except Exception:  # noqa: BLE001  (non-x86 triples raise on unknown x86 feature names)
        return False


def _matches(isa: str, target) -> bool:
    arch = _ARCH.get(isa)
    return (arch is None or llvm_triple(target).startswith(arch)) and _has(target, _REQUIRES.get(isa, (isa,)))


@cache
def _select(target_json: str, target, batch: bool = False) -> GemmKernel:
    for isa, kernel in INTRINSICS.items():
        if isa == "generic":
            break
        if (kernel.runtime_pack or not batch) and _matches(isa, target):
            return kernel
    for feature, (lanes, regs) in _GENERIC_WIDTH.items():
        if _has(target, (feature,)):
            return GemmKernel("generic", lanes=lanes, k_group=1, registers=regs)
    return GemmKernel("generic", lanes=4, k_group=1, registers=16)


def select_kernel(target) -> GemmKernel:
    """The GemmKernel for an LLVM target (a tvm Target or its dict form), by its features, from ``INTRINSICS``."""
    if isinstance(target, dict):
        target = make_target(target)
    return _select(str(target), target)


def select_batch_kernel(target) -> GemmKernel:
    """The kernel of the batch matmul (B packed at run time): the first of ``INTRINSICS`` the target has that
    supports run-time packing (i8mm targets use SDOT), else the generic kernel."""
    if isinstance(target, dict):
        target = make_target(target)
    return _select(str(target), target, True)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def default_tile(kern: GemmKernel, m: int, n: int, rows_free: bool = False, batch: bool = False) -> tuple[int, int]:
    """(mr, nr) of a kernel's register tile. ``rows_free`` (a library of several lengths): the same tile at every
    length, the one for ``ROWS_FREE_M`` rows; a batch kernel's N may be the length too, so one column vector."""
    if not rows_free:
        return kern.tile(_round_up(n, kern.lanes) // kern.lanes, m)
    if batch:
        return kern.tile(1, ROWS_FREE_M)
    return kern.tile(_round_up(n, kern.lanes) // kern.lanes, ROWS_FREE_M)


def pack_weight(w_q: np.ndarray, lanes: int = 16, k_group: int = 4) -> np.ndarray:
    """int8 (K, N) -> int8 (N'/lanes, K'/k_group, lanes, k_group), N' and K' padded with zeros to multiples.

    Element [nb, kb, i, j] is w[kb * k_group + j, nb * lanes + i]: each (lanes, k_group) block is the contiguous
    operand of one dot-product instruction.
    """
    w = np.asarray(w_q)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"pack_weight expects an int8 (K, N) array, got {w.dtype} {w.shape}")
    k, n = w.shape
    kp, np_ = _round_up(k, k_group), _round_up(n, lanes)
    padded = np.zeros((kp, np_), np.int8)
    padded[:k, :n] = w
    return np.ascontiguousarray(padded.reshape(kp // k_group, k_group, np_ // lanes, lanes).transpose(2, 0, 3, 1))


def weight_correction(w_q: np.ndarray, offset: int = ACT_OFFSET) -> np.ndarray:
    """int32 (N,): offset * colsum(w), what (a + offset) @ w adds over a @ w."""
    return (np.asarray(w_q, np.int64).sum(axis=0) * offset).astype(np.int32)


# ---------------------------------------------------------------------------------------------------------
# PrimFunc builders: TVMScript compute over the packed layout, then the default schedule.


def _gemm_compute(m: int, k: int, n: int, kern: GemmKernel, mr: int):
    """The unscheduled PrimFunc over the packed weight; out is (Mp, Np), padded to the tile / lanes (the caller
    slices). Stage "a_in" makes the activation operand (padded; + 128 as uint8 for VNNI), stage "out" reduces.

    VNNI: out = bias + sum_k (a + 128)_u8 * w_s8 with bias = -128 colsum(w) as the reduction's init value: the
    tile accumulates in registers straight into ``out``, no write-back stage. Otherwise out = sum_k a * w with a
    converted to the kernel's act_dtype (int16 for vpmaddwd).
    (TVMScript, not TE: te.create_prim_func drops a tensor-valued reduction init and writes 0.)
    """
    lanes, kg = kern.lanes, kern.k_group
    kp, np_, mp = _round_up(k, kg), _round_up(n, lanes), _round_up(m, mr)
    nb, kb = np_ // lanes, kp // kg
    if kern.rows > 1:
        return _gemm_compute_blocked(m, k, n, kern, mr)
    if not kern.act_offset:
        a_dtype = kern.act_dtype

        @T.prim_func(s_tir=True)
        def plain(a: T.Buffer((m, k), "int8"), w_packed: T.Buffer((nb, kb, lanes, kg), "int8"),
                  out: T.Buffer((mp, np_), "int32")):
            T.func_attr({"tirx.noalias": True})
            a_in = T.sblock_alloc_buffer((mp, kp), a_dtype)
            for i, r in T.grid(mp, kp):
                with T.sblock("a_in"):
                    vi, vr = T.axis.remap("SS", [i, r])
                    T.reads(a[vi, vr])
                    a_in[vi, vr] = T.if_then_else(vi < m and vr < k, T.Cast(a_dtype, a[vi, vr]), T.Cast(a_dtype, 0))
            for i, j, r in T.grid(mp, np_, kp):
                with T.sblock("out"):
                    vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                    with T.init():
                        out[vi, vj] = 0
                    out[vi, vj] = out[vi, vj] + T.Cast("int32", a_in[vi, vr]) * T.Cast(
                        "int32", w_packed[vj // lanes, vr // kg, vj % lanes, vr % kg])

        return plain

    @T.prim_func(s_tir=True)
    def vnni(a: T.Buffer((m, k), "int8"), w_packed: T.Buffer((nb, kb, lanes, kg), "int8"),
             w_bias: T.Buffer((np_,), "int32"), out: T.Buffer((mp, np_), "int32")):
        T.func_attr({"tirx.noalias": True})
        a_in = T.sblock_alloc_buffer((mp, kp), "uint8")
        for i, r in T.grid(mp, kp):
            with T.sblock("a_in"):
                vi, vr = T.axis.remap("SS", [i, r])
                T.reads(a[vi, vr])
                a_in[vi, vr] = T.if_then_else(
                    vi < m and vr < k, T.Cast("uint8", a[vi, vr]) ^ T.uint8(ACT_OFFSET), T.uint8(0))
        for i, j, r in T.grid(mp, np_, kp):
            with T.sblock("out"):
                vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                # w_bias left out of the reads: only the init reads it, and the update must match the intrinsic.
                T.reads(out[vi, vj], a_in[vi, vr], w_packed[vj // lanes, vr // kg, vj % lanes, vr % kg])
                T.writes(out[vi, vj])
                with T.init():
                    out[vi, vj] = w_bias[vj]
                out[vi, vj] = out[vi, vj] + T.Cast("int32", a_in[vi, vr]) * T.Cast(
                    "int32", w_packed[vj // lanes, vr // kg, vj % lanes, vr % kg])

    return vnni


def _gemm_compute_blocked(m: int, k: int, n: int, kern: GemmKernel, mr: int):
    """The compute of a matrix-multiply-accumulate intrinsic (``smmla``: C (rows x lanes) += A (rows x k_group) .
    B^T (lanes x k_group)): "a_in" packs the activation rows in blocks ``(Mp/rows, Kp/kg, rows, kg)``, "out"
    accumulates into ``acc`` blocks ``(Mp/rows, Np/lanes, rows, lanes)`` (one accumulator register each), and
    "unpack" writes them to the row-major out. The schedule keeps each tile's ``acc`` in registers."""
    r, lanes, kg = kern.rows, kern.lanes, kern.k_group
    kp, np_, mp = _round_up(k, kg), _round_up(n, lanes), _round_up(m, mr)
    nb, kb, mb = np_ // lanes, kp // kg, mp // r

    @T.prim_func(s_tir=True)
    def blocked(a: T.Buffer((m, k), "int8"), w_packed: T.Buffer((nb, kb, lanes, kg), "int8"),
                out: T.Buffer((mp, np_), "int32")):
        T.func_attr({"tirx.noalias": True})
        a_in = T.sblock_alloc_buffer((mb, kb, r, kg), "int8")
        acc = T.sblock_alloc_buffer((mb, nb, r, lanes), "int32")
        for ib, rb, ii, rk in T.grid(mb, kb, r, kg):
            with T.sblock("a_in"):
                vib, vrb, vii, vrk = T.axis.remap("SSSS", [ib, rb, ii, rk])
                T.reads(a[vib * r + vii, vrb * kg + vrk])
                a_in[vib, vrb, vii, vrk] = T.if_then_else(vib * r + vii < m and vrb * kg + vrk < k,
                                                          a[vib * r + vii, vrb * kg + vrk], T.int8(0))
        for i, j, rr in T.grid(mp, np_, kp):
            with T.sblock("out"):
                vi, vj, vr = T.axis.remap("SSR", [i, j, rr])
                with T.init():
                    acc[vi // r, vj // lanes, vi % r, vj % lanes] = 0
                acc[vi // r, vj // lanes, vi % r, vj % lanes] = acc[vi // r, vj // lanes, vi % r, vj % lanes] + T.Cast(
                    "int32", a_in[vi // r, vr // kg, vi % r, vr % kg]) * T.Cast(
                    "int32", w_packed[vj // lanes, vr // kg, vj % lanes, vr % kg])
        for i, j in T.grid(mp, np_):
            with T.sblock("unpack"):
                vi, vj = T.axis.remap("SS", [i, j])
                out[vi, vj] = acc[vi // r, vj // lanes, vi % r, vj % lanes]

    return blocked


def _schedule_gemm(func, kern: GemmKernel, mr: int, nr: int, intrin: str | None = None,
                   m_split: bool | None = None, rows_free: bool = False):
    """Tile out (batch..., i, j, r) into (mr x nr*lanes) register tiles, tensorize, parallelize; vectorize the
    operand-preparation stages. A blocked kernel (``rows`` > 1, smmla) accumulates each tile in a local ``acc``
    (registers) and unpacks it into out after the tile's k loop. ``func`` is a PrimFunc or a Schedule
    (MetaSchedule's, when tuning: schedules/tune.py chooses mr, nr and m_split); ``m_split`` None: chosen from
    the weight size. ``rows_free``: no loop order, parallel split or vector width that depends on the row count
    M (nor, in a batch kernel, on N), so the kernels of different lengths differ only in loop extents and
    shapes (compiler/passes/share_buckets.py makes them one): the parallel loop over column tiles, each running
    its row tiles with its (K x nr*lanes) weight panel in cache (measured, Zen 4, 40x384x1536 with 16 weight
    sets in turn, as in a model: 106 us; row tiles outside column tiles, which streams the whole weight from L3
    for the first row tile, 121 us), or over the batch in a batch kernel. (A batch kernel's operand conversion is
    vectorized when K is a multiple of 16: where K is the length, P.V, lengths fall into up to three kernels.)"""
    s = func if isinstance(func, Schedule) else Schedule(func)
    epilogue = _has_block(s, EPILOGUE_BLOCK)
    if epilogue and kern.rows > 1:
        s.compute_inline(s.get_sblock("unpack"))  # the epilogue reads the accumulator blocks directly
    out = s.get_sblock("out")
    *batch, i, j, r = s.get_loops(out)
    w_bytes = s.get(r).extent.value * s.get(j).extent.value  # before split: split retires the loops
    if kern.rows > 1:
        io, iv, ii = s.split(i, [None, mr // kern.rows, kern.rows])
    else:
        io, ii = s.split(i, [None, mr])
        iv = ii
    jo, jv, ji = s.split(j, [None, nr, kern.lanes])
    ro, ri = s.split(r, [None, kern.k_group])
    # Small weights (they stay in L2 between calls): threads split M, each converting and reading only its own
    # rows of A. Large weights: N tiles outer, a thread keeps its (K x nr*lanes) weight panel in cache across
    # M tiles, and A is converted once, serially.
    if m_split is None:
        m_split = w_bytes <= L2_WEIGHT_BYTES and s.get(io).extent.value >= MIN_ROW_TILES
    m_split = m_split and not batch and not rows_free
    outer = (io, jo) if m_split or (rows_free and batch) else (jo, io)
    if kern.rows > 1:
        s.reorder(*outer, ro, iv, jv, ii, ji, ri)  # (ii, ji, ri) is the intrinsic's (rows, lanes, k_group) block
    elif kern.intrin is not None:
        s.reorder(*outer, ro, ii, jv, ji, ri)  # (ji, ri) is the intrinsic's (lanes, k_group) block
    else:
        s.reorder(*outer, ro, ri, ii, jv, ji)  # k_group == 1: ji is a plain int32 vector
    tail = EPILOGUE_BLOCK if epilogue else "unpack" if kern.rows > 1 else None
    if tail is not None:  # the tile, right after its k loop, reads the accumulators: they stay in registers
        s.reverse_compute_at(s.get_sblock(tail), outer[-1])
        s.set_scope(out, 0, "local")  # compacted to the tile
        if kern.intrin is not None and kern.rows == 1:
            intrin = intrin or kern.intrin.local_name  # the dot product accumulating into a "local" C
    # Parallel (and compute_at) before tensorize: they need the reduction block still whole.
    if rows_free:
        s.parallel(s.fuse(*batch) if batch else jo)
    else:
        s.parallel(io if m_split else s.fuse(*batch, jo, io))
    if kern.intrin is None:
        s.vectorize(ji)  # like parallel: before decompose_reduction
    init = s.decompose_reduction(out, ro)
    if kern.intrin is not None:
        s.tensorize(ii if kern.rows > 1 else ji, intrin or kern.intrin.name)
    s.unroll(iv)
    s.unroll(jv)
    # Init fully unrolled too: every access to the (mr, nr*lanes) tile has a constant offset, so LLVM keeps the
    # tile in vector registers across the k loop.
    init_loops = s.get_loops(init)
    if kern.rows > 1:
        *_, iv0, jv0, ii0, ji0 = init_loops
        ji0 = s.fuse(ii0, ji0)  # one (rows, lanes) accumulator block
    else:
        *_, iv0, jv0, ji0 = init_loops
    if epilogue:
        _schedule_epilogue(s, kern.lanes * (nr if kern.rows > 1 else 1))
    elif kern.rows > 1:
        for loop in s.get_loops(s.get_sblock("unpack"))[-2:]:
            s.unroll(loop)
    s.unroll(iv0)
    s.unroll(jv0)
    s.vectorize(ji0)
    # M split: converted in parallel by rows, the same static split as the main loop, so each thread converts
    # the rows it reads. Otherwise serial: converting M*K bytes costs less than a second fork-join.
    if batch and rows_free:  # parallel over the batch, the rows and columns of each kept apart (no divisor)
        _schedule_per_batch(s, "a_in", 16)
        if _has_block(s, "b_pack"):
            _schedule_per_batch(s, "b_pack", kern.lanes)
        if _has_block(s, "b_bias"):
            _schedule_colsum(s, "b_bias", kern.lanes, per_batch=True)
        return s.mod["main"]
    if kern.rows > 1:
        _schedule_row_blocks(s, "a_in", parallel=m_split)
    else:
        _schedule_elementwise(s, "a_in", parallel=m_split)
    if _has_block(s, "b_pack"):
        _schedule_elementwise(s, "b_pack", kern.lanes)  # one vector = one row segment of B
    if _has_block(s, "b_bias"):
        _schedule_colsum(s, "b_bias", kern.lanes)
    return s.mod["main"]


def with_active_rows(func, mr: int, col_tiles: int, tail=None, tail_mr: int = 0):
    """A scheduled rows-free GEMM (a parallel loop over column tiles around a loop over row tiles) over its
    first ``rows`` rows only: a scalar int64 parameter ``rows`` before the output. Each column tile runs the
    input's whole ``mr``-row tiles; a remainder of at most ``tail_mr`` rows runs one ``tail_mr``-row tile of
    ``tail`` (the same GEMM scheduled with ``tail_mr`` rows and the same column tiles: its row loop is moved
    under this kernel's column loop, on this kernel's buffers), a longer one another ``mr``-row tile. The
    output's rows after the computed tiles are written as zeros.

    Zen 4 (alone, 384x1536, hot weights): a 2-row tile of 4 column vectors takes as long as a 1-row one, 5.9
    us, half of a 4-row tile (11.2 us, loads bound the narrow tiles); so a remainder of 1 or 2 rows costs half
    a tile instead of a whole one, a remainder of 3 a whole one.

    A ranged library's bucket runs at its own length B; ``rows`` is the input's length (<= B). The rows past
    it are padding, which only other padding rows and masked attention keys read, so zeros are as good as what
    the padded tokens would give (the real rows stay bit-exact), and are the same on every call, whatever the
    memory held before. The activation conversion ("a_in", a few microseconds) still covers all B rows."""
    *inputs, out = func.params
    m_out, n_out = (int(d) for d in out.shape)
    rows = tirx.Var("rows", "int64")
    half = tail_mr if tail is not None else 0
    if tail is not None and not (0 < half < mr and mr % half == 0):
        raise ValueError(f"with_active_rows: a tail tile of {half} rows does not divide the {mr}-row tile")
    tail_loop = _tail_row_loop(func, tail, col_tiles) if tail is not None else None
    found = []

    def on_for(loop, mutator):
        if loop.kind != tirx.ForKind.PARALLEL:
            return mutator.default_mutate(loop)
        row_loop = loop.body
        if (int(loop.extent) != col_tiles or not isinstance(row_loop, tirx.For)
                or int(row_loop.extent) != _round_up(m_out, mr) // mr):
            raise ValueError(f"with_active_rows: expected a parallel loop over {col_tiles} column tiles around "
                             f"one over {_round_up(m_out, mr) // mr} row tiles")
        found.append(loop)
        dt = str(row_loop.extent.ty)

        def c(v):
            return tirx.IntImm(dt, v)

        # in the loop's type (int32): int64 literals would make a shared kernel's n int64 (share_buckets)
        # rows clamped to [0, 2**30] before the cast (a bucket function called directly with any int64)
        clamped = tirx.Cast(dt, tirx.min(tirx.max(rows, tirx.IntImm("int64", 0)), tirx.IntImm("int64", 1 << 30)))
        length = tirx.min(clamped, c(m_out))
        # whole tiles, one more when the remainder is longer than a tail tile
        tiles = tirx.floordiv(length + c(mr - half - 1), c(mr))
        start = tiles * c(mr)
        body = [tirx.For(row_loop.loop_var, row_loop.min, tiles, row_loop.kind, row_loop.body,
                         row_loop.thread_binding, row_loop.annotations)]
        end = start
        if tail_loop is not None:
            extra = tirx.floordiv(tirx.max(length - start, c(0)) + c(half - 1), c(half))  # 0 or 1 tail tile
            body.append(tail_loop(loop.loop_var, tirx.floordiv(start, c(half)), extra))
            end = start + extra * c(half)
        i, j = tirx.Var("zero_i", dt), tirx.Var("zero_j", dt)
        zero = tirx.For(i, end, tirx.max(c(m_out) - end, c(0)), tirx.ForKind.SERIAL,
                        tirx.For(j, c(0), c(n_out), tirx.ForKind.SERIAL,
                                 tirx.BufferStore(out, tirx.const(0, out.dtype), [i, j])))
        loop = tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind,
                        tirx.SeqStmt(body) if len(body) > 1 else body[0], loop.thread_binding, loop.annotations)
        return tirx.SeqStmt([loop, zero])

    body = mutate_ir(func.body, [(tirx.For, on_for)])
    if len(found) != 1:
        raise ValueError(f"with_active_rows: expected one parallel loop, found {len(found)}")
    return tirx.PrimFunc([*inputs, rows, out], body, func.ret_type, func.attrs)


def tail_tile(kern: GemmKernel, mr: int) -> int:
    """The rows of the tile that runs a short remainder of an ``mr``-row kernel told the input's length: half
    the tile when that is a whole number of the kernel's row blocks and at least 2 rows, else 0 (no tail)."""
    half = mr // 2
    return half if mr % 2 == 0 and half >= max(kern.rows, 2) and half % kern.rows == 0 else 0


def _tail_row_loop(func, tail, col_tiles: int):
    """fn(column tile variable, first tile, tiles) -> `tail`'s row loop over those of its row tiles, for one
    column tile of `func`, on `func`'s buffers (the parameters in order, the converted activation "a_in"); the
    tail's own other buffers (its tile's accumulators) allocated in a block around it."""
    loops = []

    def find(node, visitor):
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.PARALLEL:
            loops.append(node)
            return
        visitor.default_visit(node)

    visit_ir(tail.body, find)
    if len(loops) != 1 or int(loops[0].extent) != col_tiles or not isinstance(loops[0].body, tirx.For):
        raise ValueError(f"with_active_rows: the tail kernel needs one parallel loop over {col_tiles} column tiles "
                         "around its row loop")
    par, row_loop = loops[0], loops[0].body
    mine = {b.name: b for b in func.body.block.alloc_buffers}
    if len(tail.params) != len(func.params):
        raise ValueError(f"with_active_rows: the tail kernel takes {len(tail.params)} parameters, not "
                         f"{len(func.params)}")
    pairs = list(zip(tail.params, func.params))
    own = []
    for b in tail.body.block.alloc_buffers:
        if b.name == "a_in" and b.name in mine:
            pairs.append((b, mine[b.name]))
        else:
            own.append(b)

    def build(col, first, count):
        vmap = [*pairs, (par.loop_var, col)]

        def on_var(v, _mutator):
            return next((new for old, new in vmap if old.same_as(v)), v)

        loop = tirx.For(row_loop.loop_var, first, count, tirx.ForKind.SERIAL, row_loop.body)
        loop = mutate_ir(loop, [(type(par.loop_var), on_var)])
        if not own:
            return loop
        return SBlockRealize([], tirx.const(True, "bool"), SBlock([], [], [], "tail_rows", loop, alloc_buffers=own))

    return build


def _schedule_epilogue(s, vec: int):
    """The epilogue under its tile: (rows, columns) unrolled, columns in vectors of ``vec`` (one accumulator
    vector of a dot-product kernel, one tile row of a blocked one)."""
    rows, cols = s.get_loops(s.get_sblock(EPILOGUE_BLOCK))[-2:]
    co, ci = s.split(cols, [None, vec])
    s.unroll(rows)
    s.unroll(co)
    s.vectorize(ci)


def _schedule_row_blocks(s, name: str, parallel: bool):
    """(blocks, k blocks, rows, k_group) activation packing: one k_group-byte vector copy per (block, row)."""
    blk, _, _, inner = s.get_loops(s.get_sblock(name))
    if parallel:
        s.parallel(blk)
    s.vectorize(inner)


def _has_block(s, name: str) -> bool:
    try:
        s.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001
        return False


def _schedule_elementwise(s, name: str, vec: int = 64, parallel: bool = True):
    outer, inner = s.split(s.fuse(*s.get_loops(s.get_sblock(name))), [None, vec])
    if parallel:
        s.parallel(outer)
    s.vectorize(inner)


def _schedule_per_batch(s, name: str, vec: int):
    """A batch kernel's operand stage, parallel over the batch; the innermost loop in vectors of ``vec`` when
    its extent is a multiple of it (else left to LLVM), the others as they are."""
    loops = s.get_loops(s.get_sblock(name))
    s.parallel(loops[0])
    extent = s.get(loops[-1]).extent.value
    if len(loops) > 1 and extent % vec == 0:
        s.vectorize(s.split(loops[-1], [None, vec])[1] if extent > vec else loops[-1])


def _schedule_colsum(s, name: str, lanes: int, per_batch: bool = False):
    """bias[b, n] = init + sum_k x[b, k, n]: k outside a vector of n lanes (parallel over (b, n blocks), or over
    b alone with ``per_batch``)."""
    blk = s.get_sblock(name)
    b, n, k = s.get_loops(blk)
    no, ni = s.split(n, [None, lanes])
    s.reorder(b, no, k, ni)
    s.parallel(b if per_batch else s.fuse(b, no))
    s.vectorize(ni)  # before decompose_reduction: vectorize needs the reduction block whole
    init = s.decompose_reduction(blk, k)
    s.vectorize(s.get_loops(init)[-1])


def _act(kern: GemmKernel, x):
    """An int8 activation as the kernel's operand: + act_offset as uint8 (VNNI) or unchanged."""
    return T.Cast("uint8", x) ^ T.uint8(kern.act_offset) if kern.act_offset else x


def _batch_compute(bt: int, m: int, k: int, n: int, kern: GemmKernel, mr: int):
    """Batched C[b] = A[b] @ B[b], both int8 at run time; out (bt, Mp, Np). Stages: "a_in" (pad; + 128 for VNNI)
    and "b_pack" (B into dot-product blocks); VNNI adds "b_bias" = -128 colsum(B), the reduction's init.

    B is packed as words of k_group bytes (byte j of word [x, nb, kb, i] = B[x, kg kb + j, lanes nb + i]), built
    with vector shifts and ors over contiguous rows of B, for the intrinsic's word form (``DotIntrin.word_name``):
    a byte-level pack would be a gather the vectorizer scalarizes.
    """
    if not kern.runtime_pack:
        return _batch_compute_generic(bt, m, k, n, kern, mr)
    lanes, kg, a_dtype, bias = kern.lanes, kern.k_group, kern.act_dtype, kern.act_offset != 0
    word = f"int{8 * kg}"
    kp, np_, mp = _round_up(k, kg), _round_up(n, lanes), _round_up(m, mr)
    nb, kb = np_ // lanes, kp // kg
    bias_cols = np_ if bias else 1  # unused without an offset

    @T.prim_func(s_tir=True)
    def batch(a: T.Buffer((bt, m, k), "int8"), b: T.Buffer((bt, k, n), "int8"),
              out: T.Buffer((bt, mp, np_), "int32")):
        T.func_attr({"tirx.noalias": True})
        a_in = T.sblock_alloc_buffer((bt, mp, kp), a_dtype)
        b_pack = T.sblock_alloc_buffer((bt, nb, kb, lanes), word)
        b_bias = T.sblock_alloc_buffer((bt, bias_cols), "int32")
        for x, i, r in T.grid(bt, mp, kp):
            with T.sblock("a_in"):
                vx, vi, vr = T.axis.remap("SSS", [x, i, r])
                T.reads(a[vx, vi, vr])
                a_in[vx, vi, vr] = T.if_then_else(vi < m and vr < k, _act(kern, a[vx, vi, vr]), T.Cast(a_dtype, 0))
        for x, jb, rb, jl in T.grid(bt, nb, kb, lanes):
            with T.sblock("b_pack"):
                vx, vjb, vrb, vjl = T.axis.remap("SSSS", [x, jb, rb, jl])
                T.reads(b[vx, vrb * kg:vrb * kg + kg, vjb * lanes + vjl])
                b_pack[vx, vjb, vrb, vjl] = packed_word(b, vx, vrb, vjb * lanes + vjl, kg, k, n)
        if bias:
            for x, j, r in T.grid(bt, np_, k):
                with T.sblock("b_bias"):
                    vx, vj, vr = T.axis.remap("SSR", [x, j, r])
                    T.reads(b[vx, vr, vj])
                    with T.init():
                        b_bias[vx, vj] = 0
                    b_bias[vx, vj] = b_bias[vx, vj] - T.if_then_else(
                        vj < n, T.Cast("int32", b[vx, vr, vj]) * kern.act_offset, 0)
        for x, i, j, r in T.grid(bt, mp, np_, kp):
            with T.sblock("out"):
                vx, vi, vj, vr = T.axis.remap("SSSR", [x, i, j, r])
                T.reads(out[vx, vi, vj], a_in[vx, vi, vr], b_pack[vx, vj // lanes, vr // kg, vj % lanes])
                T.writes(out[vx, vi, vj])
                with T.init():
                    if bias:
                        out[vx, vi, vj] = b_bias[vx, vj]
                    else:
                        out[vx, vi, vj] = 0
                out[vx, vi, vj] = out[vx, vi, vj] + T.Cast("int32", a_in[vx, vi, vr]) * T.Cast("int32", T.Cast(
                    "int8", T.shift_right(b_pack[vx, vj // lanes, vr // kg, vj % lanes], vr % kg * 8)))

    return batch


def _batch_compute_generic(bt: int, m: int, k: int, n: int, kern: GemmKernel, mr: int):
    lanes = kern.lanes
    np_, mp = _round_up(n, lanes), _round_up(m, mr)
    nb = np_ // lanes

    @T.prim_func(s_tir=True)
    def batch(a: T.Buffer((bt, m, k), "int8"), b: T.Buffer((bt, k, n), "int8"),
              out: T.Buffer((bt, mp, np_), "int32")):
        T.func_attr({"tirx.noalias": True})
        a_in = T.sblock_alloc_buffer((bt, mp, k), "int8")
        b_pack = T.sblock_alloc_buffer((bt, nb, k, lanes), "int8")
        for x, i, r in T.grid(bt, mp, k):
            with T.sblock("a_in"):
                vx, vi, vr = T.axis.remap("SSS", [x, i, r])
                T.reads(a[vx, vi, vr])
                a_in[vx, vi, vr] = T.if_then_else(vi < m, a[vx, vi, vr], T.int8(0))
        for x, jb, r, jl in T.grid(bt, nb, k, lanes):
            with T.sblock("b_pack"):
                vx, vjb, vr, vjl = T.axis.remap("SSSS", [x, jb, r, jl])
                T.reads(b[vx, vr, vjb * lanes + vjl])
                b_pack[vx, vjb, vr, vjl] = T.if_then_else(vjb * lanes + vjl < n, b[vx, vr, vjb * lanes + vjl],
                                                          T.int8(0))
        for x, i, j, r in T.grid(bt, mp, np_, k):
            with T.sblock("out"):
                vx, vi, vj, vr = T.axis.remap("SSSR", [x, i, j, r])
                with T.init():
                    out[vx, vi, vj] = 0
                out[vx, vi, vj] = out[vx, vi, vj] + T.Cast("int32", a_in[vx, vi, vr]) * T.Cast(
                    "int32", b_pack[vx, vj // lanes, vr, vj % lanes])

    return batch


def _batch_kernel(kern: GemmKernel) -> GemmKernel:
    """Kernels that can pack B at run time (words of k_group bytes) run the batch matmul; the others run the plain
    vectorized kernel on B's rows (``select_batch_kernel`` picks a packing kernel of the target where it has one)."""
    if kern.runtime_pack or kern.intrin is None:
        return kern
    return GemmKernel("generic", lanes=kern.lanes, k_group=1, registers=kern.registers)


@lru_cache(maxsize=64)
def batch_primfunc(bt: int, m: int, k: int, n: int, kern: GemmKernel, rows_free: bool = False):
    """The scheduled PrimFunc (a int8 (bt, m, k), b int8 (bt, k, n)) -> out int32 (bt, Mp, Np), (Mp, Np) from
    ``batch_out_shape``."""
    if kern.tiles:
        return amx_gemm.amx_batch_primfunc(bt, m, k, n).with_attrs(
            {"op_pattern": OP_PATTERN_OPAQUE, "tir.is_scheduled": True, FIXED_ATTR: AMX_FIXED})
    kern = _batch_kernel(kern)
    mr, nr = default_tile(kern, m, n, rows_free, batch=True)
    intrin = kern.intrin.word_name if kern.intrin is not None else None
    func = _schedule_gemm(_batch_compute(bt, m, k, n, kern, mr), kern, mr, nr, intrin, rows_free=rows_free)
    tuning = {FIXED_ATTR: ROWS_FREE_FIXED} if rows_free else {KERNEL_ATTR: f"bmm {bt} {m} {k} {n}"}
    return func.with_attrs({"op_pattern": OP_PATTERN_OPAQUE, "tir.is_scheduled": True, **tuning})


def gemm_compute(m: int, k: int, n: int, kern: GemmKernel, epilogue: Epilogue | None = None,
                 rows_free: bool = False):
    """The unscheduled GEMM (M padded to the default row tile), with ``epilogue`` fused if given."""
    mr, _ = default_tile(kern, m, n, rows_free)
    core = _gemm_compute(m, k, n, kern, mr)
    return core if epilogue is None else with_epilogue(core, epilogue, m, n)


@lru_cache(maxsize=64)
def gemm_primfunc(m: int, k: int, n: int, kern: GemmKernel, epilogue: Epilogue | None = None,
                  tile: tuple | None = None, rows_free: bool = False, active_rows: bool = False):
    """The scheduled PrimFunc (a int8 (m, k), packed w, [bias int32 (Np,)]) -> out int32 (Mp, Np); with an
    epilogue, (…, its constants) -> y (m, n) of the epilogue's type. ``tile``: (mr, nr, m_split) chosen by
    tuning (schedules/tune.py), else the default. A tile-unit kernel (AMX) is fixed: built by amx_gemm, no
    ``KERNEL_ATTR`` (tuning leaves it alone). ``rows_free``: see ``_schedule_gemm``; with ``active_rows`` (and
    rows_free, no tile unit) an int64 ``rows`` before the output: only the first rows are computed
    (``with_active_rows``)."""
    if kern.tiles:
        func = amx_gemm.amx_primfunc(m, k, n, epilogue)
        attrs = {"op_pattern": OP_PATTERN_OPAQUE, "tir.is_scheduled": True, FIXED_ATTR: AMX_FIXED}
        if epilogue is not None:
            attrs[EPILOGUE_ATTR] = epilogue.to_json()
        return func.with_attrs(attrs)
    rows_free = rows_free and tile is None  # a tuned tile is for one static M
    mr, nr = default_tile(kern, m, n, rows_free)
    m_split = None
    if tile is not None:
        mr, nr, m_split = tile
    func = _schedule_gemm(gemm_compute(m, k, n, kern, epilogue, rows_free), kern, mr, nr, m_split=m_split,
                          rows_free=rows_free)
    if active_rows:
        if not rows_free:
            raise ValueError("active_rows needs a rows-free kernel (no tuned tile)")
        tail, half = None, tail_tile(kern, mr)
        if half:
            core = _gemm_compute(m, k, n, kern, half)
            tail = _schedule_gemm(core if epilogue is None else with_epilogue(core, epilogue, m, n), kern, half, nr,
                                  rows_free=True)
        func = with_active_rows(func, mr, _round_up(n, kern.lanes) // (nr * kern.lanes), tail, half)
    # a rows-free kernel has no static M that tuning could rebuild it at (schedules/tune.py): left alone
    tuning = {FIXED_ATTR: ROWS_FREE_FIXED} if rows_free else {KERNEL_ATTR: f"gemm {m} {k} {n}"}
    attrs = {"op_pattern": OP_PATTERN_OPAQUE, "tir.is_scheduled": True, **tuning}
    if epilogue is not None:
        attrs[EPILOGUE_ATTR] = epilogue.to_json()
    return func.with_attrs(attrs)


# ---------------------------------------------------------------------------------------------------------
# Relax emitters.


def _static_int8(expr, what: str) -> tuple[int, ...]:
    dtype, shape = tensor_info(expr)
    if dtype != "int8" or shape is None:
        raise ValueError(f"{what} must be an int8 tensor of static shape, got {dtype} {shape}")
    return shape


def gemm_out_shape(m: int, n: int, kern: GemmKernel, rows_free: bool = False, batch: bool = False
                   ) -> tuple[int, int]:
    """(Mp, Np): the shape gemm_primfunc writes (M padded to the row tile, N to the lanes)."""
    if kern.tiles:
        mp, _, np_ = amx_gemm.padded_shape(m, 1, n)
        return mp, np_
    mr, _ = default_tile(kern, m, n, rows_free, batch)
    return _round_up(m, mr), _round_up(n, kern.lanes)


def batch_out_shape(m: int, n: int, kern: GemmKernel, rows_free: bool = False) -> tuple[int, int]:
    """(Mp, Np) of each matrix batch_primfunc writes: unpadded (m, n) for a tile kernel, else the padded shape of
    the register-tile kernel that runs the batch (``_batch_kernel``)."""
    return (m, n) if kern.tiles else gemm_out_shape(m, n, _batch_kernel(kern), rows_free, batch=True)


def gemm_args(w_q: np.ndarray, kern: GemmKernel) -> list[np.ndarray]:
    """The constant operands of gemm_primfunc for a weight: packed weight [, padded correction]."""
    w = np.asarray(w_q)
    if kern.tiles:  # zero-padded to whole tiles: K to the k step, N to the block
        _, kp, np_ = amx_gemm.padded_shape(1, *w.shape)
        w = np.pad(w, ((0, kp - w.shape[0]), (0, np_ - w.shape[1])))
    args = [pack_weight(w, kern.lanes, kern.k_group)]
    if kern.act_offset:
        bias = np.zeros(_round_up(w.shape[1], kern.lanes), np.int32)
        bias[: w.shape[1]] = -weight_correction(w, kern.act_offset)
        args.append(bias)
    return args


def emit_int8_matmul(bb: relax.BlockBuilder, a_q: relax.Expr, w_q: np.ndarray, target,
                     epilogue: Epilogue | None = None, operands: tuple = (), rows_free: bool = False,
                     active: relax.Expr | None = None) -> relax.Expr:
    """int32 (..., M, N) = a_q (int8 (..., M, K)) @ w_q (constant int8 (K, N)), bit-exact; with an ``epilogue``
    (its ``operands`` in step order: NumPy arrays, Relax values (..., M, 1) for "row" steps, such a value then a
    NumPy vector for "outer" steps) the chain of it applied in the kernel, of its type. ``active`` (a rows-free
    kernel; an int64 Relax value): only the first ``active`` rows (of the flattened M) are computed, rounded up
    to the row tile; the rows after them are zeros (``with_active_rows``)."""
    shape = _static_int8(a_q, "a_q")
    w = np.asarray(w_q)
    if w.dtype != np.int8 or w.ndim != 2 or w.shape[0] != shape[-1]:
        raise ValueError(f"w_q must be int8 ({shape[-1]}, N), got {w.dtype} {w.shape}")
    k, n = w.shape
    rows = math.prod(shape[:-1])
    kern = select_kernel(target)
    consts = gemm_args(w, kern)
    if epilogue is not None and kern.act_offset:  # the chain's leading int32 adds join the bias (the init)
        epilogue, operands, addend = fold_into_init(epilogue, operands, n)
        consts[1][:n] = (consts[1][:n] + addend).astype(np.int32)  # wraps as int32 arithmetic does
    active = active if rows_free and not kern.tiles else None
    func = gemm_primfunc(rows, k, n, kern, epilogue, rows_free=rows_free, active_rows=active is not None)
    name = (f"{KERNEL_PREFIX}{kern.isa}_{rows}x{k}x{n}" + (f"_{epilogue.tag()}" if epilogue else "")
            + ("_rows_free" if rows_free else "") + ("_active" if active is not None else ""))
    gv = bb.add_func(func.with_attr("global_symbol", name), name)
    a2 = a_q if len(shape) == 2 else bb.emit(relax.op.reshape(a_q, (rows, k)))
    args = [a2] + [const(v, str(v.dtype)) for v in consts] + [_operand_arg(bb, v, rows) for v in operands]
    if active is not None:
        args.append(active)
    if epilogue is not None:  # written unpadded, in the epilogue's type
        out = bb.emit(relax.call_tir(gv, args, tensor_type((rows, n), epilogue.out_dtype)))
        return out if len(shape) == 2 else bb.emit(relax.op.reshape(out, (*shape[:-1], n)))
    mp, np_ = gemm_out_shape(rows, n, kern, rows_free)
    out = bb.emit(relax.call_tir(gv, args, tensor_type((mp, np_), "int32")))
    if (mp, np_) != (rows, n):  # padded tile rows / lanes: slice them off (a copy; rare for Transformer shapes)
        out = bb.emit(relax.op.strided_slice(out, axes=[0, 1], begin=[0, 0], end=[rows, n]))
    if len(shape) != 2:
        out = bb.emit(relax.op.reshape(out, (*shape[:-1], n)))
    return out


def _operand_arg(bb: relax.BlockBuilder, value, rows: int) -> relax.Expr:
    """An epilogue operand as a kernel argument: a NumPy constant, or a run-time (..., M, 1) value of a "row"
    operand, flattened to (M,)."""
    if isinstance(value, np.ndarray):
        return const(value, str(value.dtype))
    return bb.emit(relax.op.reshape(value, (rows,)))


def emit_int8_batch_matmul(bb: relax.BlockBuilder, a_q: relax.Expr, b_q: relax.Expr, target,
                           rows_free: bool = False) -> relax.Expr:
    """int32 (..., M, N) = a_q (int8 (..., M, K)) @ b_q (int8 (..., K, N)), both at run time, bit-exact.

    Batch dims broadcast as in NumPy (a broadcast operand is materialized first)."""
    a_shape, b_shape = _static_int8(a_q, "a_q"), _static_int8(b_q, "b_q")
    if len(a_shape) < 2 or len(b_shape) < 2 or a_shape[-1] != b_shape[-2]:
        raise ValueError(f"batch matmul shapes do not match: {a_shape} x {b_shape}")
    (m, k), n = a_shape[-2:], b_shape[-1]
    batch = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    bt = math.prod(batch)
    kern = select_batch_kernel(target)
    func = batch_primfunc(bt, m, k, n, kern, rows_free)
    name = f"{BATCH_PREFIX}{kern.isa}_{bt}x{m}x{k}x{n}" + ("_rows_free" if rows_free else "")
    gv = bb.add_func(func.with_attr("global_symbol", name), name)

    def as_3d(x, shape, rows, cols):
        if shape[:-2] != batch:
            x = bb.emit(relax.op.broadcast_to(x, (*batch, rows, cols)))
        return x if len(batch) == 1 else bb.emit(relax.op.reshape(x, (bt, rows, cols)))

    a3, b3 = as_3d(a_q, a_shape, m, k), as_3d(b_q, b_shape, k, n)
    mp, np_ = batch_out_shape(m, n, kern, rows_free)
    out = bb.emit(relax.call_tir(gv, [a3, b3], tensor_type((bt, mp, np_), "int32")))
    if (mp, np_) != (m, n):
        out = bb.emit(relax.op.strided_slice(out, axes=[1, 2], begin=[0, 0], end=[m, n]))
    if len(batch) != 1:
        out = bb.emit(relax.op.reshape(out, (*batch, m, n)))
    return out
