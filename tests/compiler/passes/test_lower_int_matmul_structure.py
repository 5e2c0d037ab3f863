"""LowerIntMatmul and FuseGemmEpilogue, Before/Expected: integer matmuls become calls of the project's kernels
(schedules/int8_matmul.py). The kernels are the schedules' own PrimFuncs (tests/schedules check their numbers bit
for bit); what is written here by hand is the graph around them: which kernel, which operands (the weight
packed at compile time, the activation-offset correction), which output type, and what stays in the graph.
The target is fixed (an AVX-512 VNNI CPU by name), so the test does not depend on the host and builds nothing."""

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I, relax as R

from compiler.passes.fuse_gemm_epilogue import FuseGemmEpilogue
from compiler.passes.lower_int_matmul import LowerIntMatmul
from compiler.tvm_compat import BlockBuilder, const, tensor_type
from schedules.gemm_epilogue import Epilogue, EpilogueStep, pair_requantize
from schedules.int8_matmul import batch_primfunc, gemm_args, gemm_primfunc, select_batch_kernel, select_kernel

VNNI = tvm.target.Target({"kind": "llvm", "mcpu": "rocketlake", "mtriple": "x86_64-linux-gnu", "num-cores": 2})
ARMV7 = tvm.target.Target({"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mattr": ["+neon"]})
W = (np.arange(8 * 16).reshape(8, 16) % 7 - 3).astype(np.int8)
M0, ROUND, SHIFT, ZP = 1234567890, 1 << 30, 31, 3


def _before():
    @I.ir_module
    class Before:
        @R.function
        def main(a: R.Tensor((4, 8), "int8"), b: R.Tensor((2, 4, 8), "int8"), c: R.Tensor((2, 8, 16), "int8")):
            with R.dataflow():
                y = R.matmul(a, R.const(W, "int8"), out_dtype="int32")
                z = R.matmul(b, c, out_dtype="int32")
                v = R.add(R.multiply(R.astype(y, "int64"), R.const(M0, "int64")), R.const(ROUND, "int64"))
                v = R.add(R.right_shift(v, R.const(SHIFT, "int64")), R.const(ZP, "int64"))
                q = R.astype(R.clip(v, -128, 127), "int8")
                R.output(z, q)
            return (z, q)

    return Before


def _kernel(bb, func, name):
    return bb.add_func(func.with_attr("global_symbol", name), name)


def _params():
    return [relax.Var("a", tensor_type((4, 8), "int8")), relax.Var("b", tensor_type((2, 4, 8), "int8")),
            relax.Var("c", tensor_type((2, 8, 16), "int8"))]


def test_lower_int_matmul_calls_the_packed_weight_and_batch_kernels():
    kern, bkern = select_kernel(VNNI), select_batch_kernel(VNNI)
    assert kern.isa == bkern.isa == "avx512vnni" and kern.act_offset  # u8 x s8: a +128 offset, corrected
    bb = BlockBuilder()
    gemm = _kernel(bb, gemm_primfunc(4, 8, 16, kern), "intformer_qgemm_avx512vnni_4x8x16")
    bmm = _kernel(bb, batch_primfunc(2, 4, 8, 16, bkern), "intformer_qbmm_avx512vnni_2x4x8x16")
    a, b, c = params = _params()
    with bb.function("main", params):
        with bb.dataflow():
            # (4, 16) needs no padding of rows (row tile) or columns (16 lanes): no slice after the calls
            packed, correction = gemm_args(W, kern)
            y = bb.emit(relax.call_tir(gemm, [a, const(packed, "int8"), const(correction, "int32")],
                                       tensor_type((4, 16), "int32")))
            y = bb.emit(y)
            z = bb.emit(relax.call_tir(bmm, [b, c], tensor_type((2, 4, 16), "int32")))
            z = bb.emit_output(z)
            v = bb.emit(R.add(R.multiply(R.astype(y, "int64"), R.const(M0, "int64")), R.const(ROUND, "int64")))
            v = bb.emit(R.add(R.right_shift(v, R.const(SHIFT, "int64")), R.const(ZP, "int64")))
            q = bb.emit_output(R.astype(R.clip(v, -128, 127), "int8"))
        bb.emit_func_output(relax.Tuple([z, q]))
    expected = bb.get()
    got = LowerIntMatmul(VNNI)(_before())
    tvm.ir.assert_structural_equal(got["main"], expected["main"], map_free_vars=True)
    for name in ("intformer_qgemm_avx512vnni_4x8x16", "intformer_qbmm_avx512vnni_2x4x8x16"):
        tvm.ir.assert_structural_equal(got[name], expected[name])


def test_lower_int_matmul_keeps_plain_matmuls_without_a_kernel():
    before = _before()  # 32-bit ARM: no kernel of the project's, LLVM's own code
    tvm.ir.assert_structural_equal(LowerIntMatmul(ARMV7)(before), before)


def test_fuse_gemm_epilogue_writes_int8_from_the_kernel():
    """The requantize chain after the constant-weight matmul (astype, multiply, add, right_shift, add, clip,
    astype int8) becomes the epilogue of one kernel call writing the int8 result, on VNNI in its int32 form
    (gemm_epilogue.pair_requantize: a pre-shift, mulhi, ...); its scalar constants are the call's operands in step
    order. The activation matmul is left for LowerIntMatmul."""
    kern = select_kernel(VNNI)
    i64 = "int64"
    epilogue = Epilogue((
        EpilogueStep("astype", i64), EpilogueStep("multiply", i64, "scalar", i64),
        EpilogueStep("add", i64, "scalar", i64), EpilogueStep("right_shift", i64, "scalar", i64),
        EpilogueStep("add", i64, "scalar", i64), EpilogueStep("clip", i64, attrs=(-128, 127)),
        EpilogueStep("astype", "int8")))
    epilogue, values = pair_requantize(epilogue, tuple(np.array([v], np.int64) for v in (M0, ROUND, SHIFT, ZP)),
                                       128 * np.abs(W.astype(np.int64)).sum(axis=0))
    assert [s.op for s in epilogue.steps][:2] == ["left_shift", "mulhi"] and kern.pair_mulhi
    bb = BlockBuilder()
    name = f"intformer_qgemm_avx512vnni_4x8x16_{epilogue.tag()}"
    gemm = _kernel(bb, gemm_primfunc(4, 8, 16, kern, epilogue), name)
    a, b, c = params = _params()
    with bb.function("main", params):
        with bb.dataflow():
            z = bb.emit_output(R.matmul(b, c, out_dtype="int32"))
            packed, correction = gemm_args(W, kern)
            operands = [const(v, str(v.dtype)) for v in values]  # a scalar: one element
            q = bb.emit(relax.call_tir(gemm, [a, const(packed, "int8"), const(correction, "int32"), *operands],
                                       tensor_type((4, 16), "int8")))
            q = bb.emit_output(q)
        bb.emit_func_output(relax.Tuple([z, q]))
    expected = bb.get()
    got = FuseGemmEpilogue(VNNI)(_before())
    tvm.ir.assert_structural_equal(got["main"], expected["main"], map_free_vars=True)
    tvm.ir.assert_structural_equal(got[name], expected[name])
