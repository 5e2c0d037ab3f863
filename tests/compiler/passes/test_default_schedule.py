"""Default schedules (compiler/passes/default_schedule.py): bit-exact against the unscheduled build and the NumPy
twins, and the kernels really are scheduled (parallel / vectorized loops where the work is large)."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from compiler import tvm_compat as C
from compiler.intmath import integer_ops as io
from compiler.passes import default_schedule as ds, intops

ROWS, HIDDEN, HEADS, SEQ = 32, 64, 2, 32
SOFTMAX_SCALE = 0.05
# small enough that the test kernels take the parallel path; the real threshold is for MiniLM-sized kernels
PARAMS = ds.CpuParams(vector_bits=256, cores=2, parallel_min_work=1024)
TARGET = {"kind": "llvm", "num-cores": 2}


def _layernorm_constants():
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 1.5, HIDDEN), rng.uniform(-0.2, 0.2, HIDDEN)
    return io.layernorm_constants(0.05, HIDDEN, 128, 1e-5, gamma, beta, 0.02, 3)


def _graph():
    """int8 hidden (ROWS, HIDDEN) -> LayerNorm; int16 scores (HEADS, SEQ, SEQ) -> softmax; a GELU-like table
    lookup on the LayerNorm output; a transpose + add; the module every rule of the pass meets."""
    c = _layernorm_constants()
    table = np.clip(np.arange(-128, 128) // 2 + 5, -128, 127).astype(np.int8)
    bb = relax.BlockBuilder()
    x = relax.Var("x", C.tensor_type((ROWS, HIDDEN), "int8"))
    s = relax.Var("s", C.tensor_type((HEADS, SEQ, SEQ), "int16"))
    with bb.function("main", [x, s]):
        with bb.dataflow():
            ln = intops.emit_layernorm(bb, x, c, "int8")
            g = intops.emit_lookup(bb, ln, table, 128, "int8")
            sm = intops.emit_softmax(bb, s, SOFTMAX_SCALE)
            t = bb.emit(R.add(R.astype(R.permute_dims(sm, [0, 2, 1]), "int32"), R.astype(sm, "int32")))
            out = bb.emit_output(relax.Tuple([ln, g, sm, t]))
        bb.emit_func_output(out)
    return bb.get(), c, table


def _inputs():
    rng = np.random.default_rng(0)
    return (rng.integers(-128, 128, (ROWS, HIDDEN)).astype(np.int8),
            rng.integers(-3000, 3000, (HEADS, SEQ, SEQ)).astype(np.int16))


def _fused(rows: bool = False):
    """The test graph legalized and fused, by TVM's FuseOps alone or with the row groups first (what the build
    does: compiler/build.fuse_kernels)."""
    from compiler.build import fuse_kernels

    mod, _, _ = _graph()
    target = tvm.target.Target(TARGET)
    if rows:
        return fuse_kernels(mod, target), target
    with target:
        return C.fuse(mod), target


def _run(mod, target, args):
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    return [o.numpy() for o in vm["main"](*[tvm.runtime.tensor(a) for a in args])]


@pytest.mark.parametrize("rows", [False, True], ids=["fuse_ops", "row_groups"])
def test_scheduled_build_is_bit_exact(rows):
    fused, target = _fused(rows)
    args = _inputs()
    plain = _run(fused, target, args)
    sched = _run(ds.apply_default_schedules(fused, target, PARAMS), target, args)
    for a, b in zip(plain, sched):
        assert np.array_equal(a, b)
    _, c, table = _graph()
    x, s = args
    ln = io.ilayernorm(x, c)
    sm = io.isoftmax(s, SOFTMAX_SCALE)
    assert np.array_equal(sched[0], ln)
    assert np.array_equal(sched[1], io.lookup(ln, table, 128))
    assert np.array_equal(sched[2], sm)
    assert np.array_equal(sched[3], sm.transpose(0, 2, 1).astype(np.int32) + sm)


def _kernels(mod):
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, C.PrimFunc)}


@pytest.mark.parametrize("rows", [False, True], ids=["fuse_ops", "row_groups"])
def test_every_kernel_scheduled_and_big_ones_parallel_and_vectorized(rows):
    fused, target = _fused(rows)
    out = _kernels(ds.apply_default_schedules(fused, target, PARAMS))
    assert out and all(f.attrs.get("tir.is_scheduled") for f in out.values()), \
        [n for n, f in out.items() if not f.attrs.get("tir.is_scheduled")]
    def size(p):
        return int(np.prod([int(d) for d in p.ty.shape])) if hasattr(p.ty, "shape") else 0

    big_work = [n for n, f in out.items() if max(size(p) for p in f.params) >= PARAMS.parallel_min_work]
    big_out = [n for n, f in out.items() if size(f.params[-1]) >= PARAMS.parallel_min_work]
    assert big_work and big_out
    for name in big_work:  # a row reduction (sum over a big input) included
        assert "T.parallel" in out[name].script(), name
    for name in big_out:  # a big spatial output: its inner loop on vector lanes
        assert "T.vectorized" in out[name].script(), name


def test_small_kernels_stay_on_one_thread():
    fused, target = _fused()
    serial = ds.CpuParams(vector_bits=256, cores=2, parallel_min_work=1 << 30)
    for name, f in _kernels(ds.apply_default_schedules(fused, target, serial)).items():
        assert "T.parallel" not in f.script(), name


def test_scheduled_kernels_are_skipped_and_failures_leave_kernels_as_they_were(monkeypatch):
    fused, target = _fused()
    name, first = next(iter(_kernels(fused).items()))
    marked = fused.clone()
    marked[marked.get_global_var(name)] = first.with_attr("tir.is_scheduled", True)
    out = ds.apply_default_schedules(marked, target, PARAMS)
    tvm.ir.assert_structural_equal(out[name], marked[name])

    def broken(sch, blocks, p):
        raise RuntimeError("rule bug")

    monkeypatch.setattr(ds, "RULES", {"broken": broken})
    out = ds.apply_default_schedules(fused, target, PARAMS)
    for n, f in _kernels(out).items():
        tvm.ir.assert_structural_equal(f, fused[n])
    assert all(np.array_equal(a, b) for a, b in zip(_run(out, target, _inputs()), _run(fused, target, _inputs())))


def test_params_from_target():
    p = ds.cpu_params(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 4}))
    assert (p.vector_bits, p.cores) == (512, 4)
    p = ds.cpu_params(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}))
    assert (p.vector_bits, p.cores) == (128, 1)


@pytest.mark.parametrize("name,fam", [
    ("fused_add9_cast6_multiply3", "fused_add_cast_multiply"),
    ("intformer_qgemm_avx512vnni_128x384x384", "intformer_qgemm_avx512vnni_128x384x384"),
    ("take4", "take"),
    ("fused_minimum1_minimum2_left_shift", "fused_minimum_left_shift"),
])
def test_op_profile_families(name, fam):
    from compiler.op_profile import family

    assert family(name) == fam


@pytest.mark.parametrize("shape,axis", [((1, 12, 64, 128), 2), ((2, 3, 40, 48), 2), ((24, 5, 32), 0)])
def test_column_sums_reduce_in_vector_lanes(shape, axis):
    """sum(cast(x), axis) over a non-innermost axis (the attention zero-point corrections): the "columns" rule,
    lanes along the contiguous axis, equal to NumPy."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", C.tensor_type(shape, "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.sum(relax.op.astype(x, "int32"), axis=[axis], keepdims=True))
        bb.emit_func_output(out)
    target = tvm.target.Target(TARGET)
    with target:
        fused = C.fuse(bb.get())
    (func,) = _kernels(fused).values()
    scheduled, rule = ds.schedule_primfunc(func, PARAMS)
    assert rule == "columns" and "T.vectorized" in scheduled.script()
    data = np.random.default_rng(0).integers(-128, 128, shape).astype(np.int8)
    vm = relax.VirtualMachine(tvm.compile(ds.apply_default_schedules(fused, target, PARAMS), target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_array_equal(got, data.astype(np.int32).sum(axis=axis, keepdims=True))


def test_a_row_kernel_with_per_row_results_runs_under_one_row_loop():
    """Per-row quantization (int8 codes with each row's shift k and zero point z, which the next matmul reads)
    is one row kernel with three results (fuse_rows): scheduled by the "rows" rule from its first block's rows,
    every stage under that one parallel loop, and bit-exact against the unscheduled build and intmath."""
    from compiler.build import fuse_kernels

    bb = relax.BlockBuilder()
    x = relax.Var("x", C.tensor_type((ROWS, 4 * HIDDEN), "int16"))
    with bb.function("main", [x]):
        with bb.dataflow():
            q, k, z = intops.emit_row_quantize(bb, x)
            out = bb.emit_output(relax.Tuple([q, k, z]))
        bb.emit_func_output(out)
    target = tvm.target.Target(TARGET)
    fused = fuse_kernels(bb.get(), target)
    kernels = _kernels(fused)
    assert len(kernels) == 1, list(kernels)  # one kernel, three results
    (name, func), = kernels.items()
    assert len(func.params) == 5  # x, the span thresholds; k, z and the codes
    sched, rule = ds.schedule_primfunc(func, PARAMS)
    assert rule == "rows", rule
    text = sched.script()
    assert text.count("T.parallel") == 1 and "T.vectorized" in text
    xs = np.random.default_rng(3).integers(-30000, 30000, (ROWS, 4 * HIDDEN)).astype(np.int16)
    xs[0] = 7  # a flat row: k = 0
    xs[1, ::2] = 0  # a small span
    xs[1, 1::2] = 3
    plain = _run(fused, target, [xs])
    out = fused.clone()
    out[out.get_global_var(name)] = sched.with_attr("tir.is_scheduled", True)
    got = _run(out, target, [xs])
    want = io.row_quantize(xs)
    for a, b, c in zip(got, plain, want):
        assert a.dtype == c.dtype and np.array_equal(a, b) and np.array_equal(a, c)


def test_a_group_with_two_first_ops_hands_out_one_result_per_kernel():
    """f = x as int32; a = 2f; hi, lo = row max, min; d = f - hi - lo; a, d and hi read outside. {hi, lo, d}
    would start at two reductions of f (an input of that kernel): a row schedule from one of them would run the
    other over every row inside each row. fuse_rows splits such a group at its results instead; every kernel
    gets a real schedule (no per-block fallback) and the results are bit-exact."""
    from compiler.build import fuse_kernels

    bb = relax.BlockBuilder()
    x = relax.Var("x", C.tensor_type((ROWS, 4 * HIDDEN), "int16"))
    with bb.function("main", [x]):
        with bb.dataflow():
            f = bb.emit(R.astype(x, "int32"))
            a = bb.emit(R.multiply(f, R.const(2, "int32")))
            hi = bb.emit(R.max(f, axis=[-1], keepdims=True))
            lo = bb.emit(R.min(f, axis=[-1], keepdims=True))
            d = bb.emit(R.subtract(R.subtract(f, hi), lo))
            out = bb.emit_output(relax.Tuple([a, d, hi]))
        bb.emit_func_output(out)
    target = tvm.target.Target(TARGET)
    fused = fuse_kernels(bb.get(), target)
    scheduled = fused.clone()
    for name, func in _kernels(fused).items():
        sched, rule = ds.schedule_primfunc(func, PARAMS)
        assert rule != "per_block", name
        scheduled[scheduled.get_global_var(name)] = sched.with_attr("tir.is_scheduled", True)
    xs = np.random.default_rng(4).integers(-30000, 30000, (ROWS, 4 * HIDDEN)).astype(np.int16)
    got = _run(scheduled, target, [xs])
    f32 = xs.astype(np.int32)
    hi32, lo32 = f32.max(axis=1, keepdims=True), f32.min(axis=1, keepdims=True)
    for g, w in zip(got, (2 * f32, f32 - hi32 - lo32, hi32)):
        assert np.array_equal(g, w)


def test_a_row_kernel_with_two_first_stages_and_a_mid_result_is_not_run_from_one_stages_rows():
    """hi = row max of X, lo = row min of X, D = X - hi - lo, with hi a result too: scheduled from hi's rows, lo
    (which reads only X) would run over every row inside each row's iteration; the rows rule declines."""
    from compiler.tvm_compat import tir_script as T

    @T.prim_func(s_tir=True)
    def kernel(X: T.Buffer((32, 64), "int32"), HI: T.Buffer((32, 1), "int32"), D: T.Buffer((32, 64), "int32")):
        LO = T.sblock_alloc_buffer((32, 1), "int32")
        for i, k, j in T.grid(32, 1, 64):
            with T.sblock("hi"):
                vi, vk, vj = T.axis.remap("SSR", [i, k, j])
                with T.init():
                    HI[vi, vk] = -2147483647
                HI[vi, vk] = T.max(HI[vi, vk], X[vi, vj])
        for i, k, j in T.grid(32, 1, 64):
            with T.sblock("lo"):
                vi, vk, vj = T.axis.remap("SSR", [i, k, j])
                with T.init():
                    LO[vi, vk] = 2147483647
                LO[vi, vk] = T.min(LO[vi, vk], X[vi, vj])
        for i, j in T.grid(32, 64):
            with T.sblock("d"):
                vi, vj = T.axis.remap("SS", [i, j])
                D[vi, vj] = X[vi, vj] - HI[vi, 0] - LO[vi, 0]

    sch = C.Schedule(kernel)
    blocks = ds._inline(sch, C.normalize_prim_func(sch))
    assert not ds._rows(sch, blocks, PARAMS)
