"""Default bucket sizes of a ranged dim (compiler/ranged.py): steps of 8 up to 48, of 16 up to 96, then 128, 192,
256, 384, ..., always the range's top; --buckets sizes outside the range are an error. The defaults follow the
measurement in the README ("One library for every length"): short sentences land in the 8-wide steps, the size
stays within 10% of a fixed-shape library on all-MiniLM-L6-v2."""

import pytest

from compiler.config import TensorSpec
from compiler.errors import IntformerError
from compiler.ranged import bucket_sizes, default_sizes


def test_default_sizes():
    assert default_sizes(1, 128) == (8, 16, 24, 32, 40, 48, 64, 80, 96, 128)
    assert default_sizes(20, 100) == (24, 32, 40, 48, 64, 80, 96, 100)
    assert default_sizes(1, 512) == (8, 16, 24, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512)
    assert default_sizes(1, 16) == (8, 16)  # a small range still sees the axis move
    assert default_sizes(1, 8) == (1, 8)
    assert default_sizes(5, 5) == (5,)


def test_given_sizes_keep_the_top_and_stay_in_the_range():
    spec = TensorSpec("input_ids", (1, 128), "int64", ranges=((1, 1, 128, "seq"),))
    assert bucket_sizes([spec], (("seq", (16, 48)),)) == {"seq": (16, 48, 128)}
    with pytest.raises(IntformerError, match="outside its range"):
        bucket_sizes([spec], (("seq", (256,)),))
