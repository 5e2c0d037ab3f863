"""apply_default_schedules, Before/Expected: on the fused module (tvm_compat.fuse: LegalizeOps, FuseOps, FuseTIR),
an elementwise kernel gets its producer inlined (one loop nest), the innermost loop split to the lane count and
vectorized, the other loops fused, run in parallel only from PARALLEL_MIN_WORK element operations on, and is
marked tir.is_scheduled; the Relax function is untouched. Fixed CpuParams (512-bit vectors: 16 int32 lanes,
2 cores) keep the test independent of the host."""

import tvm
from tvm import relax
from tvm.script import relax as R

from compiler import tvm_compat as C
from compiler.passes.default_schedule import PARALLEL_MIN_WORK, CpuParams, apply_default_schedules
from compiler.tvm_compat import tir_script as T

P = CpuParams(vector_bits=512, cores=2)


def _fused(rows):
    """main(x) = (x + 1) * 2 on int32 (rows, 64), fused into one kernel (rows is a parameter: a BlockBuilder)."""
    bb = C.BlockBuilder()
    x = relax.Var("x", C.tensor_type((rows, 64), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(R.multiply(R.add(x, R.const(1, "int32")), R.const(2, "int32")))
        bb.emit_func_output(y)
    return C.fuse(bb.get())


def test_small_elementwise_kernel_is_inlined_and_vectorized_on_one_thread():
    @T.prim_func(private=True, s_tir=True)
    def expected(x: T.Buffer((T.int64(4), T.int64(64)), "int32"),
                 out: T.Buffer((T.int64(4), T.int64(64)), "int32")):
        T.func_attr({"tir.is_scheduled": True, "tirx.noalias": True})
        for i_j0 in range(T.int64(16)):  # 4 x 64 / 16 lanes: 256 operations, far below PARALLEL_MIN_WORK
            for j1 in T.vectorized(T.int64(16)):
                with T.sblock("T_multiply"):
                    v0 = T.axis.spatial(T.int64(4), i_j0 // T.int64(4))
                    v1 = T.axis.spatial(T.int64(64), i_j0 % T.int64(4) * T.int64(16) + j1)
                    T.reads(x[v0, v1])
                    T.writes(out[v0, v1])
                    out[v0, v1] = (x[v0, v1] + 1) * 2

    before = _fused(4)
    got = apply_default_schedules(before, None, P)
    tvm.ir.assert_structural_equal(got["fused_add_multiply"], expected)
    tvm.ir.assert_structural_equal(got["main"], before["main"])


def test_kernel_with_enough_work_runs_its_fused_loop_in_parallel():
    rows = PARALLEL_MIN_WORK // 64

    @T.prim_func(private=True, s_tir=True)
    def expected(x: T.Buffer((T.int64(rows), T.int64(64)), "int32"),
                 out: T.Buffer((T.int64(rows), T.int64(64)), "int32")):
        T.func_attr({"tir.is_scheduled": True, "tirx.noalias": True})
        for i_j0 in T.parallel(T.int64(rows * 4)):
            for j1 in T.vectorized(T.int64(16)):
                with T.sblock("T_multiply"):
                    v0 = T.axis.spatial(T.int64(rows), i_j0 // T.int64(4))
                    v1 = T.axis.spatial(T.int64(64), i_j0 % T.int64(4) * T.int64(16) + j1)
                    T.reads(x[v0, v1])
                    T.writes(out[v0, v1])
                    out[v0, v1] = (x[v0, v1] + 1) * 2

    got = apply_default_schedules(_fused(rows), None, P)
    tvm.ir.assert_structural_equal(got["fused_add_multiply"], expected)


def test_scheduled_kernels_are_left_alone():
    before = _fused(4)
    gv = before.get_global_var("fused_add_multiply")
    before[gv] = before[gv].with_attr("tir.is_scheduled", True)
    tvm.ir.assert_structural_equal(apply_default_schedules(before, None, P), before)
