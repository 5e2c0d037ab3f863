"""The decode step's attention kernels (schedules/decode_attention.py): Q.K and P.V read one layer of the
whole-model int8 cache where it lies, bit for bit against NumPy at the extremes (codes -128 and 127, a
probability at the fine softmax's cap, one that has all the weight), on this host and on the emulated
aarch64 board (rpi5, cross-compiled); contexts that are not a multiple of 16 are refused."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.intmath.llama import ATTN_FINE_MAX
from compiler.tvm_compat import build_tir, export_library, make_target, tensor_type
from schedules.decode_attention import (
    LANES,
    emit_pv_decode,
    emit_qk_decode,
    pv_decode_primfunc,
    qk_decode_primfunc,
    supported,
)
from targets import resolve_target

HOST = make_target({"kind": "llvm"})


def _case(seed: int, layers: int, kv: int, groups: int, d: int, context: int):
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, (kv * groups, 1, d)).astype(np.int8)
    keys = rng.integers(-128, 128, (layers, kv, d, context)).astype(np.int8)
    values = rng.integers(-128, 128, (layers, kv, context, d)).astype(np.int8)
    k_new = rng.integers(-128, 128, (kv, d, 1)).astype(np.int8)
    v_new = rng.integers(-128, 128, (kv, 1, d)).astype(np.int8)
    q[0], keys[:, 0, :, 1], values[:, 0, 1] = -128, -128, -128  # the extreme products
    # the fine softmax's probabilities (compiler/intmath/llama.py): rows summing to about 65535 + keys / 2, one
    # with all the weight on the new token, one at the cap on a cached position (high bytes up to 255)
    p = rng.dirichlet(np.ones(context + 1), (kv, groups)) * (ATTN_FINE_MAX + (context + 1) // 2)
    p = np.minimum(np.floor(p), ATTN_FINE_MAX).astype(np.int32)
    p[0, 0] = 0
    p[0, 0, context] = ATTN_FINE_MAX
    if groups > 1:
        p[-1, 1] = 0
        p[-1, 1, 1] = ATTN_FINE_MAX
    return q, keys, values, k_new, v_new, p


def _reference(q, keys, values, k_new, v_new, p, layer):
    kv, d = keys.shape[1], keys.shape[2]
    groups = q.shape[0] // kv
    qg = q.reshape(kv, groups, d).astype(np.int64)
    ks = np.concatenate([keys[layer], k_new], axis=2).astype(np.int64)  # (kv, d, context + 1)
    vs = np.concatenate([values[layer], v_new], axis=1).astype(np.int64)  # (kv, context + 1, d)
    return qg @ ks, p.astype(np.int64) @ vs


def _run(lib, args, shape):
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(shape, np.int32), dev)
    lib(*[tvm.runtime.tensor(a, dev) for a in args], out)
    return out.numpy()


@pytest.mark.parametrize("layers,kv,groups,d,context,layer", [(3, 3, 3, 64, 64, 2), (2, 2, 4, 16, 48, 0),
                                                                (1, 1, 1, 8, 16, 0)])
def test_kernels_bit_exact_on_this_host(layers, kv, groups, d, context, layer):
    q, keys, values, k_new, v_new, p = _case(layer + context, layers, kv, groups, d, context)
    want_s, want_o = _reference(q, keys, values, k_new, v_new, p, layer)
    qk = build_tir(qk_decode_primfunc(layers, kv, groups, d, context), HOST)
    pv = build_tir(pv_decode_primfunc(layers, kv, groups, context, d), HOST)
    sel = np.array([layer], np.int32)
    assert np.array_equal(_run(qk, [q, keys, k_new, sel], want_s.shape), want_s)
    assert np.array_equal(_run(pv, [p, values, v_new, sel], want_o.shape), want_o)


def test_contexts_off_the_lanes_are_refused():
    assert supported(256) and not supported(40)
    with pytest.raises(ValueError, match=f"a multiple of {LANES}, got 40"):
        qk_decode_primfunc(1, 1, 1, 8, 40)
    with pytest.raises(ValueError, match=f"a multiple of {LANES}, got 40"):
        pv_decode_primfunc(1, 1, 1, 40, 8)


@pytest.mark.board
def test_kernels_bit_exact_on_the_board(tmp_path):
    """Cross-compiled for the rpi5 preset (through the emitters) and run on the emulated board."""
    from targets.remote import call_with_timeout
    from tests.targets.conftest import connect_board, require_tool, running_boards

    require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    spec = resolve_target("rpi5")
    layers, kv, groups, d, context, layer = 2, 3, 3, 32, 32, 1
    q, keys, values, k_new, v_new, p = _case(5, layers, kv, groups, d, context)
    want_s, want_o = _reference(q, keys, values, k_new, v_new, p, layer)
    cases = {"qk": (emit_qk_decode, [q, keys, k_new], want_s), "pv": (emit_pv_decode, [p, values, v_new], want_o)}
    bb = relax.BlockBuilder()
    for name, (emit, args, _) in cases.items():
        xs = [relax.Var(f"x{i}", tensor_type(a.shape, str(a.dtype))) for i, a in enumerate(args)]
        with bb.function(name, xs):
            with bb.dataflow():
                out = bb.emit_output(emit(bb, *xs, layer))
            bb.emit_func_output(out)
    path = str(tmp_path / "attn.so")
    export_library(tvm.compile(bb.get(), spec.tvm_target()), path, spec.cross_compiler)
    with running_boards(["max"]) as ports:
        sess = connect_board(ports["max"])
        sess.upload(path)
        vm = relax.VirtualMachine(sess.load_module("attn.so"), sess.cpu())
        for name, (_, args, want) in cases.items():
            got = call_with_timeout(lambda name=name, args=args: vm[name](
                *[tvm.runtime.tensor(a, sess.cpu()) for a in args]).numpy(), 120, f"running {name}", "rpi5")
            np.testing.assert_array_equal(got, want, err_msg=name)
