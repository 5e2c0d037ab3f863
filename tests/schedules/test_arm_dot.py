"""The project's ARM int8 kernels (schedules/intrinsics/arm_dot.py through schedules/int8_matmul.py):
cross-compiled for rpi4 (NEON smull/sadalp), rpi5 (SDOT) and graviton3 (SMMLA for GEMMs, SDOT for the batch
kernel), run on the emulated aarch64 board and compared with NumPy's int32 matmul bit for bit (odd shapes, -128);
GEMMs with a fused requantize epilogue (a lookup, int16 output); the intrinsics alone in a minimal packed GEMM
(UDOT too); the assembly holds the expected instruction, in a k loop
that keeps its accumulators in q registers.

Expects: the aarch64 cross toolchain (assembly tests) and qemu-user with the board's root (numerics; they skip
with the install command otherwise, as tests/targets does). The rpi4 build runs on ``-cpu cortex-a72``, which has
no dot product (SIGILL on sdot), the others on ``-cpu max`` (SDOT and I8MM).
"""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.tvm_compat import build_tir, export_library, prim_type, tensor_type
from schedules.int8_matmul import (
    INTRINSICS,
    emit_int8_batch_matmul,
    emit_int8_matmul,
    select_batch_kernel,
    select_kernel,
)
from schedules.intrinsics.arm_dot import NEON_4x2, SDOT_4x4, UDOT_4x4
from targets import resolve_target
from tests.helpers.gemm_epilogue import apply_epilogue, requantize
from tests.helpers.packed_gemm import pack, tensorized_gemm
from tests.targets.conftest import connect_board, cross_compile_tiny_bert, require_tool, running_boards

BOARD_CPU = {"rpi4": "cortex-a72", "rpi5": "max", "graviton3": "max"}
KERNEL = {"rpi4": "neon", "rpi5": "dotprod", "graviton3": "i8mm"}
GEMMS = [  # (a shape, N): M, N, K off the blocks (4 lanes, 2 / 4 / 8 bytes, 2 rows), N = 1, a big-ish tile
    ((3, 5, 30), 20),
    ((1, 37, 72), 50),
    ((17, 136), 48),
    ((2, 7, 40), 1),
    ((1, 64, 96), 96),  # few row tiles: threads split N
    ((200, 64), 24),  # many row tiles, small weight: threads split M
]
EPILOGUES = [{"lookup": True}, {"out": "int16", "per_channel": False, "bias": False}, {}]  # for GEMMS[:3]
BATCHES = [  # (a shape, b shape): attention-like, odd sizes, a broadcast batch dim
    ((1, 2, 16, 8), (1, 2, 8, 16)),
    ((1, 3, 9, 13), (1, 3, 13, 21)),
    ((2, 3, 5, 7), (3, 7, 6)),
]


