"""The compile report's records (compiler/report.py): the JSON they write is the format users read, key for key
and in the same order, and reads back to equal records."""

import json

from compiler.calibrate.table import CalibrationInfo
from compiler.report import CompileReport, GraphReport, MatmulCounts, OpRecord

OPS = (OpRecord("relax.matmul", ("int8", "int8"), "int32"),
       OpRecord("relax.astype", ("int64",), "int16"),
       OpRecord("relax.nn.softmax", ("float32",), "float32"),
       OpRecord("relax.reshape", ("float32",), "float32"),
       OpRecord("relax.nn.softmax", ("float32",), "float32"),
       OpRecord("relax.dequantize", ("int16", "float32", "int16"), "float32", edge="output"))


def test_graph_report_counts_and_json():
    r = GraphReport.of_ops(OPS, onnx_matmuls=2)
    assert r.matmuls == MatmulCounts(total=2, int8=1) and r.requantize_ops == 1
    assert r.float_op_counts == (("relax.nn.softmax", 2),) and r.float_ops == ["relax.nn.softmax"]
    d = r.to_json()
    assert list(d) == ["matmuls", "requantize_ops", "float_ops", "float_op_counts", "ops"]
    assert d["matmuls"] == {"total": 2, "int8": 1} and d["float_op_counts"] == {"relax.nn.softmax": 2}
    assert d["ops"][-1] == {"op": "relax.dequantize", "dtypes": {"inputs": ["int16", "float32", "int16"],
                                                                  "output": "float32"}, "edge": "output"}
    assert GraphReport.from_json(json.loads(json.dumps(d))) == r


def test_compile_report_keys_in_the_order_they_were_always_written():
    g = GraphReport.of_ops(OPS, 2)
    rep = CompileReport.of(g, buckets=("8", "16"), tuned_kernels=0, model="/m.onnx", target={"name": "host"},
                           calibration=CalibrationInfo("minmax", "data", 99.99, samples=64))
    d = rep.to_json()
    assert list(d) == ["matmuls", "requantize_ops", "float_ops", "float_op_counts", "ops", "buckets",
                       "tuned_kernels", "model", "target", "calibration"]
    assert d["calibration"] == {"method": "minmax", "source": "data", "samples": 64, "percentile": 99.99}
    assert CompileReport.from_json(json.loads(json.dumps(d))) == rep
    assert rep.summary() == g and type(rep.summary()) is GraphReport


def test_merged_report_of_several_graphs():
    enc, dec = GraphReport.of_ops(OPS[:3], 1), GraphReport.of_ops(OPS[2:], 0)
    merged = GraphReport.merge({"encoder": enc, "decoder": dec})
    assert merged.matmuls == MatmulCounts(1, 1) and merged.float_op_counts == (("relax.nn.softmax", 3),)
    assert [o.entry for o in merged.ops] == ["encoder"] * 3 + ["decoder"] * 4
    calibration = CalibrationInfo("entropy", "data", 99.99, encoder_samples=3, decoder_samples=40)
    rep = CompileReport.of(merged, graphs=(("encoder", enc), ("decoder", dec)), calibration=calibration,
                           tuned_kernels=0, model="/b", target={})
    d = rep.to_json()
    assert list(d) == ["graphs", "matmuls", "float_ops", "float_op_counts", "requantize_ops", "ops", "calibration",
                       "tuned_kernels", "model", "target"]
    assert d["calibration"] == {"method": "entropy", "source": "data", "encoder_samples": 3, "decoder_samples": 40,
                                "percentile": 99.99}
    assert d["ops"][0] == {"op": "relax.matmul", "dtypes": {"inputs": ["int8", "int8"], "output": "int32"},
                           "entry": "encoder"}
    assert CompileReport.from_json(json.loads(json.dumps(d))) == rep
