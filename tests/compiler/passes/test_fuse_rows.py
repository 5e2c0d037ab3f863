"""Row groups (compiler/passes/fuse_rows.py): softmax and LayerNorm (with its isqrt chain) each become one kernel,
no group closes a cycle through an outside op, and the build stays bit-exact (the bit-exact checks of the
scheduled row kernels are in test_default_schedule.py)."""

import numpy as np
import tvm
from tvm import relax

from compiler import tvm_compat as C
from compiler.passes import intops
from compiler.passes.fuse_rows import fuse_rows
from tests.compiler.passes.test_default_schedule import TARGET, _graph, _inputs, _run


def _legalized(mod):
    return tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern()])(mod)


def _groups(mod):
    return {gv.name_hint: f for gv, f in mod.functions.items()
            if isinstance(f, relax.Function) and f.attrs is not None and f.attrs.get("Primitive")}


def test_softmax_and_layernorm_become_one_kernel_each():
    mod, _, _ = _graph()
    plain = _legalized(mod)
    grouped, n = fuse_rows(plain)
    groups = _groups(grouped)
    assert n == len(groups) >= 2
    sizes = sorted(len(f.body.blocks[0].bindings) for f in groups.values())
    # LayerNorm: mean, variance, the isqrt's bit count and Newton steps, the normalization: one group
    assert sizes[-1] > 60, sizes  # (93 bindings with the binary-search bit count and 6 Newton steps)
    for name, f in groups.items():  # softmax, LayerNorm: one result each (no per-row scalar is read outside)
        assert isinstance(f.body.body, relax.Var), name
    with tvm.target.Target(TARGET):
        ops_only = C.fuse(mod)
    fused = C.fuse(plain, group=lambda m: fuse_rows(m)[0])
    kernels = [gv.name_hint for gv, f in fused.functions.items() if isinstance(f, C.PrimFunc)]
    before = [gv.name_hint for gv, f in ops_only.functions.items() if isinstance(f, C.PrimFunc)]
    assert len(kernels) < len(before), (kernels, before)
    target = tvm.target.Target(TARGET)
    for a, b in zip(_run(fused, target, _inputs()), _run(ops_only, target, _inputs())):
        assert np.array_equal(a, b)


def test_a_group_never_closes_a_cycle():
    """h = requantize(x); y = int8 matmul(h); out = h + requantize(y): h and out have the same rows, but a group
    holding both would depend on itself through the matmul."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", C.tensor_type((16, 32), "int32"))
    w = np.random.default_rng(0).integers(-127, 128, (32, 32)).astype(np.int8)
    with bb.function("main", [x]):
        with bb.dataflow():
            h = intops.emit_requantize(bb, x, 0.01, 0)
            y = bb.emit(relax.op.matmul(h, C.const(w, "int8"), out_dtype="int32"))
            r = intops.emit_requantize(bb, y, 0.001, 0)
            o = bb.emit(relax.op.add(relax.op.astype(h, "int32"), relax.op.astype(r, "int32")))
            out = bb.emit_output(relax.Tuple([o]))
        bb.emit_func_output(out)
    mod = bb.get()
    grouped, n = fuse_rows(_legalized(mod))
    assert n >= 2
    target = tvm.target.Target(TARGET)
    xs = np.random.default_rng(1).integers(-20000, 20000, (16, 32)).astype(np.int32)
    with target:
        want = _run(C.fuse(mod), target, [xs])
        got = _run(C.fuse(mod, group=lambda m: fuse_rows(m)[0]), target, [xs])
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
