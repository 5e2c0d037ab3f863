"""share_buckets, Before/Expected: the buckets' copies of a kernel that differ only in their length become one
kernel over `n` (after its inputs), called with each bucket's size; a copy whose symbolic form would divide by
`n` stays per bucket; kernels equal in every literal are merged without `n`. Numerics: the built module gives
each bucket's NumPy result."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I, relax as R

from compiler.passes.share_buckets import share_buckets
from compiler.tvm_compat import PrimFunc, parse_prim_func, structural_equal, tensor_type, tir_script as T


@I.ir_module
class Before:
    @T.prim_func(private=True, s_tir=True)
    def rows16(x: T.Buffer((T.int64(16), T.int64(8)), "int64"), y: T.Buffer((T.int64(16), T.int64(8)), "int64")):
        for i in range(T.int64(16)):
            for j in T.vectorized(T.int64(8)):
                with T.sblock("y"):
                    vi = T.axis.spatial(T.int64(16), i)
                    vj = T.axis.spatial(T.int64(8), j)
                    y[vi, vj] = x[vi, vj] * T.int64(3)

    @T.prim_func(private=True, s_tir=True)
    def rows32(x: T.Buffer((T.int64(32), T.int64(8)), "int64"), y: T.Buffer((T.int64(32), T.int64(8)), "int64")):
        for i in range(T.int64(32)):
            for j in T.vectorized(T.int64(8)):
                with T.sblock("y"):
                    vi = T.axis.spatial(T.int64(32), i)
                    vj = T.axis.spatial(T.int64(8), j)
                    y[vi, vj] = x[vi, vj] * T.int64(3)

    @T.prim_func(private=True, s_tir=True)
    def flat16(x: T.Buffer((T.int64(16), T.int64(8)), "int64"), y: T.Buffer((T.int64(16), T.int64(8)), "int64")):
        for k in range(T.int64(128)):
            with T.sblock("y"):
                vi = T.axis.spatial(T.int64(16), k % T.int64(16))
                vj = T.axis.spatial(T.int64(8), k // T.int64(16))
                y[vi, vj] = x[vi, vj] + T.int64(1)

    @T.prim_func(private=True, s_tir=True)
    def flat32(x: T.Buffer((T.int64(32), T.int64(8)), "int64"), y: T.Buffer((T.int64(32), T.int64(8)), "int64")):
        for k in range(T.int64(256)):
            with T.sblock("y"):
                vi = T.axis.spatial(T.int64(32), k % T.int64(32))
                vj = T.axis.spatial(T.int64(8), k // T.int64(32))
                y[vi, vj] = x[vi, vj] + T.int64(1)

    @T.prim_func(private=True, s_tir=True)
    def head_a(x: T.Buffer((T.int64(4),), "int64"), y: T.Buffer((T.int64(4),), "int64")):
        for i in range(T.int64(4)):
            with T.sblock("y"):
                vi = T.axis.spatial(T.int64(4), i)
                y[vi] = x[vi] * T.int64(2)

    @T.prim_func(private=True, s_tir=True)
    def head_b(x: T.Buffer((T.int64(4),), "int64"), y: T.Buffer((T.int64(4),), "int64")):
        for i in range(T.int64(4)):
            with T.sblock("y"):
                vi = T.axis.spatial(T.int64(4), i)
                y[vi] = x[vi] * T.int64(2)

    @R.function
    def main_16(x: R.Tensor((16, 8), "int64"), h: R.Tensor((4,), "int64")):
        cls = Before
        with R.dataflow():
            a = R.call_tir(cls.rows16, (x,), out_ty=R.Tensor((16, 8), "int64"))
            b = R.call_tir(cls.flat16, (a,), out_ty=R.Tensor((16, 8), "int64"))
            c = R.call_tir(cls.head_a, (h,), out_ty=R.Tensor((4,), "int64"))
            R.output(b, c)
        return (b, c)

    @R.function
    def main_32(x: R.Tensor((32, 8), "int64"), h: R.Tensor((4,), "int64")):
        cls = Before
        with R.dataflow():
            a = R.call_tir(cls.rows32, (x,), out_ty=R.Tensor((32, 8), "int64"))
            b = R.call_tir(cls.flat32, (a,), out_ty=R.Tensor((32, 8), "int64"))
            c = R.call_tir(cls.head_b, (h,), out_ty=R.Tensor((4,), "int64"))
            R.output(b, c)
        return (b, c)


_ROWS_N = """
# from tvm.script import tirx as T
@T.prim_func(private=True, s_tir=True)
def rows_n(n: T.int64, x: T.Buffer((n, T.int64(8)), "int64"), y: T.Buffer((n, T.int64(8)), "int64")):
    for i in range(n):
        for j in T.vectorized(T.int64(8)):
            with T.sblock("y"):
                vi = T.axis.spatial(n, i)
                vj = T.axis.spatial(T.int64(8), j)
                y[vi, vj] = x[vi, vj] * T.int64(3)
