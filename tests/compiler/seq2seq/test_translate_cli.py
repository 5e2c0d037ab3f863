"""`intformer import-marian` and `intformer translate` end to end on a tiny random Marian model: one output line
per input line, whatever the input (empty lines, lines longer than the compiled source length, bad bytes)."""

import os
import subprocess
import sys

import pytest
import sentencepiece

from tests.helpers.marian_files import train_tiny_spm, write_tiny_model


def intformer(*args, stdin=b""):
    env = dict(os.environ, INTFORMER_QUIET="1")
    return subprocess.run([sys.executable, "-m", "compiler.cli", *args], input=stdin, capture_output=True, env=env)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    spm = train_tiny_spm(str(d))
    write_tiny_model(str(d / "model"), spm, sentencepiece.SentencePieceProcessor(model_file=spm).get_piece_size())
    p = intformer("import-marian", str(d / "model"), "-o", str(d / "bundle"), "--batch", "4", "--max-src-len", "8",
                  "--max-tgt-len", "10")
    assert p.returncode == 0, p.stderr.decode()
    return str(d / "bundle")


def test_translate_one_line_out_per_line_in(bundle):
    text = (b"the cat sat on the mat.\n\n"
            + b"the dog ran in the park, then it slept. " * 6 + b"\n"
            + b"a cat \xff\xfe sat\n")  # raw bytes that are not UTF-8
    p = intformer("translate", bundle, "--batch", "3", stdin=text + b"no final newline")
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode("utf-8").split("\n")
    assert out[-1] == "" and len(out) - 1 == 5
    assert out[1] == ""  # the empty line stays empty
    assert all(out[i] for i in (0, 2, 3, 4))
    assert len(out[2]) > len(out[0])  # the long line's pieces were all translated and joined
    beam = intformer("translate", bundle, "--beam", "2", stdin=b"the cat sat.\n\nthe dog ran.\n")
    assert beam.returncode == 0 and beam.stdout.decode().count("\n") == 3


def test_translate_bad_arguments(bundle, tmp_path):
    p = intformer("translate", bundle, "--batch", "9", stdin=b"the cat\n")
    assert p.returncode == 2 and b"larger than the compiled batch 4" in p.stderr
    p = intformer("translate", str(tmp_path), stdin=b"x\n")
    assert p.returncode == 2 and b"not a seq2seq bundle" in p.stderr
    fake = tmp_path / "fake.so"
    fake.write_bytes(b"not a library")
    p = intformer("translate", str(fake), stdin=b"x\n")
    assert p.returncode != 0 and b"Traceback" not in p.stderr and b"fake.so" in p.stderr
    p = intformer("import-marian", str(tmp_path / "missing"), "-o", str(tmp_path / "b"))
    assert p.returncode == 2 and b"not a folder" in p.stderr and b"Traceback" not in p.stderr
