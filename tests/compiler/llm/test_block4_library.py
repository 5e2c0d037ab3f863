"""A LLaMA whose layers are 4-bit per block (what a Q4_1 GGUF dequantizes to) keeps them as block-4 weights: the
integer reference uses them exactly (no int8 re-quantization), the compiled library runs them on the block-4
kernels (AVX512-VNNI hosts; elsewhere the layers stay int8) and equals the reference bit for bit (prefill, a
prefill after cached tokens, decode steps), and the report counts them as int8 matmuls with 4-bit block
weights. One compile (about 35 s on one core)."""

import numpy as np
import pytest

from compiler.intmath import block4 as b4
from compiler.report import BLOCK4_WEIGHT
from tests.helpers.tiny_llama import compile_tiny
from tests.schedules.test_x86_vnni import _host_has

CONTEXT = 32


@pytest.fixture(scope="module")
def compiled(tiny_llama_q4_dir, tmp_path_factory):
    if not _host_has(["avx512_vnni"]):
        pytest.skip("host lacks avx512_vnni: block-4 weights are compiled only for targets with their kernel")
    return compile_tiny(tiny_llama_q4_dir, tmp_path_factory.mktemp("tiny_q4_lib"), CONTEXT, seed=23)


def test_the_layers_keep_their_4_bit_blocks_exactly(compiled, tiny_llama_q4_dir):
    from compiler.llm.weights import from_transformers, load_causal_lm

    im = compiled.llm_model
    w = from_transformers(load_causal_lm(tiny_llama_q4_dir)[0])
    for ly, lw in zip(im.layers, w.layers):
        for name, src in (("q", lw.wq), ("k", lw.wk), ("o", lw.wo), ("gate", lw.w_gate), ("down", lw.w_down)):
            lin = getattr(ly, name)  # no factor folded into these outputs: the block weight is the source's
            assert lin.block4 is not None and 1 <= lin.act_mult.min() <= lin.act_mult.max() <= b4.MULT_LEVELS
            err = np.abs(lin.block4.values() * lin.block4.scale[None, :] - src).max(axis=0)
            assert np.all(err <= 1e-3 * np.abs(src).max(axis=0)), name  # int8 would be ~4e-3


def test_prefill_then_decode_equal_the_reference(compiled):
    from compiler.llm.library import LlmLibrary

    lib = LlmLibrary(compiled.library)
    im = compiled.llm_model
    text = "the red dog sleeps under the old tree and we see it"
    ids = np.array(lib.tokenizer.encode(text, add_special_tokens=False), np.int32)
    cache = im.new_cache(CONTEXT)
    for a, b in [(0, 9), (9, 17)] + [(t, t + 1) for t in range(17, 23)]:
        got = lib.forward(ids[a:b])
        want = im.forward(ids[a:b], np.arange(a, b, dtype=np.int32), cache)
        assert np.array_equal(got, want), (a, b, int(np.abs(got.astype(np.int64) - want).max()))
    assert np.array_equal(lib.values[:, :, :23], cache.values[:, :, :23])


def test_the_report_counts_block4_matmuls_as_int8(compiled):
    rep = compiled.report
    assert rep.float_ops == [] and rep.matmuls.int8 == rep.matmuls.total
    block4 = [o for o in rep.ops if o.op == "relax.matmul" and BLOCK4_WEIGHT in o.inputs]
    assert len(block4) == 5 * 2 * 7  # the 5 entry points, 2 layers, 7 matrices each
