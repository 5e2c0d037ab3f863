"""A minimal GEMM over a packed weight, tensorized by hand with one dot-product intrinsic: the unit test of an
intrinsic alone (tests/schedules/test_x86_vnni.py, test_arm_dot.py), apart from the default schedules."""

from __future__ import annotations

import numpy as np

from compiler.tvm_compat import Schedule, tir_script as T


def _packed_gemm(m: int, k: int, n: int, lanes: int, kg: int, a_dtype: str, w_dtype: str):
    @T.prim_func(s_tir=True)
    def gemm(a: T.Buffer((m, k), a_dtype), w: T.Buffer((n // lanes, k // kg, lanes, kg), w_dtype),
             c: T.Buffer((m, n), "int32")):
        for i, j, r in T.grid(m, n, k):
            with T.sblock("c"):
                vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                with T.init():
                    c[vi, vj] = 0
                c[vi, vj] = c[vi, vj] + T.Cast("int32", a[vi, vr]) * T.Cast(
                    "int32", w[vj // lanes, vr // kg, vj % lanes, vr % kg])

    return gemm


def tensorized_gemm(m: int, k: int, n: int, intrin, a_dtype: str, w_dtype: str):
    """The IRModule of c (m, n) int32 = a (m, k) @ w, w packed (n/lanes, k/k_group, lanes, k_group), its
    (lanes, k_group) blocks computed by ``intrin`` (a DotIntrin)."""
    s = Schedule(_packed_gemm(m, k, n, intrin.lanes, intrin.k, a_dtype, w_dtype))
    blk = s.get_sblock("c")
    i, j, r = s.get_loops(blk)
    jo, ji = s.split(j, [None, intrin.lanes])
    ro, ri = s.split(r, [None, intrin.k])
    s.reorder(i, jo, ro, ji, ri)
    s.decompose_reduction(blk, ro)
    s.tensorize(ji, intrin.name)
    return s.mod


def pack(w: np.ndarray, lanes: int, kg: int) -> np.ndarray:
    """(k, n) -> (n/lanes, k/kg, lanes, kg), k and n multiples (the layout tensorized_gemm reads)."""
    k, n = w.shape
    return np.ascontiguousarray(w.reshape(k // kg, kg, n // lanes, lanes).transpose(2, 0, 3, 1))
