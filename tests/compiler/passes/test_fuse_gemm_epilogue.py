"""FuseGemmEpilogue (compiler/passes/fuse_gemm_epilogue.py): on a tiny integer graph built with integerize's own
emitters, each constant-weight matmul absorbs its requantize chain (a lookup and second rescale too, int16 or int8
output, with or without bias, per-channel or scalar multiplier): the GEMM kernel count is unchanged, no
requantize kernel is left, and the built module equals the unfused build and the NumPy reference interpreter
bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler import tvm_compat as C
from compiler.build import fuse_kernels
from compiler.intmath.interpreter import Interpreter
from compiler.passes import intops
from compiler.passes.fuse_gemm_epilogue import FuseGemmEpilogue, find_chains
from compiler.passes.lower_int_matmul import LowerIntMatmul
from targets import resolve_target

SEQ, HID, FFN = 12, 32, 48
R = relax.op


def _graph():
    """x int8 (1, SEQ, HID) -> q = requant_int16(x @ w1 + b1) -> GELU-like lookup -> rescale to int8 (FFN);
    -> x @ w2 (no bias, scalar multiplier) -> int8 (out2); x @ w3 used twice (not fusable)."""
    rng = np.random.default_rng(0)
    w1, w2, w3 = (rng.integers(-127, 128, s).astype(np.int8) for s in ((HID, FFN), (FFN, HID), (HID, HID)))
    b1 = rng.integers(-3000, 3000, (FFN,)).astype(np.int32)
    table = rng.integers(-32768, 32768, 1 << 16).astype(np.int16)
    bb = relax.BlockBuilder()
    x = relax.Var("x", C.tensor_type((1, SEQ, HID), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = intops.emit_qmatmul(bb, x, 5, C.const(w1, "int8"), 0, w1)
            acc = bb.emit(R.add(acc, C.const(b1, "int32")))
            h = intops.emit_requantize(bb, acc, rng.uniform(1e-4, 1e-3, FFN), 512, "int16")
            g = intops.emit_lookup(bb, h, table, 32768, "int16")
            g = intops.emit_rescale(bb, g, -300, 0.0021)
            g = bb.emit(R.astype(bb.emit(R.clip(bb.emit(R.add(g, C.const(-4, "int64"))), -128, 127)), "int8"))
            acc2 = intops.emit_qmatmul(bb, g, -4, C.const(w2, "int8"), 0, w2)
            out2 = intops.emit_requantize(bb, acc2, np.float64(3e-4), -7, "int8")
            acc3 = bb.emit(R.matmul(x, C.const(w3, "int8"), out_dtype="int32"))
            out3 = bb.emit(R.add(acc3, R.multiply(acc3, C.const(2, "int32"))))  # acc3 has two users
            out = bb.emit_output(relax.Tuple([out2, out3]))
        bb.emit_func_output(out)
    return bb.get()


@pytest.fixture(scope="module")
def host():
    return resolve_target("host").tvm_target()


def _lower(mod, target, fuse: bool):
    for p in ((FuseGemmEpilogue(target),) if fuse else ()) + (LowerIntMatmul(target),):
        mod = p(mod)
    return mod


def _calls(mod, prefix: str) -> list:
    """(callee name, output dtype) of the call_tir's of main whose callee starts with ``prefix``."""
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and e.op == tvm.ir.Op.get("relax.call_tir") and \
                e.args[0].name_hint.startswith(prefix):
            found.append((e.args[0].name_hint, C.tensor_info(e)[0]))

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _ops(mod) -> set:
    found = set()
    relax.analysis.post_order_visit(mod["main"], lambda e: found.add(e.op.name) if isinstance(e, relax.Call) and
                                    isinstance(e.op, tvm.ir.Op) else None)
    return found


def _count(mod, op: str) -> int:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(1) if isinstance(e, relax.Call) and
                                    isinstance(e.op, tvm.ir.Op) and e.op.name == op else None)
    return len(found)


