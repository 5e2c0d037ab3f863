"""Language models (issue 15): a missing or foreign model file, a model that is not of the LLaMA family, a
missing --calibration-text or --text, a library that is not a language model: one error line naming the file
and the fix, exit 1 or 2, inputs untouched."""

import json

from tests.hostile.conftest import run_bad


def test_compile_a_missing_gguf(tmp_path):
    run_bad(["compile", tmp_path / "nope.gguf", "-o", tmp_path / "x.so", "--calibration-text", tmp_path / "t.txt"],
            ["nope.gguf", "no such file"])


def test_compile_a_gguf_that_is_not_one(tmp_path):
    bad = tmp_path / "fake model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all" * 10)
    text = tmp_path / "t.txt"
    text.write_text("some text\n")
    run_bad(["compile", bad, "-o", tmp_path / "x.so", "--calibration-text", text], [bad.name, "not a GGUF file"],
            inputs=[bad, text])


def test_compile_a_causal_lm_of_another_family(tmp_path):
    folder = tmp_path / "bert lm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForCausalLM"], "model_type": "bert"}))
    text = tmp_path / "t.txt"
    text.write_text("some text\n")
    run_bad(["compile", folder, "-o", tmp_path / "x.so", "--calibration-text", text],
            ["bert lm", "not a LLaMA-family", "llama"], inputs=[folder])


def test_compile_a_gguf_without_calibration_text(tmp_path):
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF" + bytes(60))
    run_bad(["compile", g, "-o", tmp_path / "x.so"], ["m.gguf", "--calibration-text"], inputs=[g])


def test_compile_with_empty_calibration_text(tmp_path):
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF" + bytes(60))
    text = tmp_path / "blank lines.txt"
    text.write_text("\n   \n\n")
    run_bad(["compile", g, "-o", tmp_path / "x.so", "--calibration-text", text], ["blank lines.txt", "no text"],
            inputs=[g, text])


def test_context_on_an_onnx_model(tmp_path):
    run_bad(["compile", tmp_path / "m.onnx", "-o", tmp_path / "x.so", "--context", "64"], ["--context"])


def test_perplexity_and_generate_of_a_missing_library(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a line\n")
    run_bad(["perplexity", tmp_path / "gone.so", "--text", text], ["gone.so"])
    run_bad(["generate", tmp_path / "gone.so", "--prompt", "hi"], ["gone.so"])


def test_perplexity_without_its_text_file(tmp_path):
    run_bad(["perplexity", tmp_path / "x.so", "--text", tmp_path / "no text.txt"], ["no text.txt", "no such file"])


def test_a_library_that_is_not_a_language_model(work, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a line of text\n")
    run_bad(["perplexity", work["lib"], "--text", text], ["not a language-model library", "intformer compile"],
            inputs=[work["lib"]])
    run_bad(["generate", work["lib"], "--prompt", "hi"], ["not a language-model library"], inputs=[work["lib"]])
