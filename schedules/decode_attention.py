"""The two matmuls of one decode step's grouped-query attention, reading the int8 KV cache where it lies.

A decode step (one query token) scores its queries against every cached key and sums the cached values under
the probabilities. Through batch matmuls that meant, per layer and step, copying the layer's keys and values
out of the whole-model cache (and appending the new token's), the probabilities split into two tensors and the
values summed in a third pass: eight small kernels and two copies of the layer's cache, most of a decode
step's attention time. These two kernels take the whole cache and the layer's index instead.

Expects: the cache as compiler/frontend/llama.py keeps it: keys int8 (layers, kv_heads, d, context) (transposed),
values int8 (layers, kv_heads, context, d); query heads h = g * groups + r reading KV head g; context a multiple
of 16.

Guarantees:
- ``qk_decode_primfunc(layers, kv, groups, d, context)``: ``(q int8 (kv * groups, 1, d), keys, k_new int8
  (kv, d, 1), layer int32 (1,)) -> int32 (kv, groups, context + 1)``: ``q . keys[layer, g, :, j]`` for every
  cache position j, then ``q . k_new[g]`` (the step's own key) in the last column: int8 x int8 products summed
  in int32 (|sum| <= d * 2**14, exact).
- ``pv_decode_primfunc(layers, kv, groups, context, d)``: ``(p int32 (kv, groups, context + 1), values, v_new
  int8 (kv, 1, d), layer int32 (1,)) -> int32 (kv, groups, d)``: ``sum_j p[j] * V[j]`` over the cache and the
  new value, for the fine softmax's probabilities (0 <= p <= 65535, a row summing to at most 65535 + keys / 2:
  compiler/intmath/llama.py ATTN_FINE_MAX): each p as its two bytes, ``256 * (hi . V) + (lo . V)``, two
  uint8 x int8 products summed in int32 as the batch kernels sum the two halves: |hi . V| <= (256 + keys /
  512) * 128, |lo . V| <= keys * 255 * 128, the result at most (65535 + keys / 2) * 128: int32 for any
  context below 2**16.
- ``emit_qk_decode`` / ``emit_pv_decode`` add the kernels and return their calls; KERNEL_PREFIX names them
  (the op report counts QK as one int8 matmul and P.V as two).

Plain vectorized integer arithmetic (16 lanes of int32): correct on every target; a decode step's attention is a
few thousand multiply-adds per layer, so what is saved is the passes over memory and the kernel calls.
"""

from __future__ import annotations

from functools import cache

from tvm import relax

from compiler.tvm_compat import const, tensor_info, tensor_type, tir_script as T
from schedules.int8_matmul import FIXED_ATTR, OP_PATTERN_OPAQUE

LANES = 16  # int32 lanes of one vector; the context must be a multiple
FIXED = "decode attention"  # FIXED_ATTR: tuning leaves the kernels alone
KERNEL_PREFIX = "intformer_attn_decode_"


def supported(context: int) -> bool:
    return context % LANES == 0


def _attrs(func):
    return func.with_attrs({"op_pattern": OP_PATTERN_OPAQUE, "tir.is_scheduled": True, FIXED_ATTR: FIXED})