"""


def _calls(func) -> list:
    calls = []
    relax.analysis.post_order_visit(func, lambda e: calls.append(e) if isinstance(e, relax.Call) and hasattr(
        e.args[0], "name_hint") and e.op.name == "relax.call_tir" else None)
    return calls


def _shared():
    return share_buckets(Before, [{"seq": 16}, {"seq": 32}], ["main_16", "main_32"])


def test_length_copies_become_one_kernel_over_n():
    got, removed = _shared()
    c16, c32 = _calls(got["main_16"]), _calls(got["main_32"])
    assert c16[0].args[0].same_as(c32[0].args[0]) and c16[0].args[0].name_hint == "rows16_n"
    assert [int(f.value) for f in c16[0].args[1].fields[1:]] == [16]
    assert [int(f.value) for f in c32[0].args[1].fields[1:]] == [32]
    rows_n = parse_prim_func(_ROWS_N)
    n, x, y = rows_n.params
    expected = PrimFunc([x, n, y], rows_n.body, rows_n.ret_type, rows_n.attrs)
    assert structural_equal(got["rows16_n"].without_attr("global_symbol") if "global_symbol" in (
        got["rows16_n"].attrs or {}) else got["rows16_n"], expected)
    # a division by n (the flattened loop's remainder) would cost a multiply-and-shift per element: kept apart
    assert c16[1].args[0].name_hint == "flat16" and c32[1].args[0].name_hint == "flat32"
    # equal in every literal: one kernel, no n
    assert c16[2].args[0].same_as(c32[2].args[0]) and len(c32[2].args[1].fields) == 1
    names = {gv.name_hint for gv in got.get_global_vars()}
    assert not names & {"rows16", "rows32", "head_b"} and removed == 3  # rows16, rows32 (for rows16_n), head_b


def test_one_bucket_is_left_alone():
    got, removed = share_buckets(Before, [{"seq": 16}], ["main_16"])
    assert got.same_as(Before) and removed == 0


@pytest.mark.parametrize("size", [16, 32])
def test_shared_kernels_give_each_buckets_result(size):
    from compiler.build import codegen
    from targets import resolve_target

    got, _ = _shared()
    vm = relax.VirtualMachine(codegen(got, resolve_target("host").tvm_target()), tvm.cpu())
    x = np.arange(size * 8, dtype="int64").reshape(size, 8) - 50
    h = np.array([1, -2, 3, 4], "int64")
    b, c = vm[f"main_{size}"](tvm.runtime.tensor(x), tvm.runtime.tensor(h))
    np.testing.assert_array_equal(b.numpy(), x * 3 + 1)
    np.testing.assert_array_equal(c.numpy(), h * 2)


@pytest.mark.parametrize("points, expected", [
    ([(16, 16), (32, 32), (128, 128)], (1, 1, 0, 1)),  # the length itself
    ([(16, 96), (32, 192)], (1, 6, 0, 1)),  # a flattened (n, 6) loop
    ([(16, 2), (32, 4), (128, 16)], (1, 1, 0, 8)),  # the row tiles of 8
    ([(24, 32), (40, 48), (128, 128)], (16, 16, 0, 1)),  # rounded up to a vector of 16
    ([(24, 2), (40, 3), (128, 8)], (16, 1, 0, 1)),  # the vectors of 16 it takes
    ([(16, 3), (32, 5), (128, 100)], None),  # no such function: the kernels stay per bucket
])
def test_literals_are_fitted_exactly(points, expected):
    from compiler.passes.share_buckets import _fit

    assert _fit(points) == expected


def test_a_kernel_called_twice_is_replaced_at_each_call():
    """Call sites pair up by position: the second call of rows16 pairs with the second call of rows32."""
    bb = relax.BlockBuilder(Before)
    for size in (16, 32):
        x = relax.Var("x", tensor_type((size, 8), "int64"))
        with bb.function(f"twice_{size}", [x]):
            with bb.dataflow():
                rows = Before.get_global_var(f"rows{size}")
                a = bb.emit(relax.call_tir(rows, [x], tensor_type((size, 8), "int64")))
                b = bb.emit_output(relax.call_tir(rows, [a], tensor_type((size, 8), "int64")))
            bb.emit_func_output(b)
    got, _ = share_buckets(bb.get(), [{"seq": 16}, {"seq": 32}], ["twice_16", "twice_32"])
    calls = [c for name in ("twice_16", "twice_32") for c in _calls(got[name])]
    assert len({c.args[0].name_hint for c in calls}) == 1
    assert [int(c.args[1].fields[1].value) for c in calls] == [16, 16, 32, 32]


def test_buckets_that_do_not_line_up_share_among_those_that_do():
    """A batch bucket of size 1 groups its rows otherwise (fuse_rows drops unit axes: (L, H) and (1, L, H) are the
    same rows, so its add joins the row group, where the other buckets keep it in a kernel of its own): buckets 2,
    3 and 4 still share their kernels, bucket 1 keeps its own."""
    from compiler.build import fuse, group_rows, legalize
    from compiler.passes.default_schedule import apply_default_schedules
    from targets import resolve_target

    host = resolve_target("host").tvm_target()
    bb = relax.BlockBuilder()
    for b in (1, 2, 3, 4):
        x = relax.Var("x", tensor_type((b * 8, 32), "int32"))
        with bb.function(f"main_{b}", [x]):
            with bb.dataflow():
                r = bb.emit(relax.op.reshape(bb.emit(relax.op.add(x, x)), (b, 8, 32)))
                y = bb.emit_output(relax.op.subtract(r, bb.emit(relax.op.max(r, axis=[-1], keepdims=True))))
            bb.emit_func_output(y)
    built = apply_default_schedules(fuse(group_rows(legalize(bb.get(), host)), host), host)

    def callees(mod, name):
        found = []
        relax.analysis.post_order_visit(mod[name], lambda e: found.append(e.args[0].name_hint) if isinstance(
            e, relax.Call) and e.op == tvm.ir.Op.get("relax.call_tir") else None)
        return found

    assert len(callees(built, "main_1")) == 1 and len(callees(built, "main_2")) == 2  # they do not line up
    shared, removed = share_buckets(built, [{"B": b} for b in (1, 2, 3, 4)], [f"main_{b}" for b in (1, 2, 3, 4)])
    assert removed >= 2  # at least the 2, 3 and 4 buckets' add kernels -> one (each rule of the pass still holds)
    assert len({callees(shared, f"main_{b}")[0] for b in (2, 3, 4)}) == 1
    assert callees(shared, "main_1") == callees(built, "main_1")
