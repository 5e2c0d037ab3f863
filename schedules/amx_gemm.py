"""Int8 GEMM on Intel AMX tiles (AMX-TILE + AMX-INT8: Sapphire Rapids and newer Xeons).

Expects: ``m, k, n`` static; the weight packed at compile time as for the VNNI kernel, ``pack_weight(w, 16, 4)``
of w zero-padded to (``K_STEP`` multiple, ``BLOCK_N`` multiple): (Np/16, Kp/4, 16, 4), so one 16-row, 64-byte
tile row is 16 output columns x 4 k, the layout ``tdpbssd`` reads its second operand in; a target whose LLVM
features include ``amx-tile`` and ``amx-int8``.

Guarantees:
- ``amx_primfunc(m, k, n, epilogue)`` is a scheduled PrimFunc ``(a int8 (m, k), w_packed) -> out int32 (Mp, Np)``
  (``Mp``/``Np`` padded to ``BLOCK_M``/``BLOCK_N``), or with an ``Epilogue`` ``(a, w_packed, constants...) -> y (m,
  n)`` of the epilogue's type, equal bit for bit to ``a.astype(int32) @ w.astype(int32)`` (then the chain). No
  tuning: the kernel is fixed (2 x 2 tiles of 16 x 16 int32 per 32 x 32 output block, k in steps of 64).
- Signed x signed (``tdpbssd``): no +128 activation shift, no compensation term.
- With an epilogue, each 32 x 32 block is stored from the tiles to a 4 KiB buffer and the chain runs on it while
  it is in L1, in 16-lane vectors (``gemm_epilogue.epilogue_value``: the same TIR expression as the VNNI
  kernel's epilogue); without one, tiles are stored straight to ``out``.
- ``amx_batch_primfunc(bt, m, k, n)``: ``(a int8 (bt, m, k), b int8 (bt, k, n)) -> out int32 (bt, m, n)``,
  unpadded, bit-exact; each task packs its 32 columns of ``b[x]`` into tile rows at run time.
- Threads split the N panels (each keeps its 32-column weight panel in cache across the M blocks). Each task
  loads the tile configuration; each call first asks Linux for the AMX state (``arch_prctl``; idempotent, about
  80 ns): the library needs no set-up by its host program. If Linux refuses (before 5.16, or a hypervisor that
  hides the state), the call fails with a TVM error that says so and names the fix, not with SIGILL.
"""

from __future__ import annotations

from compiler.io_safety import ARCH_REQ_XCOMP_PERM, SYS_ARCH_PRCTL, XFEATURE_XTILEDATA
from compiler.tvm_compat import tir_script as T, tirx
from schedules.gemm_epilogue import Epilogue, epilogue_value, operand_buffers
from schedules.intrinsics.dot import packed_word

BLOCK_M = 32  # output rows per block: two A tiles of 16 rows
BLOCK_N = 32  # output columns per block: two B tiles of 16 int32 columns
K_STEP = 64  # k per tdpbssd: one 64-byte tile row of A
# Tile registers (immediates in the code below): C (accumulators) 0..3 as [[0, 1], [2, 3]], A 4..5 (rows 0-15,
# 16-31), B 6..7 (columns 0-15, 16-31); every tile 16 rows x 64 bytes.

# The 64-byte tile configuration as 8 little-endian uint64 words: palette 1; colsb (bytes per row) 64 for tiles
# 0..7 (words 2 and 3 hold colsb[0..7] as uint16); rows 16 for tiles 0..7 (word 6 holds rows[0..7] as bytes).
_CFG_WORDS = (1, 0, 0x0040004000400040, 0x0040004000400040, 0, 0, 0x1010101010101010, 0)

PERMISSION_ERROR = ("AMX tiles are not enabled for this process: Linux refused arch_prctl(ARCH_REQ_XCOMP_PERM, "
                    "XTILEDATA) (kernel older than 5.16, or the hypervisor hides AMX); compile for a target "
                    "without AMX (e.g. --target x86-avx512-vnni)")

FEATURES = ("amx-tile", "amx-int8")  # LLVM features of the target


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def padded_shape(m: int, k: int, n: int) -> tuple[int, int, int]:
    """(Mp, Kp, Np): the shapes the kernel works on (zero padding; out is (Mp, Np) without an epilogue)."""
    return _round_up(m, BLOCK_M), _round_up(k, K_STEP), _round_up(n, BLOCK_N)


def _tile(name: str, *args):
    return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{name}", *args))


@T.macro
def _request_amx():
    assert T.call_extern("int64", "syscall", T.int64(SYS_ARCH_PRCTL), T.int64(ARCH_REQ_XCOMP_PERM),
                         T.int64(XFEATURE_XTILEDATA)) == T.int64(0), PERMISSION_ERROR