def _rand_int8(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def _ref(a, b):
    return np.matmul(a.astype(np.int32), b.astype(np.int32))


def _cases():
    """{function name: (inputs, expected, constant weight or None for a batch matmul)}, with int8 extremes;
    names ending in _rows_free: the same case on the kernels of a library of several lengths."""
    rng = np.random.default_rng(7)
    cases = {}
    for idx, (a_shape, n) in enumerate(GEMMS):
        a, w = _rand_int8(rng, a_shape), _rand_int8(rng, (a_shape[-1], n))
        a.reshape(-1, a_shape[-1])[0, :] = -128
        w[:, 0] = -128
        w[1, :] = 127
        cases[f"gemm{idx}"] = ({"a": a}, _ref(a, w), w, None)
    for idx, ((a_shape, n), chain) in enumerate(zip(GEMMS[:3], EPILOGUES)):  # requantize epilogues fused in
        a, w = _rand_int8(rng, a_shape), _rand_int8(rng, (a_shape[-1], n))
        a.reshape(-1, a_shape[-1])[0, :] = -128
        epi, ops = requantize(n, rng, **chain)
        cases[f"epi{idx}"] = ({"a": a}, apply_epilogue(epi, ops, _ref(a, w)), w, (epi, ops))
    for idx, (a_shape, b_shape) in enumerate(BATCHES):
        a, b = _rand_int8(rng, a_shape), _rand_int8(rng, b_shape)
        a[..., 0, :] = -128
        b[..., :, 0] = -128
        cases[f"bmm{idx}"] = ({"a": a, "b": b}, _ref(a, b), None, None)
    for name in ("gemm1", "gemm5", "epi0", "bmm0", "bmm1"):  # the kernels of a library of several lengths
        cases[f"{name}_rows_free"] = cases[name]
    # told the input's length: the rows after the computed ones are zeros; whole 4-row tiles (ROWS_FREE_M), a
    # remainder of 1 or 2 rows in a 2-row tile (9 -> 10 rows computed), of 3 in a 4-row tile (11 -> 12)
    for name, length, done in (("gemm2", 12, 12), ("epi0", 8, 8), ("gemm2", 9, 10), ("epi0", 11, 12),
                               ("epi0", 6, 6)):
        inputs, expected, w, epilogue = cases[name]
        flat = expected.reshape(-1, expected.shape[-1]).copy()
        flat[done:] = 0
        suffix = "" if length == done and length % 4 == 0 else str(length)
        cases[f"{name}{suffix}_active"] = ({**inputs, "length": length}, flat.reshape(expected.shape), w, epilogue)
    return cases


CASES = _cases()


def _module(target):
    """One Relax module with a function per case (a remote call returns one tensor, not a tuple)."""
    bb = relax.BlockBuilder()
    for name, (inputs, _, w, epilogue) in CASES.items():
        params = [relax.Var(k, prim_type("int64") if k == "length" else tensor_type(v.shape, "int8"))
                  for k, v in inputs.items()]
        with bb.function(name, params):
            with bb.dataflow():
                rows_free = name.endswith(("_rows_free", "_active"))
                active = params[-1] if name.endswith("_active") else None
                if w is not None:
                    out = emit_int8_matmul(bb, params[0], w, target, *(epilogue or ()), rows_free=rows_free,
                                           active=active)
                else:
                    out = emit_int8_batch_matmul(bb, *params, target, rows_free)
                out = bb.emit_output(out)
            bb.emit_func_output(out)
    return bb.get()


@pytest.fixture(scope="module")
def arm_libs(tmp_path_factory):
    """{preset: cross-compiled library path} for rpi4, rpi5, graviton3."""
    require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    d = tmp_path_factory.mktemp("arm_kernels")
    libs = {}
    for name in KERNEL:
        spec = resolve_target(name)
        ex = tvm.compile(_module(spec.tvm_target()), spec.tvm_target())
        libs[name] = str(d / f"kernels-{name}.so")
        export_library(ex, libs[name], spec.cross_compiler)
    return libs


def _disassembly(lib: str) -> str:
    require_tool("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu")
    return subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", lib], capture_output=True,
                          text=True, check=True).stdout


def _count(asm: str, mnemonic: str) -> int:
    return len(re.findall(rf"^\s+[0-9a-f]+:\s+{mnemonic}\s", asm, re.M))


def test_kernel_selection_for_arm_presets():
    for name, isa in KERNEL.items():
        assert select_kernel(resolve_target(name).tvm_target()) is INTRINSICS[isa]
    assert select_batch_kernel(resolve_target("graviton3").tvm_target()) is INTRINSICS["dotprod"]
    assert select_batch_kernel(resolve_target("rpi4").tvm_target()) is INTRINSICS["neon"]
    armv7 = resolve_target("armv7").tvm_target()  # 32-bit: the aarch64 intrinsics do not exist there
    assert select_kernel(armv7).isa == "generic" and select_batch_kernel(armv7).isa == "generic"
    a32 = tvm.target.Target({"kind": "llvm", "mtriple": "armv8a-linux-gnueabihf", "mcpu": "cortex-a76"})
    assert select_kernel(a32).isa == "generic"  # dotprod in 32-bit mode: other LLVM intrinsics, not ours
    arm64 = tvm.target.Target({"kind": "llvm", "mtriple": "arm64-apple-darwin", "mcpu": "cortex-a76"})
    assert select_kernel(arm64) is INTRINSICS["dotprod"]