def test_chains_found_and_cut_at_the_narrowest_value():
    chains = list(find_chains(_graph()["main"]).values())
    assert len(chains) == 2  # the matmul whose result has two users is left alone
    ffn, out2 = sorted(chains, key=lambda c: -len(c.epilogue.steps))
    ops = [s.op for s in ffn.epilogue.steps]
    assert ops[:3] == ["subtract", "add", "astype"] and "take" in ops and ffn.epilogue.out_dtype == "int8"
    assert [s.operand for s in ffn.epilogue.steps[:2]] == ["vector", "vector"]
    assert out2.epilogue.out_dtype == "int8" and "vector" in [s.operand for s in out2.epilogue.steps]  # colsum
    assert {s.operand for s in out2.epilogue.steps if s.op == "multiply"} == {"scalar"}


def test_structure_and_bit_exact(host):
    mod = _graph()
    plain, fused = _lower(mod, host, False), _lower(mod, host, True)
    gemms_plain, gemms_fused = _calls(plain, "intformer_qgemm"), _calls(fused, "intformer_qgemm")
    assert len(gemms_fused) == len(gemms_plain) == 3
    assert sorted(dt for _, dt in gemms_fused) == ["int32", "int8", "int8"]  # two with their epilogue
    # no requantize or lookup op is left outside the GEMMs (the unfused matmul's chain has neither), and the
    # build (compiler/build.fuse_kernels) makes fewer kernels (reshapes aside: the VM runs them as views)
    assert {"relax.right_shift", "relax.take"} <= _ops(plain)
    assert not {"relax.right_shift", "relax.take", "relax.clip"} & _ops(fused)
    kernels = [sum(isinstance(f, C.PrimFunc) and not gv.name_hint.startswith("reshape")
                   for gv, f in fuse_kernels(m, host).functions.items()) for m in (plain, fused)]
    assert kernels[1] < kernels[0]

    x = np.random.default_rng(1).integers(-128, 128, (1, SEQ, HID)).astype(np.int8)
    x[0, 0, :] = -128
    want = Interpreter(mod)(x)  # [out2, out3]
    dev = tvm.cpu()
    for lowered in (plain, fused):
        vm = relax.VirtualMachine(tvm.compile(fuse_kernels(lowered, host), host), dev)
        got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(x, dev))]
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_generic_target_left_alone():
    armv7 = resolve_target("armv7").tvm_target()
    mod = _graph()
    assert C.structural_equal(FuseGemmEpilogue(armv7)(mod), mod)


