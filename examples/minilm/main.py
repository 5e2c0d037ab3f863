"""The main job: compile all-MiniLM-L6-v2 for this machine, integer matmuls, and show accuracy and latency.

1. export the real model to ONNX (offline),  2. calibrate on real BBC News text,  3. compile for `host`, one
library for every length 1..SEQ (`--input-shape input_ids=1x1..SEQ`),  4. compare sentence embeddings with
onnxruntime fp32 on held-out articles (and onnxruntime's own int8),  5. time intformer against onnxruntime fp32
and int8 (and OpenVINO int8 when installed) at SEQ tokens, then on real sentences of the held-out articles, each
at its own length, 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import export as exporter  # noqa: E402
import minilm_data as data  # noqa: E402


def sentence_embeddings(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean pooling over the attention mask, then L2 normalization (how all-MiniLM-L6-v2 is used)."""
    h = hidden.reshape(-1, hidden.shape[-2], hidden.shape[-1]).astype(np.float64)
    m = mask.reshape(h.shape[0], -1, 1).astype(np.float64)
    e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def ort_outputs(model_path: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    n = feeds["input_ids"].shape[0]
    return np.stack([sess.run(None, {k: v[i] for k, v in feeds.items()})[0] for i in range(n)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--calib", type=int, default=64, help="calibration articles")
    ap.add_argument("--test", type=int, default=40, help="held-out test articles")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--sentences", type=int, default=300, help="held-out sentences timed at their own lengths")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from compiler.api import compile_model, run
    from compiler.config import CompileOptions

    onnx_path = os.path.join(args.out, "minilm.onnx")
    if not os.path.exists(onnx_path):
        print("[1/6] exporting all-MiniLM-L6-v2 to ONNX", flush=True)
        exporter.export(onnx_path)
    tok = exporter.tokenizer()
    calib, test = data.split(data.bbc_news(), args.calib, args.test)
    calib_npz, test_npz = os.path.join(args.out, "calib.npz"), os.path.join(args.out, "test.npz")
    np.savez(calib_npz, **data.encode(tok, [t for _, t in calib], args.seq))
    test_feeds = data.encode(tok, [t for _, t in test], args.seq)
    np.savez(test_npz, **test_feeds)
    print(f"[2/6] real text: {len(calib)} BBC News articles to calibrate, {len(test)} held-out to test", flush=True)

    lib = os.path.join(args.out, "minilm.so")
    print(f"[3/6] compiling for this machine (host), one library for every length 1..{args.seq}", flush=True)
    t0 = time.time()
    from compiler.config import DimRange

    res = compile_model(onnx_path, lib, CompileOptions(input_shapes=(("input_ids", (1, DimRange(1, args.seq))),),
                                                       calibration_data=calib_npz),
                        report_path=os.path.join(args.out, "report.json"))
    compile_s = time.time() - t0

    print("[4/6] accuracy on held-out text against onnxruntime fp32", flush=True)
    ours = run(lib, test_npz)["last_hidden_state"]
    ref = ort_outputs(onnx_path, test_feeds)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        q = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(onnx_path, q, weight_type=QuantType.QInt8)
        ort_int8 = ort_outputs(q, test_feeds)
    mask = test_feeds["attention_mask"]
    e_ref = sentence_embeddings(ref, mask)
    rows = []
    for name, out in (("intformer integer-only", ours), ("onnxruntime int8 (quantize_dynamic)", ort_int8)):
        e = sentence_embeddings(out, mask)
        cos = np.sum(e * e_ref, axis=1)
        self_out = 2 * np.eye(len(e))  # a sentence is not its own nearest neighbour
        nn_agree = np.mean(np.argmax(e @ e.T - self_out, 1) == np.argmax(e_ref @ e_ref.T - self_out, 1))
        rows.append((name, cos.mean(), cos.min(), nn_agree))

    from rich.console import Console
    from rich.table import Table

    con = Console()
    mm = res.report.matmuls
    t = Table(title=f"all-MiniLM-L6-v2, sentence embeddings vs fp32, {len(test)} held-out BBC News articles, "
                    f"seq {args.seq}")
    for col in ("engine", "mean cosine", "min cosine", "nearest-neighbour agreement"):
        t.add_column(col)
    for name, mean, mn, nn in rows:
        t.add_row(name, f"{mean:.5f}", f"{mn:.5f}", f"{100 * nn:.1f}%")
    con.print(t)
    con.print(f"compiled in {compile_s:.0f} s: {mm.int8}/{mm.total} matmuls int8 x int8 -> int32 "
              f"(attention products included); float ops between inputs and outputs: "
              f"{', '.join(res.report.float_ops) or 'none'}")

    from schedules.int8_matmul import select_kernel
    from targets import resolve_target

    isa = select_kernel(resolve_target("host").tvm_target()).isa
    print(f"[5/6] latency (int8 matmuls on the {isa} kernels; the other integer kernels on default schedules)",
          flush=True)
    for n in args.threads.split(","):
        subprocess.run([sys.executable, "-m", "compiler.cli", "bench", lib, "--model", onnx_path,
                        "--threads", n.strip()], check=True)
    _, held_out = data.split(data.bbc_news(), args.calib, 400)  # articles not calibrated on
    sentences = [s for _, t in held_out for s in data.sentences(t)][: args.sentences]
    texts_npz = os.path.join(args.out, "sentences.npz")
    np.savez(texts_npz, **data.encode(tok, sentences, args.seq))
    print(f"[6/6] {len(sentences)} real sentences of held-out articles, one at a time, each at its own length",
          flush=True)
    for n in args.threads.split(","):
        # several threads: each engine in its own process, two rounds in turn, the best round each (a shared
        # machine's slow spells last seconds: one run would charge them to whichever engine ran then)
        rounds = [] if n.strip() == "1" else ["--rounds", "2"]
        subprocess.run([sys.executable, "-m", "compiler.cli", "bench", lib, "--model", onnx_path,
                        "--workload", texts_npz, "--threads", n.strip(), *rounds], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
