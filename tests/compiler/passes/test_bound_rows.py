"""bound_rows (compiler/passes/bound_rows.py): in a ranged library's buckets, a row kernel (one loop over the
bucket's rows, each iteration on its own row) runs the input's rows only and writes zeros past them; kernels
whose iterations are not the bucket's tokens (heads x queries, a fixed 16 rows, a read of another row, a reshape)
keep every row."""

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler import tvm_compat as C
from compiler.passes.bound_rows import ROWS_SUFFIX, bound_rows
from compiler.ranged import LENGTH_PARAM, bucket_name
from compiler.tvm_compat import tir_script as T
from schedules.gemm_epilogue import EPILOGUE_ATTR

SIZES = (8, 16)


def _scale(b: int):
    """y = 3x - x's row sum: a row kernel over b rows (a parallel loop of b iterations, 4 columns each)."""

    @T.prim_func(s_tir=True)
    def scale(x: T.Buffer((T.int64(1), T.int64(b), T.int64(4)), "int32"),
              y: T.Buffer((T.int64(1), T.int64(b), T.int64(4)), "int32")):
        T.func_attr({"tir.is_scheduled": True})
        s = T.sblock_alloc_buffer((T.int64(1), T.int64(b)), "int32")
        for i in T.parallel(T.int64(b)):
            for k in range(T.int64(4)):
                with T.sblock("s"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    with T.init():
                        s[T.int64(0), vi] = 0
                    s[T.int64(0), vi] = s[T.int64(0), vi] + x[T.int64(0), vi, vk]
            for j in range(T.int64(4)):
                with T.sblock("y"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    y[T.int64(0), vi, vj] = x[T.int64(0), vi, vj] * 3 - s[T.int64(0), vi]

    return scale


def _flat(b: int):
    """y = x + 1 as one flat loop of b * 2 iterations, two per row (an elementwise kernel's schedule)."""

    @T.prim_func(s_tir=True)
    def flat(x: T.Buffer((T.int64(b), T.int64(4)), "int32"), y: T.Buffer((T.int64(b), T.int64(4)), "int32")):
        T.func_attr({"tir.is_scheduled": True})
        for f in range(T.int64(b * 2)):
            for c in range(T.int64(2)):
                with T.sblock("y"):
                    vi = T.axis.spatial(T.int64(b), f // T.int64(2))
                    vj = T.axis.spatial(T.int64(4), f % T.int64(2) * T.int64(2) + c)
                    y[vi, vj] = x[vi, vj] + 1

    return flat


def _flatten(b: int):
    """(1, b, 4) -> (b * 4,): a reshape (the VM runs it as a view) that folds the rows into one axis."""

    @T.prim_func(s_tir=True)
    def flatten(x: T.Buffer((T.int64(1), T.int64(b), T.int64(4)), "int32"), y: T.Buffer((T.int64(b * 4),), "int32")):
        T.func_attr({"tir.is_scheduled": True})
        for f in range(T.int64(b * 4)):
            with T.sblock("y"):
                vf = T.axis.spatial(T.int64(b * 4), f)
                y[vf] = x[T.int64(0), vf // T.int64(4), vf % T.int64(4)]

    return flatten


def _first_row(b: int):
    """y = x + x[0]: each iteration also reads row 0."""

    @T.prim_func(s_tir=True)
    def first_row(x: T.Buffer((T.int64(b), T.int64(4)), "int32"), y: T.Buffer((T.int64(b), T.int64(4)), "int32")):
        T.func_attr({"tir.is_scheduled": True})
        for i in T.parallel(T.int64(b)):
            for j in range(T.int64(4)):
                with T.sblock("y"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    y[vi, vj] = x[vi, vj] + x[T.int64(0), vj]

    return first_row


def _heads(b: int):
    """Per (head, query) rows of a (1, 2, b, 4) tensor: the loop runs 2 * b iterations, but its rows are heads
    first."""

    @T.prim_func(s_tir=True)
    def heads(x: T.Buffer((T.int64(1), T.int64(2), T.int64(b), T.int64(4)), "int32"),
              y: T.Buffer((T.int64(1), T.int64(2), T.int64(b), T.int64(4)), "int32")):
        T.func_attr({"tir.is_scheduled": True})
        for f in T.parallel(T.int64(2 * b)):
            for j in range(T.int64(4)):
                with T.sblock("y"):
                    vh = T.axis.spatial(T.int64(2), f // T.int64(b))
                    vq = T.axis.spatial(T.int64(b), f % T.int64(b))
                    vj = T.axis.spatial(T.int64(4), j)
                    y[T.int64(0), vh, vq, vj] = x[T.int64(0), vh, vq, vj] * 2

    return heads


def _colsum(b: int):
    """y[j] = sum over the b rows of x[:, j]: reads every row (as attention reads keys, pooling reads tokens)."""

    @T.prim_func(s_tir=True)
    def colsum(x: T.Buffer((T.int64(1), T.int64(b), T.int64(4)), "int32"), y: T.Buffer((T.int64(4),), "int32")):
        T.func_attr({"tir.is_scheduled": True})
        for j, i in T.grid(T.int64(4), T.int64(b)):
            with T.sblock("y"):
                vj, vi = T.axis.remap("SR", [j, i])
                with T.init():
                    y[vj] = 0
                y[vj] = y[vj] + x[T.int64(0), vi, vj]

    return colsum


def _vector_loop(b: int):
    """y = x + 1 over b rows of one element as one vectorized loop (an extent LLVM needs at compile time)."""

    @T.prim_func(s_tir=True)
    def vec(x: T.Buffer((T.int64(b), T.int64(1)), "int32"), y: T.Buffer((T.int64(b), T.int64(1)), "int32")):
        T.func_attr({"tir.is_scheduled": True})
        for i in T.vectorized(T.int64(b)):
            with T.sblock("y"):
                vi = T.axis.spatial(T.int64(b), i)
                y[vi, T.int64(0)] = x[vi, T.int64(0)] + 1

    return vec


def _gemm_like(b: int, epilogue: str):
    """A stand-in for a GEMM given the length (schedules/int8_matmul.py's names and epilogue attribute): y = x + r,
    `r` a per-row operand."""

    @T.prim_func(s_tir=True)
    def gemm(x: T.Buffer((T.int64(1), T.int64(b), T.int64(4)), "int32"),
             r: T.Buffer((T.int64(1), T.int64(b), T.int64(4)), "int32"), rows: T.int64,
             y: T.Buffer((T.int64(1), T.int64(b), T.int64(4)), "int32")):
        T.func_attr({"tir.is_scheduled": True})
        for j, i in T.grid(T.int64(4), T.int64(b)):  # columns outside rows, as the GEMMs' column tiles
            with T.sblock("y"):
                vj, vi = T.axis.remap("SS", [j, i])
                y[T.int64(0), vi, vj] = x[T.int64(0), vi, vj] + r[T.int64(0), vi, vj]

    return gemm.with_attr(EPILOGUE_ATTR, epilogue)


@T.prim_func(s_tir=True)
def _sixteen(x: T.Buffer((T.int64(16), T.int64(4)), "int32"), y: T.Buffer((T.int64(16), T.int64(4)), "int32")):
    T.func_attr({"tir.is_scheduled": True})
    for i in T.parallel(T.int64(16)):
        for j in range(T.int64(4)):
            with T.sblock("y"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = x[vi, vj] - 1


def _private(func):
    return func.without_attr("global_symbol")  # each bucket's copy is named by add_func


def _module(kernels, with_length: bool = True):
    """One bucket function per size b in SIZES taking x (1, b, 4) (and the input's length last), returning the
    tuple of each kernel's result: "scale" on x, "heads" on x as (1, 2, b/2, 4), "sixteen" on a (16, 4) constant,
    the others on x as (b, 4); every bucket calls its own copy of each kernel ({name: size -> PrimFunc})."""
    bb = relax.BlockBuilder()
    for b in SIZES:
        x = relax.Var("x", C.tensor_type((1, b, 4), "int32"))
        params = [x] + ([relax.Var(LENGTH_PARAM, C.prim_type("int64"))] if with_length else [])
        with bb.function(bucket_name({"seq": b}), params):
            with bb.dataflow():
                outs = []
                for name, make in kernels.items():
                    if name == "heads":
                        arg, shape = bb.emit(relax.op.reshape(x, (1, 2, b // 2, 4))), (1, 2, b // 2, 4)
                        gv = bb.add_func(_private(_heads(b // 2)), f"heads{b}")
                    elif name == "scale":
                        arg, shape, gv = x, (1, b, 4), bb.add_func(_private(make(b)), f"scale{b}")
                    elif name in ("gemm_add", "gemm_div"):  # the first kernel's result as its per-row operand
                        op = "add" if name == "gemm_add" else "floor_divide"
                        gv = bb.add_func(_private(_gemm_like(b, f'[["{op}", "int32", "row", "int32"]]')),
                                         f"intformer_qgemm_{name}{b}")
                        outs.append(bb.emit(relax.call_tir(gv, [x, outs.pop(0), params[-1]],
                                                           C.tensor_type((1, b, 4), "int32"))))
                        continue
                    elif name == "flatten":  # a view of the first kernel's result that folds its rows
                        outs.append(bb.emit(relax.call_tir(bb.add_func(_private(_flatten(b)), f"flatten{b}"),
                                                           [outs.pop(0)], C.tensor_type((b * 4,), "int32"))))
                        continue
                    elif name == "vector":
                        arg, shape = bb.emit(relax.op.reshape(x, (b * 4, 1))), (b * 4, 1)
                        gv = bb.add_func(_private(_vector_loop(b * 4)), f"vector{b}")
                    elif name == "colsum":  # over the first kernel's result
                        arg, shape = outs.pop(0), (4,)
                        gv = bb.add_func(_private(make(b)), f"colsum{b}")
                    elif name == "sixteen":
                        arg, shape = relax.const(np.ones((16, 4), np.int32)), (16, 4)
                        gv = bb.add_func(_private(_sixteen), f"sixteen{b}")
                    else:
                        arg, shape = bb.emit(relax.op.reshape(x, (b, 4))), (b, 4)
                        gv = bb.add_func(_private(make(b)), f"{name}{b}")
                    outs.append(bb.emit(relax.call_tir(gv, [arg], C.tensor_type(shape, "int32"))))
                out = bb.emit_output(relax.Tuple(outs))
            bb.emit_func_output(out)
    return bb.get()


def _sizes():
    return {bucket_name({"seq": b}): b for b in SIZES}


def _calls(func):
    calls = []
    relax.analysis.post_order_visit(func, lambda e: calls.append(e) if isinstance(e, relax.Call)
                                    and e.op.same_as(tvm.ir.Op.get("relax.call_tir")) else None)
    return calls


def _expected_scale(b: int):
    @T.prim_func(s_tir=True)
    def scale_rows(x: T.Buffer((T.int64(1), T.int64(b), T.int64(4)), "int32"), rows: T.int64,
                   y: T.Buffer((T.int64(1), T.int64(b), T.int64(4)), "int32")):
        T.func_attr({"tir.is_scheduled": True})
        s = T.sblock_alloc_buffer((T.int64(1), T.int64(b)), "int32")
        for i in T.parallel(T.min(T.max(rows, T.int64(0)), T.int64(b))):
            for k in range(T.int64(4)):
                with T.sblock("s"):  # the blocks keep their iteration domains (b rows)
                    vi = T.axis.spatial(T.int64(b), i)
                    vk = T.axis.reduce(T.int64(4), k)
                    with T.init():
                        s[T.int64(0), vi] = 0
                    s[T.int64(0), vi] = s[T.int64(0), vi] + x[T.int64(0), vi, vk]
            for j in range(T.int64(4)):
                with T.sblock("y"):
                    vi = T.axis.spatial(T.int64(b), i)
                    vj = T.axis.spatial(T.int64(4), j)
                    y[T.int64(0), vi, vj] = x[T.int64(0), vi, vj] * 3 - s[T.int64(0), vi]
        for z0, z1, z2 in T.grid(T.int64(1), T.int64(b) - T.min(T.max(rows, T.int64(0)), T.int64(b)), T.int64(4)):
            y[z0, T.min(T.max(rows, T.int64(0)), T.int64(b)) + z1, z2] = 0

    return scale_rows


def test_row_kernel_runs_the_inputs_rows_in_every_bucket():
    """Before/Expected: each bucket's row kernel becomes <name>_rows with `rows` after its input, called with
    the bucket function's length; the loop runs min(max(rows, 0), B) iterations, then the rows past are zeros."""
    mod, sites = bound_rows(_module({"scale": _scale}), _sizes())
    assert sites == 2
    for b in SIZES:
        name = bucket_name({"seq": b})
        (call,) = [c for c in _calls(mod[name]) if c.args[0].name_hint.startswith("scale")]
        assert call.args[0].name_hint == f"scale{b}{ROWS_SUFFIX}"
        assert call.args[1].fields[-1].same_as(mod[name].params[-1])  # the bucket's length
        got = C.simplify_prim_func(mod[call.args[0]].without_attr("global_symbol"))
        want = C.simplify_prim_func(_expected_scale(b).without_attr("global_symbol"))
        assert C.structural_equal(got, want, map_free_vars=True), got.script()
    assert "scale8" not in [gv.name_hint for gv in mod.get_global_vars()]  # the unbounded copies are gone


@pytest.mark.parametrize("other", ["first_row", "heads", "sixteen"])
def test_kernels_whose_iterations_are_not_the_tokens_keep_every_row(other):
    """Beside a row kernel (bounded): a kernel reading row 0 in every iteration; rows of (head, query), as many
    as the bucket's rows but heads first; a kernel of 16 rows in every bucket (one bucket's size by chance)."""
    makers = {"first_row": _first_row, "heads": _heads, "sixteen": None}  # heads, sixteen: built by _module
    mod, sites = bound_rows(_module({"scale": _scale, other: makers[other]}), _sizes())
    assert sites == 2
    names = [gv.name_hint for gv in mod.get_global_vars()]
    assert sorted(n for n in names if n.endswith(ROWS_SUFFIX)) == sorted(f"scale{b}{ROWS_SUFFIX}" for b in SIZES), names


def test_row_kernel_read_across_rows_downstream_keeps_every_row():
    """A row kernel whose result a kernel reads across its rows (a sum over tokens, as attention over keys): its
    rows past the length would enter that sum, so it keeps every row."""
    mod, sites = bound_rows(_module({"scale": _scale, "colsum": _colsum}), _sizes())
    assert sites == 0
    assert not [gv for gv in mod.get_global_vars() if gv.name_hint.endswith(ROWS_SUFFIX)]


@pytest.mark.parametrize("consumer, bounded", [("gemm_add", 2), ("gemm_div", 0), ("flatten", 0), ("vector", 2)])
def test_what_reads_a_bounded_result(consumer, bounded):
    """A GEMM given the length may read the row kernel's result as a per-row operand unless its epilogue divides
    by one (its padded tile rows would divide by zero); a view folding the rows into one axis hides them from
    the checks, so its producer keeps every row; a vectorized loop over the rows is never bounded (its extent
    must be known when compiled), the row kernel beside it is."""
    mod, sites = bound_rows(_module({"scale": _scale, consumer: None}), _sizes())
    assert sites == bounded
    names = [gv.name_hint for gv in mod.get_global_vars() if gv.name_hint.endswith(ROWS_SUFFIX)]
    assert all(n.startswith("scale") for n in names), names


def test_flat_elementwise_loop_and_numbers():
    """A flat loop of 2 iterations per row is bounded too; run at every length (and out of range ones): the
    input's rows equal the unbounded module's, the rest zeros."""
    before = _module({"scale": _scale, "flat": _flat})
    after, sites = bound_rows(before, _sizes())
    assert sites == 4
    target = tvm.target.Target({"kind": "llvm"})
    vm0 = relax.VirtualMachine(tvm.compile(before, target), tvm.cpu())
    vm1 = relax.VirtualMachine(tvm.compile(after, target), tvm.cpu())
    rng = np.random.default_rng(0)
    for b in SIZES:
        x = rng.integers(-1000, 1000, (1, b, 4)).astype(np.int32)
        want = [w.numpy() for w in vm0[bucket_name({"seq": b})](tvm.runtime.tensor(x), 0)]
        for rows in [*range(0, b + 1), -5, 1 << 40]:
            got = [g.numpy() for g in vm1[bucket_name({"seq": b})](tvm.runtime.tensor(x), rows)]
            done = min(max(rows, 0), b)
            scale, flat = got[0][0], got[1]
            assert np.array_equal(scale[:done], want[0][0][:done]), (b, rows)
            assert np.array_equal(flat[:done], want[1][:done]), (b, rows)
            assert not scale[done:].any() and not flat[done:].any(), (b, rows)


def test_bounded_kernel_zeroes_rows_past_the_length_whatever_memory_held():
    mod, _ = bound_rows(_module({"scale": _scale}), _sizes())
    kernel = mod[mod.get_global_var(f"scale16{ROWS_SUFFIX}")]
    lib = C.build_tir(kernel.with_attr("global_symbol", "scale16_rows"), tvm.target.Target({"kind": "llvm"}))
    x = np.arange(64, dtype=np.int32).reshape(1, 16, 4)
    y = tvm.runtime.tensor(np.full((1, 16, 4), 12345, np.int32))
    lib(tvm.runtime.tensor(x), 5, y)
    got = y.numpy()
    assert np.array_equal(got[:, :5], x[:, :5] * 3 - x[:, :5].sum(axis=2, keepdims=True))
    assert not got[:, 5:].any()


def test_no_length_parameter_or_one_bucket_changes_nothing():
    mod = _module({"scale": _scale}, with_length=False)
    assert bound_rows(mod, _sizes()) == (mod, 0)
    mod = _module({"scale": _scale})
    assert bound_rows(mod, {bucket_name({"seq": 8}): 8})[1] == 0