@pytest.mark.parametrize("preset, present, absent", [
    ("rpi5", ["sdot"], ["smmla", "udot"]),
    ("graviton3", ["smmla", "sdot"], []),  # sdot: the batch kernel
    ("rpi4", ["smull", "sadalp"], ["sdot", "udot", "smmla"]),
])
def test_assembly_has_the_isa_instruction(arm_libs, preset, present, absent):
    asm = _disassembly(arm_libs[preset])
    for m in present:
        assert _count(asm, m) > 0, f"{preset}: no {m}"
    for m in absent:
        assert _count(asm, m) == 0, f"{preset}: unexpected {m}"


@pytest.mark.parametrize("preset, instr", [("rpi5", "sdot"), ("graviton3", "smmla"), ("rpi4", "sadalp")])
def test_inner_loop_is_the_dot_instruction_on_registers(preset, instr):
    """The 128x768x768 GEMM's k loop: only the dot instruction on q registers, operand loads and the loop
    counter; no accumulator spilled to or reloaded from the stack."""
    spec = resolve_target(preset)
    bb = relax.BlockBuilder()
    x = relax.Var("a", tensor_type((128, 768), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(emit_int8_matmul(bb, x, np.ones((768, 768), np.int8), spec.tvm_target()))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), spec.tvm_target())
    asm = "\n".join(m.inspect_source("asm") for m in [ex.mod, *ex.mod.imports] if _has_asm(m))
    body = max((b for b in _innermost_loops(asm) if instr in b), key=lambda b: b.count(instr))
    lines = [ln.split()[0] for ln in body.splitlines() if ln.strip() and not ln.strip().startswith(".")]
    dots = [ln for ln in body.splitlines() if ln.strip().startswith(instr)]
    assert len(dots) >= 16, f"a register tile of {len(dots)} accumulators"
    assert all(re.search(r"v\d+\.4s", d) for d in dots)
    allowed = {instr, "smull", "ldr", "ldp", "ld1r", "add", "subs", "mov", "b.ne"}
    assert set(lines) <= allowed, set(lines) - allowed
    assert "sp" not in re.findall(r"\[(\w+)", body), "stack traffic in the k loop (spilled accumulators)"


def _innermost_loops(asm: str) -> list[str]:
    """Bodies of the loops (a label, then a backward branch to it) with no other label inside."""
    lines = asm.splitlines()
    out = []
    for i, ln in enumerate(lines):
        label = re.match(r"^(\.LBB\S+):$", ln)
        if not label:
            continue
        for j in range(i + 1, len(lines)):
            if re.match(r"^\.LBB\S+:$", lines[j]):
                break
            if re.match(rf"^\s+b(\.\w+)?\s+{re.escape(label.group(1))}$", lines[j]):
                out.append("\n".join(lines[i + 1:j + 1]))
                break
    return out


def _has_asm(m) -> bool:
    try:
        m.inspect_source("asm")
        return True
    except Exception:  # noqa: BLE001  (the VM bytecode module has no assembly)
        return False


# ---- the intrinsics alone: a minimal packed GEMM per intrinsic, tensorized by hand ----

INTRIN_CASES = {  # name: (intrinsic, operand dtype, preset, qemu cpu)
    "sdot": (SDOT_4x4, "int8", "rpi5", "max"),
    "udot": (UDOT_4x4, "uint8", "rpi5", "max"),
    "neon": (NEON_4x2, "int8", "rpi4", "cortex-a72"),
}