@cache
def qk_decode_primfunc(layers: int, kv: int, groups: int, d: int, context: int):
    """Scores of one query token against the cached keys of one layer and its own key (module docstring)."""
    if not supported(context):
        raise ValueError(f"decode attention needs the context a multiple of {LANES}, got {context}")
    heads = kv * groups
    width = 4 * LANES if context % (4 * LANES) == 0 else LANES  # cache positions per register tile

    @T.prim_func(check_well_formed=False)
    def qk(q: T.Buffer((heads, 1, d), "int8"), keys: T.Buffer((layers, kv, d, context), "int8"),
           k_new: T.Buffer((kv, d, 1), "int8"), layer: T.Buffer((1,), "int32"),
           out: T.Buffer((kv, groups, context + 1), "int32")):
        T.func_attr({"tirx.noalias": True})
        acc = T.decl_buffer((groups, width), "int32")
        for g in range(kv):
            for jb in range(context // width):
                for r in T.unroll(groups):
                    for c in T.vectorized(width):
                        acc[r, c] = 0
                for e in range(d):
                    for r in T.unroll(groups):
                        for c in T.vectorized(width):
                            acc[r, c] = acc[r, c] + T.Cast("int32", q[g * groups + r, 0, e]) * T.Cast(
                                "int32", keys[layer[0], g, e, jb * width + c])
                for r in T.unroll(groups):
                    for c in T.vectorized(width):
                        out[g, r, jb * width + c] = acc[r, c]
            for r in range(groups):
                out[g, r, context] = 0
                for e in range(d):
                    out[g, r, context] = out[g, r, context] + T.Cast("int32", q[g * groups + r, 0, e]) * T.Cast(
                        "int32", k_new[g, e, 0])

    return _attrs(qk)


@cache
def pv_decode_primfunc(layers: int, kv: int, groups: int, context: int, d: int):
    """Probabilities times the cached values of one layer and the new value (module docstring)."""
    if not supported(context):
        raise ValueError(f"decode attention needs the context a multiple of {LANES}, got {context}")

    @T.prim_func(check_well_formed=False)
    def pv(p: T.Buffer((kv, groups, context + 1), "int32"), values: T.Buffer((layers, kv, context, d), "int8"),
           v_new: T.Buffer((kv, 1, d), "int8"), layer: T.Buffer((1,), "int32"),
           out: T.Buffer((kv, groups, d), "int32")):
        T.func_attr({"tirx.noalias": True})
        hi = T.decl_buffer((groups, d), "int32")
        lo = T.decl_buffer((groups, d), "int32")
        for g in range(kv):
            for r in T.unroll(groups):
                for c in T.vectorized(d):
                    hi[r, c] = 0
                    lo[r, c] = 0
            for j in range(context):
                for r in T.unroll(groups):
                    for c in T.vectorized(d):
                        hi[r, c] = hi[r, c] + T.shift_right(p[g, r, j], 8) * T.Cast("int32", values[layer[0], g, j, c])
                        lo[r, c] = lo[r, c] + T.bitwise_and(p[g, r, j], 255) * T.Cast("int32",
                                                                                         values[layer[0], g, j, c])
            for r in T.unroll(groups):
                for c in T.vectorized(d):
                    out[g, r, c] = (T.shift_left(hi[r, c] + T.shift_right(p[g, r, context], 8)
                                                 * T.Cast("int32", v_new[g, 0, c]), 8)
                                    + lo[r, c] + T.bitwise_and(p[g, r, context], 255) * T.Cast("int32", v_new[g, 0, c]))

    return _attrs(pv)


def _layer_arg(layer: int):
    return const([layer], "int32")


def emit_qk_decode(bb: relax.BlockBuilder, q, keys, k_new, layer: int) -> relax.Expr:
    """int32 (kv, groups, context + 1) scores of q int8 (heads, 1, d) against layer `layer` of the cache `keys`
    (layers, kv, d, context) and the step's own key k_new (kv, d, 1)."""
    layers, kv, d, context = (int(v) for v in tensor_info(keys)[1])
    heads = int(tensor_info(q)[1][0])
    name = f"{KERNEL_PREFIX}qk_{kv}x{heads // kv}x{d}x{context}"
    gv = bb.add_func(qk_decode_primfunc(layers, kv, heads // kv, d, context).with_attr("global_symbol", name), name)
    return bb.emit(relax.call_tir(gv, [q, keys, k_new, _layer_arg(layer)],
                                  tensor_type((kv, heads // kv, context + 1), "int32")))


def emit_pv_decode(bb: relax.BlockBuilder, p, values, v_new, layer: int) -> relax.Expr:
    """int32 (kv, groups, d): probabilities p int32 (kv, groups, context + 1) times layer `layer` of the cache
    `values` (layers, kv, context, d) and the step's own value v_new (kv, 1, d)."""
    layers, kv, context, d = (int(v) for v in tensor_info(values)[1])
    groups = int(tensor_info(p)[1][1])
    name = f"{KERNEL_PREFIX}pv_{kv}x{groups}x{context}x{d}"
    gv = bb.add_func(pv_decode_primfunc(layers, kv, groups, context, d).with_attr("global_symbol", name), name)
    return bb.emit(relax.call_tir(gv, [p, values, v_new, _layer_arg(layer)], tensor_type((kv, groups, d), "int32")))


__all__ = ["KERNEL_PREFIX", "LANES", "emit_pv_decode", "emit_qk_decode", "pv_decode_primfunc",
           "qk_decode_primfunc", "supported"]
