"""share_bucket_constants, Before/Expected: a smaller bucket's constant equal to the first rows of the largest
bucket's becomes a slice of it (stored once); a constant that is not such a prefix, or is small, stays."""

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


def _expected(before):
    big = [e for e in _constants(before["main_32"]) if np.array_equal(constant_value(e), TABLE)][0]
    bb = BlockBuilder()
    x = relax.Var("x", tensor_type((16, 64), "int64"))
    with bb.function("main_16", [x]):
        with bb.dataflow():
            table = bb.emit(relax.op.strided_slice(big, axes=[0], begin=[0], end=[16]))
            a = bb.emit(relax.op.add(x, table))
            b = bb.emit_output(relax.op.add(a, const(TABLE[16:32] + 1, "int64")))
        bb.emit_func_output(b)
    return bb.get()["main_16"]


def _constants(func):
    found = []
    relax.analysis.post_order_visit(func, lambda e: found.append(e) if constant_value(e) is not None else None)
    return found


def test_prefix_constant_becomes_a_slice_of_the_largest():
    before = _before()
    got, saved = share_bucket_constants(before, [{"seq": 16}, {"seq": 32}], ["main_16", "main_32"])
    assert saved == TABLE[:16].nbytes
    assert structural_equal(got["main_16"].without_attr("global_symbol"),
                            _expected(before).without_attr("global_symbol"))
    assert structural_equal(got["main_32"], before["main_32"])


def test_one_bucket_is_left_alone():
    before = _before()
    got, saved = share_bucket_constants(before, [{"seq": 32}], ["main_32"])
    assert got.same_as(before) and saved == 0
