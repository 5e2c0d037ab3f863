"""The tiny LLaMA compiled into one library (the entries of compiler/frontend/llama.py STEPS, the int8 KV cache
passed as state)
equals the integer NumPy reference (compiler/llm/integer.py) bit for bit: a prefill, a second prefill chunk
after cached tokens, then decode steps; logits codes and cache contents. Perplexity and generation through the
library equal the reference's, and the CLI prints them. One compile (about 35 s on one core) for the module."""

import json

import numpy as np
import pytest

from compiler.llm.generate import greedy
from compiler.llm.perplexity import perplexity
from tests.helpers.tiny_llama import compile_tiny, sentences

CONTEXT = 40
CHUNK = 16  # prompts longer than a chunk run in several: the first without a cache, the others with it


@pytest.fixture(scope="module")
def compiled(tiny_llama_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama_lib")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("compiler.llm.build.MAX_CHUNK", CHUNK)
        res = compile_tiny(tiny_llama_dir, d, CONTEXT, seed=21, report_path=str(d / "report.json"))
    return res, d


@pytest.fixture()
def lib(compiled):
    from compiler.llm.library import LlmLibrary

    return LlmLibrary(compiled[0].library)


def _ids(lib, text="the old river runs under the big tree and the dog sleeps"):
    return np.array(lib.tokenizer.encode(text, add_special_tokens=False), np.int32)


def test_prefill_chunks_then_decode_equal_the_reference(compiled, lib):
    im = compiled[0].llm_model
    ids = _ids(lib)
    cache = im.new_cache(CONTEXT)
    assert lib.spec.chunk == CHUNK
    # a first chunk, two chunks after the cache (19 tokens), decode steps
    steps = [(0, 10), (10, 29)] + [(t, t + 1) for t in range(29, 35)]
    for a, b in steps:
        got = lib.forward(ids[a:b])
        want = im.forward(ids[a:b], np.arange(a, b, dtype=np.int32), cache)
        assert got.dtype == np.int32 and got.shape == want.shape
        assert np.array_equal(got, want), (a, b, int(np.abs(got.astype(np.int64) - want).max()))
    assert np.array_equal(lib.keys[..., :35], cache.keys[:, :, :35].transpose(0, 1, 3, 2))  # kept transposed
    assert np.array_equal(lib.values[:, :, :35], cache.values[:, :, :35])
    assert lib.length == 35
    lib.reset()  # a 20-token prompt from position 0: the first chunk without the cache, the rest with it
    want = im.forward(ids[:20], np.arange(20, dtype=np.int32), im.new_cache(CONTEXT))
    assert np.array_equal(lib.forward(ids[:20]), want)


def test_prefill_last_makes_the_last_rows_logits_and_the_same_cache(compiled, lib):
    """The one-row entries against the every-row ones, at position 0 (the entries without a cache) and after
    cached tokens; the every-row entries equal the reference (test above)."""
    from compiler.errors import IntformerError

    im = compiled[0].llm_model
    ids = _ids(lib)[:CONTEXT - 1]
    # a short prompt, an odd length, a whole chunk, several chunks; then chunks after 5 cached tokens
    for start, n in ((0, 2), (0, 13), (0, CHUNK), (0, len(ids)), (5, 13), (5, 30)):
        lib.forward(ids[:start], 0)
        full = lib.forward(ids[start:start + n], start)
        keys, values = lib.keys[..., :start + n].copy(), lib.values[:, :, :start + n].copy()
        lib.keys[..., start:], lib.values[:, :, start:] = 0, 0
        last = lib.forward(ids[start:start + n], start, last_only=True)
        assert last.shape == (1, full.shape[1]) and np.array_equal(last, full[-1:])
        assert np.array_equal(lib.keys[..., :start + n], keys) and np.array_equal(lib.values[:, :, :start + n], values)
    cache = im.new_cache(CONTEXT)  # a decode step after it reads that cache
    im.forward(ids[:-1], np.arange(len(ids) - 1, dtype=np.int32), cache)
    lib.forward(ids[:-1], 0, last_only=True)
    want = im.forward(ids[-1:], np.array([len(ids) - 1], np.int32), cache)
    assert np.array_equal(lib.forward(ids[-1:]), want)
    feed = {"ids": np.zeros(CHUNK, np.int32), "positions": np.arange(CHUNK, dtype=np.int32),
            "last": np.array([CHUNK], np.int32), "keys": lib.keys, "values": lib.values}
    with pytest.raises(IntformerError, match="'last' has values out of range"):
        lib.entries["prefill_last"](feed)


def test_the_report_is_integer_only_and_the_manifest_carries_the_tokenizer(compiled):
    res, d = compiled
    assert res.report.float_ops == [] and res.report.matmuls.total > 0
    assert res.report.matmuls.int8 == res.report.matmuls.total
    on_disk = json.loads((d / "report.json").read_text())
    assert on_disk["float_ops"] == []
    m = res.manifest
    assert [e.name for e in m.entries] == ["prefill", "decode", "prefill_last", "prefill_first", "prefill_first_last"]
    assert m.entry_spec("decode").inputs[0].shape == (1,)
    assert m.llm["context"] == CONTEXT and "tokenizer.json" in m.llm["tokenizer"]


def test_perplexity_and_greedy_generation_equal_the_reference(compiled, lib, tmp_path):
    from compiler import api

    im = compiled[0].llm_model
    docs = sentences(4, seed=99, lo=3, hi=12)
    text = tmp_path / "held out.txt"
    text.write_text("\n".join(docs) + "\n")
    got = api.perplexity(compiled[0].library, str(text), max_len=24)
    want = perplexity(docs, lib.tokenizer, lambda ids: im.logits(im.forward(ids, np.arange(len(ids), dtype=np.int32),
                                                                             im.new_cache(len(ids)))), 24)
    assert (got.ppl, got.tokens) == (want.ppl, want.tokens)

    pieces = []
    out = api.generate(compiled[0].library, "the dog", 8, write=pieces.append)
    prompt = list(_ids(lib, "the dog"))
    cache = im.new_cache(CONTEXT)
    assert out == greedy(lambda i, p: im.forward(i, p, cache), prompt, 8)
    assert "".join(pieces) == lib.tokenizer.decode(out)


def test_lengths_beyond_the_context_are_clear_errors(compiled, lib, tmp_path):
    from compiler import api
    from compiler.errors import IntformerError
    from compiler.llm.library import generate_tokens

    text = tmp_path / "t.txt"
    text.write_text("the red house\n")
    with pytest.raises(IntformerError, match="--max-len 41 is longer than the library's context of 40"):
        api.perplexity(compiled[0].library, str(text), max_len=CONTEXT + 1)
    with pytest.raises(IntformerError, match="context is 40"):
        list(generate_tokens(lib, [5] * CONTEXT, 4))
    with pytest.raises(IntformerError, match="do not fit the library's context of 40"):
        lib.forward(np.zeros(CONTEXT + 1, np.int32), 0)


def test_sampling_is_reproducible_with_a_seed(compiled):
    from compiler import api
    from compiler.llm.library import Sampling

    s = Sampling(temperature=1.0, top_k=20, top_p=0.9, seed=7)
    a = api.generate(compiled[0].library, "the cat", 10, s)
    assert a == api.generate(compiled[0].library, "the cat", 10, s)
    assert len(a) == 10


def test_cli_perplexity_json_and_generate(compiled, tmp_path, capsys):
    from compiler.cli import main

    text = tmp_path / "t.txt"
    text.write_text("the red house\nwe see the river\n")
    assert main(["perplexity", compiled[0].library, "--text", str(text), "--json", "--max-len", "16"]) == 0
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and set(json.loads(line[0])) == {"ppl", "tokens"}
    assert json.loads(line[0])["tokens"] == 12 + 15  # bytes of each line (13, 16), minus the first
    assert main(["generate", compiled[0].library, "--prompt", "the", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_generate_over_rpc_equals_local(compiled):
    """`generate --rpc`: the library uploaded to a TVM RPC server (a local one: the host's own library) makes
    the same greedy tokens as here."""
    import os

    from compiler import api
    from targets.remote import RemoteSpec
    from tests.targets.conftest import local_rpc_server

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    with local_rpc_server(root) as port:
        remote = api.generate(compiled[0].library, "the dog", 6, remote=RemoteSpec(rpc=f"127.0.0.1:{port}"))
    assert remote == api.generate(compiled[0].library, "the dog", 6)


@pytest.mark.board
def test_generate_on_the_emulated_rpi5_board(compiled, tiny_llama_dir, tmp_path, capsys):
    """The tiny LLaMA cross-compiled for rpi5 (SDOT kernels), uploaded to the emulated board (qemu, Cortex-A76):
    `generate --rpc` makes the host library's greedy tokens, through the API and the CLI."""
    from compiler import api
    from compiler.cli import main
    from compiler.config import CompileOptions
    from targets import resolve_target
    from targets.remote import RemoteSpec
    from targets.toolchain import toolchain_for
    from tests.targets.conftest import require_tool, running_boards

    if not toolchain_for(resolve_target("rpi5")).installed():
        require_tool("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")
    lib = str(tmp_path / "tiny-rpi5.so")
    api.compile_model(tiny_llama_dir, lib, CompileOptions(target="rpi5"),
                      calibration_text=str(compiled[1] / "calib.txt"), context=CONTEXT)
    want = api.generate(compiled[0].library, "the dog", 6)
    with running_boards(("cortex-a76",)) as ports:
        addr = f"127.0.0.1:{ports['cortex-a76']}"
        assert api.generate(lib, "the dog", 6, remote=RemoteSpec(rpc=addr, timeout=300)) == want
        capsys.readouterr()
        assert main(["generate", lib, "--prompt", "the dog", "--max-new-tokens", "6", "--rpc", addr]) == 0
    text = capsys.readouterr().out
    assert main(["generate", compiled[0].library, "--prompt", "the dog", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == text


def test_a_process_that_only_runs_the_library_loads_no_compiler_nor_torch(compiled, tmp_path):
    """`intformer perplexity` / `generate` (here: import_runtime_only, then the API, in a fresh process) load TVM's
    runtime alone and no torch, and compute the same perplexity as this process, which has the whole TVM."""
    import subprocess
    import sys

    from compiler import api

    text = tmp_path / "t.txt"
    text.write_text("the red house\nwe see the river\n")
    want = api.perplexity(compiled[0].library, str(text), max_len=16)
    script = ("import json, sys\n"
              "from compiler.runtime import import_runtime_only\n"
              "import_runtime_only()\n"
              "from compiler import api\n"
              f"r = api.perplexity({compiled[0].library!r}, {str(text)!r}, max_len=16)\n"
              "print(json.dumps([r.ppl, r.tokens, 'torch' in sys.modules, 'tvm.relax' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    ppl, tokens, torch_loaded, compiler_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert (ppl, tokens) == (want.ppl, want.tokens)
    assert not torch_loaded and not compiler_loaded
