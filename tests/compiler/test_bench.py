"""`intformer bench` / `--per-op` size TVM's thread pool through TVM_NUM_THREADS only while they run."""

import os

import pytest

from compiler.bench import tvm_threads


def test_tvm_threads_is_restored_after_the_block(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    with tvm_threads(3):
        assert os.environ["TVM_NUM_THREADS"] == "3"
    assert "TVM_NUM_THREADS" not in os.environ

    monkeypatch.setenv("TVM_NUM_THREADS", "7")
    with pytest.raises(RuntimeError), tvm_threads(1):
        assert os.environ["TVM_NUM_THREADS"] == "1"
        raise RuntimeError("a failed benchmark")
    assert os.environ["TVM_NUM_THREADS"] == "7"