def test_chain_through_a_head_transpose(host):
    """x @ wq -> int16 -> reshape to heads -> permute_dims -> a scalar requantize to int8 (the attention inputs):
    the whole chain is the GEMM's epilogue, the transpose moves int8 after it, bit-exact."""
    rng = np.random.default_rng(2)
    heads = 4
    w = rng.integers(-127, 128, (HID, HID)).astype(np.int8)
    bb = relax.BlockBuilder()
    x = relax.Var("x", C.tensor_type((1, SEQ, HID), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = intops.emit_qmatmul(bb, x, 3, C.const(w, "int8"), 0, w)
            h = intops.emit_requantize(bb, acc, rng.uniform(1e-4, 1e-3, HID), 0, "int16")
            h = bb.emit(R.permute_dims(bb.emit(R.reshape(h, (1, SEQ, heads, HID // heads))), [0, 2, 1, 3]))
            q = intops.emit_requantize(bb, bb.emit(R.astype(h, "int32")), np.float64(0.013), -5, "int8")
            out = bb.emit_output(q)
        bb.emit_func_output(out)
    mod = bb.get()
    (chain,) = find_chains(mod["main"]).values()
    assert chain.epilogue.out_dtype == "int8" and [c.op.name for c in chain.layout][-1] == "relax.permute_dims"
    fused = _lower(mod, host, True)
    assert [dt for _, dt in _calls(fused, "intformer_qgemm")] == ["int8"]
    assert "relax.right_shift" not in _ops(fused)
    xv = np.random.default_rng(3).integers(-128, 128, (1, SEQ, HID)).astype(np.int8)
    want = Interpreter(mod)(xv)
    vm = relax.VirtualMachine(tvm.compile(fuse_kernels(fused, host), host), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(xv)).numpy()
    np.testing.assert_array_equal(got, want[0] if isinstance(want, (list, tuple)) else want)


def test_row_scaled_chain_reads_the_row_shifts(host):
    """Per-token scales (intops.emit_row_quantize, emit_requantize_rows): the per-row shift k, computed at run
    time, becomes a "row" operand of the GEMM's epilogue and the zero point times the column sums an "outer" one
    (z as the int32 it was computed in); the whole requantization is fused, bit-exact."""
    from compiler.intmath import integer_ops as io

    rng = np.random.default_rng(4)
    w = rng.integers(-127, 128, (HID, FFN)).astype(np.int8)
    m0, sh = io.row_multipliers(rng.uniform(1e-6, 1e-5, FFN), HID)
    bias = rng.integers(-500, 500, FFN).astype(np.int64)
    colsum = w.astype(np.int64).sum(axis=0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", C.tensor_type((1, SEQ, HID), "int16"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a_q, k, z = intops.emit_row_quantize(bb, x)
            acc = bb.emit(R.matmul(a_q, C.const(w, "int8"), out_dtype="int32"))
            out = bb.emit_output(intops.emit_requantize_rows(bb, acc, m0, sh, k, z, colsum, bias, 3, "int16"))
        bb.emit_func_output(out)
    mod = bb.get()
    (chain,) = find_chains(mod["main"]).values()
    assert [s.operand for s in chain.epilogue.steps if s.op == "left_shift"] == ["row"]
    assert [(s.op, s.operand_dtype) for s in chain.epilogue.steps if s.operand == "outer"] == [("add", "int32")]
    assert chain.epilogue.out_dtype == "int16"
    fused = _lower(mod, host, True)
    assert [dt for _, dt in _calls(fused, "intformer_qgemm")] == ["int16"]
    shifts = [_count(m, "relax.right_shift") for m in (mod, fused)]
    assert shifts == [4, 3]  # the requantization's is in the kernel; emit_row_quantize's three stay outside
    xv = np.random.default_rng(5).integers(-32768, 32768, (1, SEQ, HID)).astype(np.int16)
    xv[0, :3] //= 300  # rows of very different magnitudes: different k
    xv[0, 3:6] = np.abs(xv[0, 3:6]) // 7 + 1000  # one-sided rows: zero points far from 0
    want = Interpreter(mod)(xv)
    want = want[0] if isinstance(want, (list, tuple)) else want
    vm = relax.VirtualMachine(tvm.compile(fuse_kernels(fused, host), host), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(xv)).numpy(), want)
    a_ref, k_ref, z_ref = io.row_quantize(xv)
    acc_ref = a_ref.astype(np.int32) @ w.astype(np.int32)
    np.testing.assert_array_equal(want, io.requantize_rows(acc_ref, m0, sh, k_ref, z_ref, colsum, bias, 3))
    assert len(np.unique(k_ref)) > 1


def _epilogue_ops(mod) -> list[list[str]]:
    from schedules.gemm_epilogue import EPILOGUE_ATTR, Epilogue

    return [[s.op for s in Epilogue.from_json(str(f.attrs[EPILOGUE_ATTR])).steps]
            for gv, f in mod.functions.items() if isinstance(f, C.PrimFunc) and f.attrs is not None
            and EPILOGUE_ATTR in f.attrs]


def test_x86_kernels_requantize_in_int32_arm_kernels_keep_int64():
    """On the x86 kernels (GemmKernel.pair_mulhi) the requantizations whose constants qualify run with mulhi
    (gemm_epilogue.pair_requantize; test_structure_and_bit_exact checks the values on the host); the ARM kernels
    keep the int64 chain."""
    mod = _graph()
    x86 = _epilogue_ops(FuseGemmEpilogue(resolve_target("x86-avx512-vnni").tvm_target())(mod))
    arm = _epilogue_ops(FuseGemmEpilogue(resolve_target("rpi5").tvm_target())(mod))
    assert len(x86) == len(arm) == 2
    assert any("mulhi" in ops for ops in x86)
    assert not any("mulhi" in ops for ops in arm) and all("astype" in ops for ops in arm)
