"""stack_scratch (compiler/passes/stack_scratch.py): a row kernel's per-row scratch (a 3 KiB int64 row, above
TVM's 1 KiB stack limit) goes on the stack instead of a workspace alloc/free pair per row; a budget too small for
it leaves the workspace pool in charge; the results never change."""

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler import tvm_compat as C
from compiler.passes.stack_scratch import stack_scratch
from compiler.tvm_compat import tir_script as T

ROWS, COLS = 16, 384


@T.prim_func(s_tir=True)
def _centre_rows(X: T.Buffer((16, 384), "int32"), Z: T.Buffer((16, 384), "int64")):
    Y = T.sblock_alloc_buffer((16, 384), "int64")
    S = T.sblock_alloc_buffer((16, 1), "int64")
    for i, j in T.grid(16, 384):
        with T.sblock("y"):
            vi, vj = T.axis.remap("SS", [i, j])
            Y[vi, vj] = T.Cast("int64", X[vi, vj]) * T.int64(3)
    for i, k, j in T.grid(16, 1, 384):
        with T.sblock("s"):
            vi, vk, vj = T.axis.remap("SSR", [i, k, j])
            with T.init():
                S[vi, vk] = T.int64(0)
            S[vi, vk] = S[vi, vk] + Y[vi, vj]
    for i, j in T.grid(16, 384):
        with T.sblock("z"):
            vi, vj = T.axis.remap("SS", [i, j])
            Z[vi, vj] = Y[vi, vj] - S[vi, 0]


def _module():
    """main(x) calling the kernel scheduled as the row rule does: y and s computed under z's row loop, so each
    row's 384 int64 values live in a 3 KiB buffer allocated inside that loop."""
    sch = C.Schedule(_centre_rows)
    row = sch.get_loops(sch.get_sblock("z"))[0]
    sch.compute_at(sch.get_sblock("s"), row)
    sch.compute_at(sch.get_sblock("y"), row)
    bb = relax.BlockBuilder()
    kernel = bb.add_func(sch.mod["main"].with_attr("tir.is_scheduled", True), "centre_rows")
    x = relax.Var("x", C.tensor_type((ROWS, COLS), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.call_tir(kernel, [x], C.tensor_type((ROWS, COLS), "int64"))))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("passes, workspace", [((), True), ((stack_scratch(),), False),
                                               ((stack_scratch(budget=1024),), True)],
                         ids=["tvm_alone", "stack", "over_budget"])
def test_row_scratch_on_the_stack_within_the_budget(passes, workspace):
    target = tvm.target.Target({"kind": "llvm"})
    ex = C.compile_module(_module(), target, tir_passes=list(passes))
    asm = ex.mod.imports[0].inspect_source("asm")
    assert ("TVMBackendAllocWorkspace" in asm) == workspace
    x = np.random.default_rng(0).integers(-(2**31), 2**31 - 1, (ROWS, COLS)).astype(np.int32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    y = x.astype(np.int64) * 3
    assert np.array_equal(got, y - y.sum(axis=1, keepdims=True))

