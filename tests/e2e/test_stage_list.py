"""The stage list is the whole compiler: `--dump-ir` writes one file per stage of compiler/pipeline.py, named
after it and in its order, the build's steps (legalize, fuse_rows, fuse, apply_db, default_schedule, codegen)
included."""

import os

from compiler.api import compile_model
from compiler.config import CompileOptions
from compiler.pipeline import stage_names


def test_dump_ir_writes_one_file_per_stage(tiny_bert, tmp_path):
    model, calib, _ = tiny_bert
    dump = tmp_path / "ir"
    compile_model(model, str(tmp_path / "bert.so"), CompileOptions(
        input_shapes=(("input_ids", (1, 16)),), calibration_data=calib, dump_ir=str(dump)))
    names = stage_names()
    assert {"legalize", "fuse_rows", "fuse", "apply_db", "default_schedule", "codegen"} <= set(names)
    files = sorted(os.listdir(dump))
    assert [f.split(".")[0] for f in files] == [f"{i:02d}_{n}" for i, n in enumerate(names)]
    kinds = [f.split(".", 1)[1] for f in files]
    first_relax = names.index("import")
    assert set(kinds[:first_relax]) == {"onnx.txt"}
    assert set(kinds[first_relax:-1]) == {"relax.py"} and kinds[-1] == "vm.txt"

    def dumped(stage):
        with open(dump / files[names.index(stage)]) as f:
            return f.read()

    # the build's steps show: the int8 GEMM kernels only before legalize, every op a kernel after it, fewer
    # kernels after fusing
    def kernels(stage):
        return dumped(stage).count("@T.prim_func")

    assert 0 < kernels("manifest") < kernels("legalize") and kernels("fuse") < kernels("fuse_rows")


def test_dump_ir_of_a_ranged_compile(tiny_bert, tmp_path):
    """Ranged shapes: the dispatch stage's file shows the dispatching `main` (range check, the smaller bucket
    under its condition), and no dump file name has a space."""
    from compiler.config import DimRange

    model, calib, _ = tiny_bert
    dump = tmp_path / "ir"
    compile_model(model, str(tmp_path / "bert.so"), CompileOptions(
        input_shapes=(("input_ids", (1, DimRange(1, 16))),), calibration_data=calib, buckets=(("seq", (8,)),),
        dump_ir=str(dump)))
    files = sorted(os.listdir(dump))
    assert files and not [f for f in files if " " in f]
    dispatch = [f for f in files if "dispatch" in f]
    assert dispatch
    text = (dump / dispatch[0]).read_text()
    assert "R.assert_op(seq >= 1 and seq <= 16" in text and "if seq <= 8:" in text and "main_8(" in text
