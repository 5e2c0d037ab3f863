"""The integer LLaMA prefill as a Relax function (compiler/frontend/llama.py), compiled for llvm, equals the NumPy
integer reference bit for bit: logits and the int8 keys and values it leaves in the cache. Slow tier: each compile
of the tiny LLaMA takes about 30 s on one core (the emitters' own bit-exact tests are in the fast tier)."""

import dataclasses

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.frontend.llama import prefill_module
from compiler.llm.calibrate import calibrate
from compiler.llm.integer import build_integer_llama
from compiler.llm.perplexity import document_tokens
from tests.helpers.tiny_llama import sentences


def _check(w, tok, dynamic_norms):
    calib = [np.array(document_tokens(tok, s), np.int32) for s in sentences(6, seed=21, lo=4, hi=20)]
    im = build_integer_llama(w, calibrate(w, calib), dynamic_norms=dynamic_norms)
    ids = np.array(document_tokens(tok, "the old river runs"), np.int32)
    seq = len(ids)
    positions = np.arange(seq, dtype=np.int32)
    ex = tvm.compile(prefill_module(im, seq), tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    logits, keys, values = (t.numpy() for t in vm["prefill"](tvm.runtime.tensor(ids), tvm.runtime.tensor(positions)))
    cache = im.new_cache(seq)
    want = im.forward(ids, positions, cache)
    assert logits.dtype == np.int32 and np.array_equal(logits, want)
    assert np.array_equal(keys, cache.keys) and np.array_equal(values, cache.values)


@pytest.mark.slow
def test_one_layer_prefill_equals_the_integer_reference(tiny_llama_loaded):
    _, tok, w = tiny_llama_loaded
    one = dataclasses.replace(w, shape=dataclasses.replace(w.shape, layers=1), layers=w.layers[:1])
    _check(one, tok, dynamic_norms=True)


@pytest.mark.slow
@pytest.mark.parametrize("dynamic_norms", [True, False])
def test_prefill_equals_the_integer_reference(tiny_llama_loaded, dynamic_norms):
    _, tok, w = tiny_llama_loaded
    _check(w, tok, dynamic_norms)
