import numpy as np
from tvm import relax

from compiler.passes.fold_qdq import FoldQDQ
from compiler.passes.op_report import list_ops
from compiler.tvm_compat import const, dead_code_elimination, tensor_type

R = relax.op


def _mod(s2, z2):
    bb = relax.BlockBuilder()
    x = relax.Var("x", tensor_type((4,), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            d = bb.emit(R.dequantize(x, const(0.5, "float32"), const(3, "int8"), out_dtype="float32"))
            q = bb.emit(R.quantize(d, const(s2, "float32"), const(z2, "int8"), out_dtype="int8"))
            out = bb.emit_output(R.add(q, q))
        bb.emit_func_output(out)
    return bb.get()


def test_identical_round_trip_folds():
    mod = dead_code_elimination()(FoldQDQ()(_mod(0.5, 3)))
    assert [o.op for o in list_ops(mod)] == ["relax.add"]


def test_different_parameters_stay():
    for s, z in ((0.25, 3), (0.5, 4)):
        mod = dead_code_elimination()(FoldQDQ()(_mod(s, z)))
        assert [o.op for o in list_ops(mod)] == ["relax.dequantize", "relax.quantize", "relax.add"]
    _ = np
