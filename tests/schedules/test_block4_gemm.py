"""The block-4 GEMM (schedules/block4_gemm.py): (a int8 * mult) @ W of 4-bit block weights, bit for bit against
NumPy at the extremes (a = -128, mult = 256, codes 0 and 15, d and m at the int16 bound): the generic kernel on
this host and on the emulated aarch64 board (rpi5, cross-compiled), the AVX512-VNNI kernel where the host has it
(skipped otherwise, naming the feature); the ISA each target selects."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.intmath import block4 as b4
from compiler.tvm_compat import build_tir, export_library, make_target, tensor_type
from schedules.block4_gemm import ISAS, block4_primfunc, emit_block4_matmul, pack_block4, select_isa
from targets import resolve_target
from tests.schedules.test_x86_vnni import _host_has

SHAPES = [(1, 64, 32), (5, 96, 48), (4, 128, 16), (3, 32, 64), (1, 96, 192), (8, 64, 128)]  # (m, k, n):
# one row (1, 2, 4 column blocks a group), odd rows, row tiles, two-column tiles


def _weights(rng, k: int, n: int) -> b4.Block4Weight:
    """Q4_1-like blocks (levels 0 and 15 used), then the integers pushed to their bound in one column."""
    lo = rng.normal(0, 1, (k // 32, n))
    step = rng.uniform(0.01, 0.3, (k // 32, n))
    q = rng.integers(0, 16, (k, n))
    q[::32], q[1::32] = 0, 15
    bw = b4.fit_block4(np.repeat(lo, 32, 0) + np.repeat(step, 32, 0) * q)
    limit = b4.max_weight_for(k)
    d, m = bw.d.copy(), bw.m.copy()
    d[:, 0], m[:, 0] = (2 * limit) // 15, -limit  # W spans [-limit, limit] in column 0
    return b4.Block4Weight(bw.q, d, m, bw.scale)


def _case(rng, m: int, k: int, n: int):
    bw = _weights(rng, k, n)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    a[0] = -128
    mult = rng.integers(1, b4.MULT_LEVELS + 1, k).astype(np.int16)
    mult[:3] = b4.MULT_LEVELS
    want = (a.astype(np.int64) * mult) @ bw.values()
    return a, mult, bw, want


def _run_host(isa: str, mcpu: str):
    rng = np.random.default_rng(3)
    target = make_target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu", "num-cores": 1})
    dev = tvm.cpu()
    for m, k, n in SHAPES:
        a, mult, bw, want = _case(rng, m, k, n)
        lib = build_tir(block4_primfunc(m, k, n, isa), target)
        args = [a, mult, pack_block4(bw.q, bw.d, bw.m, ISAS[isa][0])]
        out = tvm.runtime.tensor(np.zeros((m, n), np.int64), dev)
        lib(*[tvm.runtime.tensor(x, dev) for x in args], out)
        np.testing.assert_array_equal(out.numpy(), want, err_msg=f"{isa} {m}x{k}x{n}")
        if isa != "generic":
            assert "vpdpbusd" in lib.inspect_source("asm")


def test_generic_kernel_bit_exact_on_this_host():
    _run_host("generic", "x86-64")


def test_vnni_kernel_bit_exact():
    if not _host_has(["avx512_vnni"]):
        pytest.skip("host lacks avx512_vnni")
    _run_host("avx512vnni", "znver4")


def test_packing_puts_each_code_and_scale_in_its_place():
    k, n = 64, 128  # 8 column blocks: groups of 4
    q = np.arange(k * n).reshape(k, n) % 16
    d = np.arange(2 * n).reshape(2, n) - 100
    m = -np.arange(2 * n).reshape(2, n) * 7
    words = pack_block4(q, d, m, 16)
    assert words.shape == (2, 2, 4, 5, 16)  # (groups, blocks, column blocks of a group, 4 code words + d/m, lanes)
    w = words.view(np.uint32)
    for col in range(n):
        grp, pos, lane = col // 64, col % 64 // 16, col % 16
        for kk in range(k):
            b, j, half, t = kk // 32, kk % 32 // 8, kk % 8 // 4, kk % 4
            assert (w[grp, b, pos, j, lane] >> (8 * t + 4 * half)) & 15 == q[kk, col]
        for b in range(2):
            dm = int(words[grp, b, pos, 4, lane])
            assert ((dm << 16) & 0xFFFFFFFF) >> 16 == d[b, col] & 0xFFFF and dm >> 16 == m[b, col]


def test_isa_selection():
    assert select_isa(make_target({"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu"})) == "avx512vnni"
    assert select_isa(make_target({"kind": "llvm", "mcpu": "haswell", "mtriple": "x86_64-linux-gnu"})) == "generic"
    assert select_isa(resolve_target("rpi5").tvm_target()) == "generic"


def test_bounds_are_rejected():
    with pytest.raises(ValueError, match="multiple of 32"):
        block4_primfunc(1, 48, 16, "generic")
    with pytest.raises(ValueError, match="int16"):
        pack_block4(np.zeros((32, 16)), np.full((1, 16), 40000), np.zeros((1, 16)), 16)
    with pytest.raises(ValueError, match="N of 16"):
        pack_block4(np.zeros((32, 24)), np.ones((1, 24)), np.zeros((1, 24)), 16)


@pytest.mark.board
def test_generic_kernel_bit_exact_on_the_board(tmp_path):
    from targets.remote import call_with_timeout
    from tests.targets.conftest import connect_board, require_tool, running_boards

    require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    spec = resolve_target("rpi5")
    target = spec.tvm_target()
    rng = np.random.default_rng(5)
    cases = {f"q4_{i}": _case(rng, *shape) for i, shape in enumerate(SHAPES[:2])}
    bb = relax.BlockBuilder()
    for name, (a, mult, bw, _) in cases.items():
        x = relax.Var("a", tensor_type(a.shape, "int8"))
        with bb.function(name, [x]):
            with bb.dataflow():
                out = bb.emit_output(emit_block4_matmul(bb, x, mult, bw.q, bw.d, bw.m, select_isa(target)))
            bb.emit_func_output(out)
    path = str(tmp_path / "q4.so")
    export_library(tvm.compile(bb.get(), target), path, spec.cross_compiler)
    with running_boards(["max"]) as ports:
        sess = connect_board(ports["max"])
        sess.upload(path)
        vm = relax.VirtualMachine(sess.load_module("q4.so"), sess.cpu())
        for name, (a, _, _, want) in cases.items():
            got = call_with_timeout(lambda name=name, a=a: vm[name](tvm.runtime.tensor(a, sess.cpu())).numpy(), 120,
                                    f"running {name}", "rpi5")
            np.testing.assert_array_equal(got, want, err_msg=name)
