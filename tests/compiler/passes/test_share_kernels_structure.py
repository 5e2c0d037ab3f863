"""share_kernels, Before/Expected: kernels that differ only in the immediates of their stored values become one
kernel reading the differing immediates from a constant tensor parameter; the immediates all members agree on
stay immediates, `x - c` counts as `x + (-c)`, and a kernel that differs in a divisor is left alone."""

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I, relax as R

from compiler.passes.share_kernels import share_kernels
from compiler.tvm_compat import BlockBuilder, const, tensor_type, tir_script as T


@I.ir_module
class Before:
    @T.prim_func(private=True, s_tir=True)
    def scale_a(x: T.Buffer((4, 8), "int64"), y: T.Buffer((4, 8), "int64")):
        for i, j in T.grid(4, 8):
            with T.sblock("y"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = (x[vi, vj] * T.int64(3) + T.int64(5) >> T.int64(2)) + T.int64(7)

    @T.prim_func(private=True, s_tir=True)
    def scale_b(x: T.Buffer((4, 8), "int64"), y: T.Buffer((4, 8), "int64")):
        for i, j in T.grid(4, 8):
            with T.sblock("y"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = (x[vi, vj] * T.int64(11) + T.int64(5) >> T.int64(2)) - T.int64(9)

    @T.prim_func(private=True, s_tir=True)
    def div_a(x: T.Buffer((4, 8), "int64"), y: T.Buffer((4, 8), "int64")):
        for i, j in T.grid(4, 8):
            with T.sblock("y"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = T.floordiv(x[vi, vj], T.int64(3))

    @T.prim_func(private=True, s_tir=True)
    def div_b(x: T.Buffer((4, 8), "int64"), y: T.Buffer((4, 8), "int64")):
        for i, j in T.grid(4, 8):
            with T.sblock("y"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = T.floordiv(x[vi, vj], T.int64(5))

    @R.function
    def main(x: R.Tensor((4, 8), "int64")):
        cls = Before
        with R.dataflow():
            a = R.call_tir(cls.scale_a, (x,), out_ty=R.Tensor((4, 8), "int64"))
            b = R.call_tir(cls.scale_b, (a,), out_ty=R.Tensor((4, 8), "int64"))
            c = R.call_tir(cls.div_a, (b,), out_ty=R.Tensor((4, 8), "int64"))
            d = R.call_tir(cls.div_b, (c,), out_ty=R.Tensor((4, 8), "int64"))
            R.output(d)
        return d


@I.ir_module
class Shared:
    @T.prim_func(private=True, s_tir=True)
    def scale_a_shared(x: T.Buffer((4, 8), "int64"), consts_int64: T.Buffer((2,), "int64"),
                       y: T.Buffer((4, 8), "int64")):
        for i, j in T.grid(4, 8):
            with T.sblock("y"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = T.Add(x[vi, vj] * consts_int64[T.int64(0)] + T.int64(5) >> T.int64(2),
                                  consts_int64[T.int64(1)])


def _expected():
    bb = BlockBuilder(Before)
    shared = bb.add_func(Shared["scale_a_shared"], "scale_a_shared")
    rows = tensor_type((4, 8), "int64")
    x = relax.Var("x", rows)
    main = BlockBuilder()
    with main.function("main", [x]):
        with main.dataflow():
            a = main.emit(relax.call_tir(shared, [x, const([3, 7], "int64")], rows))
            b = main.emit(relax.call_tir(shared, [a, const([11, -9], "int64")], rows))
            c = main.emit(relax.call_tir(Before.get_global_var("div_a"), [b], rows))
            d = main.emit_output(relax.call_tir(Before.get_global_var("div_b"), [c], rows))
        main.emit_func_output(d)
    bb.update_func(Before.get_global_var("main"), main.get()["main"])
    return relax.transform.DeadCodeElimination()(bb.get())


def test_kernels_equal_but_for_constants_become_one():
    got, removed = share_kernels(Before)
    assert removed == 1
    assert sorted(gv.name_hint for gv in got.functions) == ["div_a", "div_b", "main", "scale_a_shared"]
    tvm.ir.assert_structural_equal(got, _expected())


def test_the_shared_kernel_computes_what_each_member_did():
    target = tvm.target.Target({"kind": "llvm"})
    x = np.arange(-16, 16, dtype="int64").reshape(4, 8) * 977
    outs = []
    for mod in (Before, share_kernels(Before)[0]):
        vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    a = ((x * 3 + 5) >> 2) + 7
    b = ((a * 11 + 5) >> 2) - 9
    np.testing.assert_array_equal(outs[1], b // 3 // 5)


def test_a_module_without_classes_is_returned_as_is():
    @I.ir_module
    class Lone:
        @T.prim_func(private=True, s_tir=True)
        def k(x: T.Buffer((4,), "int32"), y: T.Buffer((4,), "int32")):
            for i in range(4):
                with T.sblock("y"):
                    vi = T.axis.remap("S", [i])
                    y[vi] = x[vi] + 1

        @R.function
        def main(x: R.Tensor((4,), "int32")):
            cls = Lone
            with R.dataflow():
                y = R.call_tir(cls.k, (x,), out_ty=R.Tensor((4,), "int32"))
                R.output(y)
            return y

    got, removed = share_kernels(Lone)
    assert removed == 0
    tvm.ir.assert_structural_equal(got, Lone)