@T.macro
def _load_config():
    cfg = T.decl_buffer((8,), "uint64", scope="local")
    cfg[0] = T.uint64(_CFG_WORDS[0])
    cfg[1] = T.uint64(_CFG_WORDS[1])
    cfg[2] = T.uint64(_CFG_WORDS[2])
    cfg[3] = T.uint64(_CFG_WORDS[3])
    cfg[4] = T.uint64(_CFG_WORDS[4])
    cfg[5] = T.uint64(_CFG_WORDS[5])
    cfg[6] = T.uint64(_CFG_WORDS[6])
    cfg[7] = T.uint64(_CFG_WORDS[7])
    _tile("ldtilecfg", T.address_of(cfg[0]))


@T.macro
def _block_product(src, row, w, blk, k_steps, row_stride):
    """C tiles 0-3 = rows row..row+31 of src (int8, k contiguous) x weight blocks blk, blk+1 of w (packed
    (blocks, Kp/4, 16, 4) int8). Immediate tile numbers: no loops over tiles."""
    _tile("tilezero", T.int8(0))
    _tile("tilezero", T.int8(1))
    _tile("tilezero", T.int8(2))
    _tile("tilezero", T.int8(3))
    for kt in range(k_steps):
        _tile("tileloadd64", T.int8(4), T.address_of(src[row, kt * 64]), row_stride)
        _tile("tileloadd64", T.int8(5), T.address_of(src[row + 16, kt * 64]), row_stride)
        _tile("tileloadd64", T.int8(6), T.address_of(w[blk, kt * 16, 0, 0]), T.int64(64))
        _tile("tileloadd64", T.int8(7), T.address_of(w[blk + 1, kt * 16, 0, 0]), T.int64(64))
        _tile("tdpbssd", T.int8(0), T.int8(4), T.int8(6))
        _tile("tdpbssd", T.int8(1), T.int8(4), T.int8(7))
        _tile("tdpbssd", T.int8(2), T.int8(5), T.int8(6))
        _tile("tdpbssd", T.int8(3), T.int8(5), T.int8(7))


def _ptr(dst, offset, ncol):
    """A write pointer to element ``offset`` of int32 ``dst`` (a view's elem_offset included), 16 rows long."""
    return T.tvm_access_ptr(T.type_annotation("int32"), dst.data, dst.elem_offset + offset, 16 * ncol, 2)


@T.macro
def _store_block(dst, row, col, ncol):
    """C tiles 0-3 to the 32 x 32 int32 block at dst[row, col] of an int32 buffer of ``ncol`` columns. A pointer
    into ``dst.data`` (``tvm_access_ptr``), not ``address_of`` an element: TVM would shrink a local dst to the
    elements such addresses name."""
    _tile("tilestored64", T.int8(0), _ptr(dst, row * ncol + col, ncol), T.int64(ncol * 4))
    _tile("tilestored64", T.int8(1), _ptr(dst, row * ncol + col + 16, ncol), T.int64(ncol * 4))
    _tile("tilestored64", T.int8(2), _ptr(dst, (row + 16) * ncol + col, ncol), T.int64(ncol * 4))
    _tile("tilestored64", T.int8(3), _ptr(dst, (row + 16) * ncol + col + 16, ncol), T.int64(ncol * 4))


