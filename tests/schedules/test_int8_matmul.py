"""Bit-exactness and code-generation checks for schedules/int8_matmul.py and the VNNI intrinsic.

Expects: a host that can run the code built for it: AVX512-VNNI for the "vnni" cases (skipped otherwise), any x86-64
with AVX2 for the fallback cases. Guarantees (when passing): every emitter equals NumPy's int32 matmul bit for bit
on awkward shapes, through the default Relax pipeline (tvm.compile), and the VNNI build runs vpdpbusd on zmm.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.io_safety import amx_permitted
from compiler.tvm_compat import PrimFunc, prim_type, tensor_type
from schedules.int8_matmul import (
    INTRINSICS,
    default_tile,
    emit_int8_batch_matmul,
    emit_int8_matmul,
    pack_weight,
    select_batch_kernel,
    select_kernel,
    tail_tile,
)


def _target(mcpu: str) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu", "num-cores": 2})


def _host_flags() -> set[str]:
    """/proc/cpuinfo flags: LLVM's name for this CPU ("rocketlake") under-reports it (no AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(ln for ln in f if ln.startswith("flags")).split())
    except (OSError, StopIteration):
        return set()


HOST = _host_flags()
AMX = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "mtriple": "x86_64-linux-gnu", "num-cores": 2})
VNNI = _target("rocketlake")  # AVX512-VNNI: zmm vpdpbusd
AVXVNNI = _target("alderlake")  # AVX-VNNI, no AVX-512: ymm vpdpbusd
AVX2 = _target("haswell")  # no VNNI: vpmaddwd on int16
SSE = _target("x86-64")  # no AVX2: the generic vectorized int32 kernel
needs_vnni = pytest.mark.skipif(not {"avx512_vnni", "avx512bw"} <= HOST, reason="host has no AVX512-VNNI")
needs_amx = pytest.mark.skipif(not ({"amx_tile", "amx_int8", "avx512_vnni"} <= HOST and amx_permitted()),
                               reason="host has no AMX-INT8 (or Linux does not grant it)")
TARGETS = [
    pytest.param(AMX, marks=needs_amx, id="amx"),
    pytest.param(VNNI, marks=needs_vnni, id="vnni"),
    pytest.param(AVXVNNI, marks=pytest.mark.skipif("avx_vnni" not in HOST, reason="no AVX-VNNI"), id="avxvnni"),
    pytest.param(AVX2, id="avx2"),
    pytest.param(SSE, id="generic"),
]


