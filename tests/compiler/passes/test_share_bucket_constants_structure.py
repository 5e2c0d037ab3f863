"""share_bucket_constants, Before/Expected: a smaller bucket's constant equal to the first rows of the largest
bucket's becomes a slice of it (stored once), and the largest bucket reads it through a whole slice (the buckets
keep one sequence of operations); a constant that is not such a prefix stays."""

import numpy as np
from tvm import relax

from compiler.passes.share_bucket_constants import share_bucket_constants
from compiler.tvm_compat import BlockBuilder, const, constant_value, structural_equal, tensor_type

TABLE = np.arange(32 * 64, dtype="int64").reshape(32, 64)  # 16 KB: a position table of 32 positions


def _bucket(bb, name, size, other):
    x = relax.Var("x", tensor_type((size, 64), "int64"))
    with bb.function(name, [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.add(x, const(TABLE[:size], "int64")))
            b = bb.emit_output(relax.op.add(a, const(other, "int64")))
        bb.emit_func_output(b)


def _before():
    bb = BlockBuilder()
    _bucket(bb, "main_16", 16, TABLE[16:32] + 1)  # not a prefix of the largest bucket's second constant
    _bucket(bb, "main_32", 32, TABLE * 0 + 7)
    return bb.get()


def _expected(before, name, size, other):
    """`name` reading the table through a slice of the largest bucket's constant (the largest one: all of it)."""
    big = [e for e in _constants(before["main_32"]) if np.array_equal(constant_value(e), TABLE)][0]
    bb = BlockBuilder()
    x = relax.Var("x", tensor_type((size, 64), "int64"))
    with bb.function(name, [x]):
        with bb.dataflow():
            table = bb.emit(relax.op.strided_slice(big, axes=[0], begin=[0], end=[size]))
            a = bb.emit(relax.op.add(x, table))
            b = bb.emit_output(relax.op.add(a, [e for e in _constants(before[name]) if np.array_equal(
                constant_value(e), other)][0]))
        bb.emit_func_output(b)
    return bb.get()[name]


def _constants(func):
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if constant_value(e) is not None else None)
    return found


def test_prefix_constant_becomes_a_slice_of_the_largest():
    before = _before()
    got, saved = share_bucket_constants(before, [{"seq": 16}, {"seq": 32}], ["main_16", "main_32"])
    assert saved == TABLE[:16].nbytes
    for name, size, other in (("main_16", 16, TABLE[16:32] + 1), ("main_32", 32, TABLE * 0 + 7)):
        assert structural_equal(got[name].without_attr("global_symbol"),
                                _expected(before, name, size, other).without_attr("global_symbol"))


def test_one_bucket_is_left_alone():
    before = _before()
    got, saved = share_bucket_constants(before, [{"seq": 32}], ["main_32"])
    assert got.same_as(before) and saved == 0