def _kernel(m: int, k: int, n: int, epilogue: Epilogue | None):
    """The kernel in low-level TIR (no blocks, nothing left to schedule): a zero-padded copy ``a_in`` of a (only
    when m or k needs padding); threads over the N panels p, each loading the tile configuration, then per M
    block mt the k loop on the tiles and the store: straight to the row-major ``out``, or with an epilogue into
    the task's 4 KiB buffer ``acc`` then the chain on it, 16-lane vectors, into y (rows and columns past m and n
    skipped)."""
    mp, kp, np_ = padded_shape(m, k, n)
    nb, kb = np_ // 16, kp // 4
    pad_a = (mp, kp) != (m, k)
    n_panels, m_blocks, k_steps = np_ // BLOCK_N, mp // BLOCK_M, kp // K_STEP
    with_epi = epilogue is not None
    whole_panels = n % BLOCK_N == 0
    out_shape, out_dtype = ((m, n), epilogue.out_dtype) if with_epi else ((mp, np_), "int32")
    bufs = operand_buffers(epilogue, n, m) if with_epi else []
    row_stride = T.int64(kp)
    a_in_shape = (mp, kp) if pad_a else (1, 1)  # scratch only where used: unused buffers are still allocated
    acc_shape = (BLOCK_M, BLOCK_N) if with_epi else (1, 1)

    def value(acc_value, row, col):  # the chain on one accumulator (TVMScript calls this while parsing)
        return epilogue_value(epilogue, acc_value, col, bufs, row)

    @T.prim_func(check_well_formed=False)
    def amx(a: T.Buffer((m, k), "int8"), w_packed: T.Buffer((nb, kb, 16, 4), "int8"),
            out: T.Buffer(out_shape, out_dtype)):
        T.func_attr({"tirx.noalias": True})
        _request_amx()
        a_in = T.decl_buffer(a_in_shape, "int8")
        if pad_a:
            for i, ro in T.grid(mp, kp // 64):
                for ri in T.vectorized(64):
                    a_in[i, ro * 64 + ri] = T.if_then_else(i < m and ro * 64 + ri < k, a[i, ro * 64 + ri], T.int8(0))
        src = a_in if pad_a else a
        for p in T.parallel(n_panels):
            _load_config()
            acc = T.decl_buffer(acc_shape, "int32", scope="local")
            for mt in range(m_blocks):
                _block_product(src, mt * 32, w_packed, p * 2, k_steps, row_stride)
                if with_epi:
                    _store_block(acc, 0, 0, BLOCK_N)
                    for r in range(BLOCK_M):
                        if mt * 32 + r < m:
                            if whole_panels:
                                for cv in T.unroll(2):
                                    for c in T.vectorized(16):
                                        out[mt * 32 + r, p * 32 + cv * 16 + c] = value(
                                            acc[r, cv * 16 + c], mt * 32 + r, p * 32 + cv * 16 + c)
                            else:  # the last panel is partial: scalar, up to n
                                for c in range(T.min(BLOCK_N, n - p * 32)):
                                    out[mt * 32 + r, p * 32 + c] = value(acc[r, c], mt * 32 + r, p * 32 + c)
                else:
                    _store_block(out, mt * 32, p * 32, np_)
            _tile("tilerelease")

    if not with_epi:
        return amx
    a_buf, w_buf, y_buf = amx.params
    return tirx.PrimFunc([a_buf, w_buf, *bufs, y_buf], amx.body, attrs=amx.attrs)


def _batch_kernel(bt: int, m: int, k: int, n: int):
    """C[x] = A[x] @ B[x], both int8 at run time -> out int32 (bt, m, n), unpadded. Threads over (x, N panel);
    each task packs its two 16-column blocks of B[x] into tile rows (words of 4 k bytes, ``packed_word``: vector
    shifts and ors) in a stack buffer, then runs the M blocks; A is zero-padded first where m or k needs it."""
    mp, kp, np_ = padded_shape(m, k, n)
    kb = kp // 4
    pad_a = (mp, kp) != (m, k)
    n_panels, m_blocks, k_steps = np_ // BLOCK_N, mp // BLOCK_M, kp // K_STEP
    whole = (mp, np_) == (m, n)
    row_stride = T.int64(kp)
    a_in_shape = (bt, mp, kp) if pad_a else (1, 1, 1)  # scratch only where used
    acc_shape = (1, 1) if whole else (BLOCK_M, BLOCK_N)

    @T.prim_func
    def amx_batch(a: T.Buffer((bt, m, k), "int8"), b: T.Buffer((bt, k, n), "int8"),
                  out: T.Buffer((bt, m, n), "int32")):
        T.func_attr({"tirx.noalias": True})
        _request_amx()
        a_in = T.decl_buffer(a_in_shape, "int8")
        if pad_a:
            for x in T.parallel(bt):
                for i, ro in T.grid(mp, kp // 64):
                    for ri in T.vectorized(64):
                        a_in[x, i, ro * 64 + ri] = T.if_then_else(i < m and ro * 64 + ri < k, a[x, i, ro * 64 + ri],
                                                                  T.int8(0))
        src = a_in if pad_a else a
        for xp in T.parallel(bt * n_panels):
            _load_config()
            words = T.decl_buffer((2, kb, 16), "int32")
            w = T.decl_buffer((2, kb, 16, 4), "int8", data=words.data)
            for jb, rb in T.grid(2, kb):
                for i in T.vectorized(16):
                    words[jb, rb, i] = packed_word(b, xp // n_panels, rb, xp % n_panels * 32 + jb * 16 + i, 4, k, n)
            a_x = T.decl_buffer((mp, kp), "int8", data=src.data, elem_offset=xp // n_panels * (mp * kp))
            out_x = T.decl_buffer((m, n), "int32", data=out.data, elem_offset=xp // n_panels * (m * n))
            acc = T.decl_buffer(acc_shape, "int32", scope="local")
            for mt in range(m_blocks):
                _block_product(a_x, mt * 32, w, 0, k_steps, row_stride)
                if whole:
                    _store_block(out_x, mt * 32, xp % n_panels * 32, n)
                else:
                    _store_block(acc, 0, 0, BLOCK_N)
                    for r in range(BLOCK_M):
                        if mt * 32 + r < m:
                            for c in range(T.min(BLOCK_N, n - xp % n_panels * 32)):
                                out_x[mt * 32 + r, xp % n_panels * 32 + c] = acc[r, c]
            _tile("tilerelease")

    return amx_batch


def amx_primfunc(m: int, k: int, n: int, epilogue: Epilogue | None = None):
    """The kernel (module docstring): (a, w_packed) -> out int32 (Mp, Np), or with ``epilogue`` (a, w_packed,
    its constants...) -> y (m, n) of its type."""
    return _kernel(m, k, n, epilogue)


def amx_batch_primfunc(bt: int, m: int, k: int, n: int):
    """The batch kernel: (a int8 (bt, m, k), b int8 (bt, k, n)) -> out int32 (bt, m, n), unpadded."""
    return _batch_kernel(bt, m, k, n)
