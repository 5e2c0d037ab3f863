import json

import pytest

from compiler.calibrate.table import CalibrationTable, TensorRange
from compiler.errors import IntformerError


def _table():
    return CalibrationTable("abc", (("input_ids", (1, 8)),), 4, 99.99, "data",
                            (("t", TensorRange(-1.0, 2.0, -0.5, 1.5)),), (("input_ids", (0.0, 99.0)),),
                            0.85, (("t", (1.0, 2.0)),))


def test_round_trip(tmp_path):
    p = tmp_path / "t.json"
    _table().save(str(p))
    assert CalibrationTable.load(str(p)) == _table()


@pytest.mark.parametrize("content,match", [("{", "not a JSON"), ('{"a": 1}', "not an intformer calibration"),
                                           ('{"format": "intformer-calibration", "version": 99}', "version 99")])
def test_bad_files(tmp_path, content, match):
    p = tmp_path / "t.json"
    p.write_text(content)
    with pytest.raises(IntformerError, match=match):
        CalibrationTable.load(str(p))
    with pytest.raises(IntformerError, match="no such file"):
        CalibrationTable.load(str(tmp_path / "missing.json"))
    _ = json
