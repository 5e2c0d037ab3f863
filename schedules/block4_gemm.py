"""The GEMM of int8 activations with 4-bit block weights (compiler/intmath/block4.py: ``W[k, n] = d[b, n] q[k, n] +
m[b, n]`` per block b of 32 inputs, codes q in 0..15), the weights kept in 4 bits in memory.

Expects: ``m, k, n`` static, k a multiple of 32 and n of 16; the weight given as its codes q (K, N) and the
per-block integers d, m (K/32, N), within int16 and ``block4.max_weight_for(K)``; per-input multipliers (K,) in
1..256 (the smoothing factors of compiler/llm/integer.py).

Guarantees:
- ``pack_block4(q, d, m, lanes)`` -> words: int32 (N/16/G, K/32, G, 5, lanes), G = 4, 2 or 1 column blocks of
  16 per group; one contiguous 320-byte record per (column block, block) and the G records of a group side by
  side: words j < 4 of lane i hold the codes of inputs 32 b + 8 j + t in the low nibble of byte t and those of
  32 b + 8 j + 4 + t in its high nibble (t < 4), so that ``w & 0x0F0F0F0F`` and ``(w >> 4) & 0x0F0F0F0F`` are
  the operands of two 4-input dot steps; word 4 holds d (low 16 bits) and m (high 16 bits).
- ``block4_primfunc(m, k, n, isa)``: ``(a int8 (m, k), mult int16 (k,), words) -> out int64 (m, n)`` equal to
  ``(a * mult) @ W`` exactly. Per row first: x = a * mult (int16) as its high byte (int8, signed) and its low
  byte (uint8), and each block's sums of both. Threads over the column blocks; per register tile of one row
  and the G column blocks of a group (decode: one weight stream, prefetched 8 blocks ahead, since the work per
  byte is too much for the out-of-order window alone to hide DRAM's latency) or up to 4 rows and 2 column
  blocks (the unpacked codes serve each row), each block's 32 inputs are 8 dot steps per byte into two block
  accumulators (``vpdpbusd``, u8 x s8: the low byte times the codes, the codes times the signed high byte; on
  any other target a vectorized int32 multiply-add over the same words: correct everywhere, the speed of plain
  SIMD), then ``acc += (blk * d + sums[b] * m)`` for each byte: every int32 value is a partial sum of x W of
  one byte, within block4's bound, so nothing wraps; the result ``acc_hi * 256 + acc_lo`` in int64.
- ``select_isa(target)``: "avx512vnni" where the int8 GEMM would use AVX512-VNNI or AMX, else "generic".
- ``emit_block4_matmul(bb, a, mult, q, d, m, isa)`` adds the kernel and returns its call (int64 (M, N)).

Reading 4 bits per weight (plus 4 bytes of d and m per 32) instead of 8 is what makes a decode step, a
matrix-vector product bound by memory, faster; the codes are widened to bytes in registers (a shift and an and
per 8 inputs per lane), the dot products are the int8 ones of the other kernels (twice: one per byte).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from tvm import relax

from compiler.tvm_compat import const, tensor_info, tensor_type, tir_script as T
from schedules.int8_matmul import FIXED_ATTR, OP_PATTERN_OPAQUE

BLOCK = 32  # inputs per block
NIBBLES = 0x0F0F0F0F
# isa -> (lanes, LLVM intrinsic of the dot step or "" for the generic int32 arithmetic); first match wins
COLUMNS = 16  # outputs per column block: N must be a multiple
ISAS: dict[str, tuple[int, str]] = {
    "avx512vnni": (COLUMNS, "llvm.x86.avx512.vpdpbusd.512"),
    "generic": (COLUMNS, ""),
}
MAX_TILE_ROWS = 4
PREFETCH = 8  # blocks ahead (2.5 KiB of each weight stream)
PREFILL_COLUMNS = {4: 2, 2: 2, 1: 1}  # column blocks of a several-row tile (each broadcast feeds that many dots)
SLOTS = 5  # int32 vectors per (column block, block): 4 of codes, then d (low 16 bits) and m (high 16 bits)
FIXED = "block-4 weights"  # FIXED_ATTR: tuning leaves the kernel alone
KERNEL_PREFIX = "intformer_q4gemm_"  # every block-4 kernel's name (the op report counts their calls as matmuls)


def select_isa(target) -> str:
    """"avx512vnni" where the int8 GEMM selects AVX512-VNNI or AMX (those CPUs have VNNI), else "generic"."""
    from schedules.int8_matmul import select_kernel

    return "avx512vnni" if select_kernel(target).isa in ("avx512vnni", "amx") else "generic"


def pack_block4(q: np.ndarray, d: np.ndarray, m: np.ndarray, lanes: int = 16):
    """The words of the module docstring."""
    q = np.asarray(q, np.uint32)
    k, n = q.shape
    if k % BLOCK or n % lanes:
        raise ValueError(f"block-4 weights need K a multiple of {BLOCK} and N of {lanes}, got ({k}, {n})")
    dd, mm = np.asarray(d, np.int64), np.asarray(m, np.int64)
    if np.abs(dd).max(initial=0) > 32767 or np.abs(mm).max(initial=0) > 32767:
        raise ValueError("block-4 d and m must be within int16")
    nb, nblk = n // lanes, k // BLOCK
    c = q.reshape(nblk, 4, 2, 4, nb, lanes)  # [b, j, half, t, col block, lane]: input 32 b + 8 j + 4 half + t
    shifts = (8 * np.arange(4)[None, :] + 4 * np.arange(2)[:, None]).astype(np.uint32)  # [half, t]
    codes = (c << shifts[None, None, :, :, None, None]).sum(axis=(2, 3), dtype=np.uint64).astype(np.uint32)
    dm = ((mm.astype(np.uint32) << 16) | (dd.astype(np.uint32) & 0xFFFF)).reshape(nblk, 1, nb, lanes)
    words = np.concatenate([codes, dm.astype(np.uint32)], axis=1)  # (B, 5, nb, lanes)
    g = _group(nb)
    words = words.reshape(nblk, SLOTS, nb // g, g, lanes)
    words = np.ascontiguousarray(words.transpose(2, 0, 3, 1, 4)).view(np.int32)  # (nb / G, B, G, 5, lanes)
    return words


def _group(nb: int) -> int:
    """Column blocks per record group (the layout's G): up to 4 dividing N / 16."""
    return next(c for c in (4, 2, 1) if nb % c == 0)


def _rows(m: int) -> int:
    return next(r for r in range(MAX_TILE_ROWS, 0, -1) if m % r == 0)


@cache
def block4_primfunc(m: int, k: int, n: int, isa: str):
    """The kernel of the module docstring for ``isa`` (a key of ``ISAS``)."""
    lanes, intrin = ISAS[isa]
    if k % BLOCK or n % lanes:
        raise ValueError(f"block-4 GEMM needs K a multiple of {BLOCK} and N of {lanes}, got ({k}, {n})")
    nb, nblk = n // lanes, k // BLOCK
    g = _group(nb)
    ng = nb // g
    decode = m == 1  # one row and the G column blocks of a group, prefetched; else rt rows, 1 or 2 column blocks
    rt, nr, tasks = (1, g, ng) if decode else (_rows(m), PREFILL_COLUMNS[g], nb // PREFILL_COLUMNS[g])
    record = g * SLOTS * lanes  # int32 words per (group, block)
    total = ng * nblk * record
    i32v, i8v = f"int32x{lanes}", f"int8x{4 * lanes}"

    def where(p, cb):  # (group, position) of the column block a task's cb-th tile column reads
        return (p, cb) if decode else ((p * nr + cb) // g, (p * nr + cb) % g)

    def codes(words, p, cb, b, j, half):  # the int32 words of one dot step, each byte a code 0..15
        grp, pos = where(p, cb)
        w = T.shift_right(words.vload([grp, b, pos, j, 0], i32v), T.broadcast(4 * half, lanes))
        return T.bitwise_and(w, T.broadcast(T.int32(NIBBLES), lanes))

    def dm(words, p, cb, b, c):  # the block's last slot: d in the low 16 bits, m in the high
        grp, pos = where(p, cb)
        return words[grp, b, pos, SLOTS - 1, c]

    def d_of(words, p, cb, b, c):  # low 16 bits, sign-extended
        return T.shift_right(T.shift_left(dm(words, p, cb, b, c), 16), 16)

    def m_of(words, p, cb, b, c):
        return T.shift_right(dm(words, p, cb, b, c), 16)

    def block_sum(x, i, b):  # the 32 bytes of block b of row i, summed as int32
        total_ = T.Cast("int32", x[i, b * BLOCK])
        for t in range(1, BLOCK):
            total_ = total_ + T.Cast("int32", x[i, b * BLOCK + t])
        return total_

    if intrin:
        def step(blk, r, cb, act, row, col, w):  # vpdpbusd multiplies its u8 operand by its s8 one
            word = T.reinterpret(T.broadcast(T.reinterpret(act.vload([row, col], f"{act.dtype}x4"), dtype="int32"),
                                             lanes), dtype=i8v)
            codes_ = T.reinterpret(w, dtype=i8v)  # 0..15: a valid u8 and s8 operand alike
            u8, s8 = (word, codes_) if act.dtype == "uint8" else (codes_, word)
            return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(intrin), blk.vload([r, cb, 0], i32v), u8, s8,
                                           dtype=i32v)
    else:
        def step(blk, r, cb, act, row, col, w):
            total_ = blk.vload([r, cb, 0], i32v)
            for t in range(4):
                byte = T.bitwise_and(T.shift_right(w, T.broadcast(T.int32(8 * t), lanes)),
                                     T.broadcast(T.int32(255), lanes))
                total_ = total_ + T.broadcast(T.Cast("int32", act[row, col + t]), lanes) * byte
            return total_

    @T.prim_func(check_well_formed=False)
    def block4(a: T.Buffer((m, k), "int8"), mult: T.Buffer((k,), "int16"),
               words: T.Buffer((ng, nblk, g, SLOTS, lanes), "int32"), out: T.Buffer((m, n), "int64")):
        T.func_attr({"tirx.noalias": True})
        flat = T.decl_buffer((total,), "int32", data=words.data)
        hi = T.decl_buffer((m, k), "int8")  # a * mult >> 8 (signed)
        lo = T.decl_buffer((m, k), "uint8")  # a * mult & 255
        s_hi = T.decl_buffer((m, nblk), "int32")
        s_lo = T.decl_buffer((m, nblk), "int32")
        for i, b in T.grid(m, nblk):
            for t in T.vectorized(BLOCK):
                hi[i, b * BLOCK + t] = T.Cast("int8", T.shift_right(
                    T.Cast("int32", a[i, b * BLOCK + t]) * T.Cast("int32", mult[b * BLOCK + t]), 8))
                lo[i, b * BLOCK + t] = T.Cast("uint8", T.bitwise_and(
                    T.Cast("int32", a[i, b * BLOCK + t]) * T.Cast("int32", mult[b * BLOCK + t]), 255))
            s_hi[i, b] = block_sum(hi, i, b)  # one expression: a vectorized sum
            s_lo[i, b] = block_sum(lo, i, b)
        for p in T.parallel(tasks):
            acc_hi = T.decl_buffer((rt, nr, lanes), "int32")  # no "local" scope: that is a workspace call per task
            acc_lo = T.decl_buffer((rt, nr, lanes), "int32")
            blk_hi = T.decl_buffer((rt, nr, lanes), "int32")
            blk_lo = T.decl_buffer((rt, nr, lanes), "int32")
            for mt in range(m // rt):
                for r, cb in T.grid(rt, nr):
                    for c in T.vectorized(lanes):
                        acc_hi[r, cb, c] = 0
                        acc_lo[r, cb, c] = 0
                for b in range(nblk):
                    if decode:  # the records PREFETCH blocks ahead, across the groups' boundaries
                        for line in T.unroll(g * SLOTS):
                            T.evaluate(T.call_llvm_intrin(
                                "void", "llvm.prefetch.p0",
                                T.address_of(flat[T.min((p * nblk + b + PREFETCH) * record + line * lanes,
                                                        total - lanes)]),
                                T.int32(0), T.int32(3), T.int32(1)))
                    for r, cb in T.grid(rt, nr):
                        for c in T.vectorized(lanes):
                            blk_hi[r, cb, c] = 0
                            blk_lo[r, cb, c] = 0
                    for j in T.unroll(4):
                        for half in T.unroll(2):
                            for cb in T.unroll(nr):
                                for r in T.unroll(rt):
                                    blk_hi[r, cb, T.ramp(0, 1, lanes)] = step(
                                        blk_hi, r, cb, hi, mt * rt + r, b * BLOCK + 8 * j + 4 * half,
                                        codes(words, p, cb, b, j, half))
                                    blk_lo[r, cb, T.ramp(0, 1, lanes)] = step(
                                        blk_lo, r, cb, lo, mt * rt + r, b * BLOCK + 8 * j + 4 * half,
                                        codes(words, p, cb, b, j, half))
                    for r, cb in T.grid(rt, nr):
                        for c in T.vectorized(lanes):
                            # the block's own sum first (|.| < 32 * 256 * 2 max|W|), then the running one: every
                            # partial sum is a partial sum of x W and within block4's bound (no int32 wraps)
                            acc_hi[r, cb, c] = acc_hi[r, cb, c] + (blk_hi[r, cb, c] * d_of(words, p, cb, b, c)
                                                                   + s_hi[mt * rt + r, b] * m_of(words, p, cb, b, c))
                            acc_lo[r, cb, c] = acc_lo[r, cb, c] + (blk_lo[r, cb, c] * d_of(words, p, cb, b, c)
                                                                   + s_lo[mt * rt + r, b] * m_of(words, p, cb, b, c))
                for r, cb in T.grid(rt, nr):
                    for c in T.vectorized(lanes):
                        out[mt * rt + r, (p * nr + cb) * lanes + c] = (T.shift_left(T.Cast("int64", acc_hi[r, cb, c]),
                                                                                    T.int64(8))
                                                                       + T.Cast("int64", acc_lo[r, cb, c]))

    return block4.with_attrs({"op_pattern": OP_PATTERN_OPAQUE, "tir.is_scheduled": True, FIXED_ATTR: FIXED})


def emit_block4_matmul(bb: relax.BlockBuilder, a, mult: np.ndarray, q: np.ndarray, d: np.ndarray, m: np.ndarray,
                       isa: str) -> relax.Expr:
    """int64 (M, N) = (a (int8 (M, K)) * mult (K,)) @ W of the block form (q, d, m), on ``isa``'s kernel."""
    _, shape = tensor_info(a)
    rows, k = (int(v) for v in shape)
    lanes = ISAS[isa][0]
    n = q.shape[1]
    name = f"{KERNEL_PREFIX}{isa}_{rows}x{k}x{n}"
    gv = bb.add_func(block4_primfunc(rows, k, n, isa).with_attr("global_symbol", name), name)
    consts = (np.asarray(mult, np.int16), pack_block4(q, d, m, lanes))
    args = [a] + [const(v, str(v.dtype)) for v in consts]
    return bb.emit(relax.call_tir(gv, args, tensor_type((rows, n), "int64")))


__all__ = ["BLOCK", "COLUMNS", "ISAS", "KERNEL_PREFIX", "block4_primfunc", "emit_block4_matmul", "pack_block4",
           "select_isa"]