def _rand_int8(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def _build_and_run(emit, inputs: dict[str, np.ndarray], target):
    bb = relax.BlockBuilder()
    params = [relax.Var(name, tensor_type(v.shape, "int8")) for name, v in inputs.items()]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(emit(bb, *params))
        bb.emit_func_output(out)
    mod = bb.get()
    ex = tvm.compile(mod, target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    res = vm["main"](*[tvm.runtime.tensor(v, tvm.cpu()) for v in inputs.values()])
    return res.numpy(), ex


def _ref(a, b):
    return np.matmul(a.astype(np.int32), b.astype(np.int32))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    "a_shape,n",
    [
        ((1, 100, 384), 384),  # M not a multiple of the row tile
        ((128, 1536), 384),  # K = 1536
        ((2, 7, 384), 1536),  # batch dims, N = 1536
        ((3, 5, 30), 20),  # K not a multiple of 4, N not a multiple of the lanes
        ((1, 128, 384), 1),  # N = 1
    ],
)
@pytest.mark.parametrize("rows_free", [False, True], ids=["", "rows_free"])
def test_int8_matmul_bit_exact(target, a_shape, n, rows_free):
    rng = np.random.default_rng(sum(a_shape) + n)
    a = _rand_int8(rng, a_shape)
    w = _rand_int8(rng, (a_shape[-1], n))
    w[0, :] = -128  # extremes: the u8 x s8 offset trick must not saturate
    a.reshape(-1, a_shape[-1])[0, :] = -128
    got, _ = _build_and_run(lambda bb, x: emit_int8_matmul(bb, x, w, target, rows_free=rows_free), {"a": a},
                            target)
    assert got.dtype == np.int32 and got.shape == (*a_shape[:-1], n)
    np.testing.assert_array_equal(got, _ref(a, w))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("a_shape,n", [((1, 40, 384), 384), ((24, 100), 20), ((8, 64), 1536), ((17, 136), 48)])
def test_int8_matmul_active_rows(target, a_shape, n):
    """A rows-free GEMM told the input's length (a ranged library's bucket), at every length: the rows up to it
    bit-exact; the input's whole row tiles computed, a remainder of at most half a tile in a half tile, a longer
    one in a whole tile; the rest zeros, whatever the output's memory held (AMX: every row computed)."""
    rng = np.random.default_rng(sum(a_shape) + n)
    a = _rand_int8(rng, a_shape)
    w = _rand_int8(rng, (a_shape[-1], n))
    m = int(np.prod(a_shape[:-1]))
    bb = relax.BlockBuilder()
    x, length = relax.Var("a", tensor_type(a_shape, "int8")), relax.Var("length", prim_type("int64"))
    with bb.function("main", [x, length]):
        with bb.dataflow():
            out = bb.emit_output(emit_int8_matmul(bb, x, w, target, rows_free=True, active=length))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target), tvm.cpu())
    kern = select_kernel(target)
    mr, _ = default_tile(kern, m, n, rows_free=True)
    half = tail_tile(kern, mr)
    ref = _ref(a, w).reshape(m, n)

    def computed(rows):  # the rows the kernel computes for an input of `rows` rows
        r = min(max(rows, 0), m)
        if kern.tiles:
            return m
        whole = (r + mr - half - 1) // mr * mr
        return min(whole + (-(-(r - whole) // half) * half if half and r > whole else 0), m)

    if mr == 4 and not kern.tiles:  # the contract in numbers: remainders 1-2 in a 2-row tile, 3 in a 4-row one
        assert [computed(r) for r in (1, 2, 3, 5, 6, 7, 8)] == [min(c, m) for c in (2, 2, 4, 6, 6, 8, 8)]
    for rows in [*range(1, m + 1), 0, -3, 1 << 40]:
        got = vm["main"](tvm.runtime.tensor(a, tvm.cpu()), rows).numpy().reshape(m, n)
        done = computed(rows)
        np.testing.assert_array_equal(got[:done], ref[:done], err_msg=f"rows={rows}")
        assert not got[done:].any(), f"rows={rows}: rows past {done} not zero"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((1, 12, 128, 32), (1, 12, 32, 128)),  # attention Q.K^T
        ((1, 12, 100, 100), (1, 12, 100, 32)),  # P.V, awkward sequence length
        ((2, 3, 9, 13), (3, 13, 21)),  # broadcast batch dims, odd sizes
    ],
)
@pytest.mark.parametrize("rows_free", [False, True], ids=["", "rows_free"])
def test_int8_batch_matmul_bit_exact(target, a_shape, b_shape, rows_free):
    rng = np.random.default_rng(sum(a_shape) + sum(b_shape))
    a, b = _rand_int8(rng, a_shape), _rand_int8(rng, b_shape)
    got, _ = _build_and_run(lambda bb, x, y: emit_int8_batch_matmul(bb, x, y, target, rows_free), {"a": a, "b": b},
                            target)
    np.testing.assert_array_equal(got, _ref(a, b))


def _asm_of(ex) -> str:
    mods = [ex.mod] + list(getattr(ex.mod, "imports", []))
    texts = []
    for m in mods:
        try:
            texts.append(m.inspect_source("asm"))
        except Exception:  # noqa: BLE001  (modules without assembly, e.g. the VM bytecode)
            pass
    return "\n".join(texts)


@needs_vnni
def test_vnni_build_keeps_schedule_and_runs_vpdpbusd_zmm():
    a = np.zeros((1, 128, 384), np.int8)
    w = np.ones((384, 384), np.int8)
    bb = relax.BlockBuilder()
    x = relax.Var("a", tensor_type(a.shape, "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = emit_int8_matmul(bb, x, w, VNNI)
            out = bb.emit_output(relax.op.add(acc, relax.const(1, "int32")))  # an elementwise consumer
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), VNNI)
    asm = _asm_of(ex)
    zmm = [ln for ln in asm.splitlines() if "vpdpbusd" in ln and "zmm" in ln]
    assert len(zmm) >= 16, "the tensorized register tile did not survive the Relax pipeline"


@pytest.mark.parametrize("target", TARGETS)
def test_batch_matmul_uses_vnni_when_available(target):
    a, b = np.zeros((1, 2, 16, 32), np.int8), np.zeros((1, 2, 32, 16), np.int8)
    _, ex = _build_and_run(lambda bb, x, y: emit_int8_batch_matmul(bb, x, y, target), {"a": a, "b": b}, target)
    has_zmm_vnni = any("vpdpbusd" in ln and "zmm" in ln for ln in _asm_of(ex).splitlines())
    assert has_zmm_vnni == (select_batch_kernel(target).isa == "avx512vnni")


def test_kernel_selection_by_features():
    assert select_kernel(AMX) is INTRINSICS["amx"]
    assert select_batch_kernel(AMX) is INTRINSICS["amx"]  # B packed into tile rows at run time
    assert select_kernel(VNNI) is INTRINSICS["avx512vnni"]
    assert select_kernel(AVXVNNI) is INTRINSICS["avxvnni"]  # AVX-VNNI, no AVX-512
    assert select_kernel(AVX2) is INTRINSICS["avx2"]
    generic = select_kernel(SSE)
    assert generic.isa == "generic" and generic.intrin is None and generic.lanes == 4
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]})
    assert select_kernel(arm) is INTRINSICS["dotprod"]


def test_pack_weight_layout():
    w = np.arange(6 * 20).reshape(6, 20).astype(np.int8)
    p = pack_weight(w, lanes=16, k_group=4)
    assert p.shape == (2, 2, 16, 4) and p.dtype == np.int8
    for nb, kb, i, j in np.ndindex(p.shape):
        k, n = kb * 4 + j, nb * 16 + i
        assert p[nb, kb, i, j] == (w[k, n] if k < 6 and n < 20 else 0)


def test_same_shape_weights_share_one_kernel():
    rng = np.random.default_rng(3)
    w1, w2 = _rand_int8(rng, (64, 48)), _rand_int8(rng, (64, 48))
    bb = relax.BlockBuilder()
    x = relax.Var("a", tensor_type((1, 16, 64), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = emit_int8_matmul(bb, x, w1, {"kind": "llvm", "mcpu": "rocketlake", "mtriple": "x86_64-linux-gnu"})
            z = emit_int8_matmul(bb, x, w2, VNNI)
            out = bb.emit_output(relax.op.add(y, z))
        bb.emit_func_output(out)
    prim = [gv.name_hint for gv, f in bb.get().functions.items() if isinstance(f, PrimFunc)]
    assert len(prim) == 1, prim