@pytest.fixture(scope="module")
def intrin_libs(tmp_path_factory):
    """{case: (library, a, packed w, expected)} of the dot intrinsics, tensorized into a (5, 32) x (32, 8) GEMM."""
    require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    d = tmp_path_factory.mktemp("arm_intrin")
    rng = np.random.default_rng(1)
    out = {}
    m, k, n = 5, 32, 8
    for name, (intrin, dtype, preset, _) in INTRIN_CASES.items():
        spec = resolve_target(preset)
        lib = build_tir(tensorized_gemm(m, k, n, intrin, dtype, dtype), spec.tvm_target())
        path = str(d / f"{name}.so")
        export_library(lib, path, spec.cross_compiler)
        lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
        a = rng.integers(lo, hi, (m, k)).astype(dtype)
        w = rng.integers(lo, hi, (k, n)).astype(dtype)
        a[0], w[:, 0] = (255, 255) if dtype == "uint8" else (-128, -128)
        out[name] = (path, a, pack(w, intrin.lanes, intrin.k), _ref(a, w))
    return out


def test_intrinsic_assembly(intrin_libs):
    for name, instr in {"sdot": "sdot", "udot": "udot", "neon": "sadalp"}.items():
        assert _count(_disassembly(intrin_libs[name][0]), instr) > 0, name


# ---- on the emulated board ----

@pytest.fixture(scope="module")
def boards():
    """{qemu cpu: port}: "max" (SDOT, I8MM) and "cortex-a72" (no dot product); stopped afterwards."""
    with running_boards(sorted(set(BOARD_CPU.values()))) as started:
        yield started


def _session(port: int):
    return connect_board(port)


def _upload(sess, path: str):
    from targets.remote import call_with_timeout

    return call_with_timeout(lambda: (sess.upload(path), sess.load_module(os.path.basename(path)))[1], 120,
                             "loading", "board")


@pytest.mark.board
@pytest.mark.parametrize("preset", list(KERNEL))
def test_kernels_bit_exact_on_board(arm_libs, boards, preset):
    from targets.remote import call_with_timeout

    sess = _session(boards[BOARD_CPU[preset]])
    dev = sess.cpu()
    vm = relax.VirtualMachine(_upload(sess, arm_libs[preset]), dev)
    for name, (inputs, expected, _, _) in CASES.items():
        args = [v if k == "length" else tvm.runtime.tensor(v, dev) for k, v in inputs.items()]
        got = call_with_timeout(lambda name=name, args=args: vm[name](*args).numpy(), 120, f"running {name}", preset)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=f"{preset} {name}")


@pytest.mark.board
@pytest.mark.parametrize("name", list(INTRIN_CASES))
def test_intrinsics_bit_exact_on_board(intrin_libs, boards, name):
    from targets.remote import call_with_timeout

    path, a, packed, expected = intrin_libs[name]
    sess = _session(boards[INTRIN_CASES[name][3]])
    dev = sess.cpu()
    f = _upload(sess, path)
    c = tvm.runtime.tensor(np.zeros(expected.shape, np.int32), dev)
    call_with_timeout(lambda: f(tvm.runtime.tensor(a, dev), tvm.runtime.tensor(packed, dev), c), 120, name, "board")
    np.testing.assert_array_equal(c.numpy(), expected)



@pytest.mark.board
def test_tiny_bert_graviton3_bit_exact_on_board(tiny_bert, tiny_bert_lib, boards, tmp_path):
    """The whole tiny BERT built for graviton3 (SMMLA GEMMs, SDOT attention) gives the host build's outputs."""
    from compiler import api
    from targets.remote import RemoteSpec

    require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    lib = cross_compile_tiny_bert(tiny_bert, tiny_bert_lib, ("graviton3",), tmp_path)["graviton3"]
    assert _count(_disassembly(lib), "smmla") > 0
    test_npz = tiny_bert_lib[3]
    host = api.run(tiny_bert_lib[0], test_npz)
    got = api.run(lib, test_npz, remote=RemoteSpec(rpc=f"127.0.0.1:{boards['max']}", timeout=120))
    assert set(got) == set(host)
    for name in host:
        np.testing.assert_array_equal(got[name], host[name])
