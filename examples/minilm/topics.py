"""Accuracy on a real topic-classification task, and bit-exactness against the NumPy reference.

BBC News (5 topics): a logistic-regression classifier is trained on fp32 sentence embeddings of training
articles; on held-out articles its top-1 predictions from intformer's embeddings (and from onnxruntime
quantize_dynamic's) are compared with its predictions from fp32 embeddings. The compiled library's outputs are
also compared bit for bit with the NumPy reference interpreter of the same integer graph.

    python examples/minilm/topics.py --train 500 --test 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import export as exporter  # noqa: E402
import minilm_data as data  # noqa: E402
from main import ort_outputs, sentence_embeddings  # noqa: E402


def train_logreg(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 500, lr: float = 0.5) -> np.ndarray:
    """Multinomial logistic regression by full-batch gradient descent (NumPy; embeddings are L2-normalized)."""
    w = np.zeros((x.shape[1] + 1, classes))
    xb = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        z = xb @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= lr * (xb.T @ (p - onehot) / len(x) + 1e-4 * w)
    return w


def predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.argmax(np.hstack([x, np.ones((len(x), 1))]) @ w, axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    from compiler.api import compile_model, load
    from compiler.config import CompileOptions

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "minilm.onnx")
    if not os.path.exists(onnx_path):
        exporter.export(onnx_path)
    tok = exporter.tokenizer()
    items = data.bbc_news()
    topics = sorted({t for t, _ in items})
    idx = np.random.default_rng(1).permutation(len(items))
    calib = [items[i] for i in idx[: args.calib]]
    train = [items[i] for i in idx[args.calib: args.calib + args.train]]
    test = [items[i] for i in idx[args.calib + args.train: args.calib + args.train + args.test]]
    calib_npz = os.path.join(args.out, "topics_calib.npz")
    np.savez(calib_npz, **data.encode(tok, [t for _, t in calib], args.seq))
    lib = os.path.join(args.out, "minilm_topics.so")
    res = compile_model(onnx_path, lib, CompileOptions(input_shapes=(("input_ids", (1, args.seq)),),
                                                       calibration_data=calib_npz))
    tr = data.encode(tok, [t for _, t in train], args.seq)
    te = data.encode(tok, [t for _, t in test], args.seq)
    e_train = sentence_embeddings(ort_outputs(onnx_path, tr), tr["attention_mask"])
    y_train = np.array([topics.index(t) for t, _ in train])
    y_test = np.array([topics.index(t) for t, _ in test])
    w = train_logreg(e_train, y_train, len(topics))
    e_fp32 = sentence_embeddings(ort_outputs(onnx_path, te), te["attention_mask"])

    model, ref = load(lib), res.reference()
    outs, exact = [], 0
    from compiler.progress import progress_bar

    with progress_bar("intformer + reference", total=len(test)) as advance:
        for i in range(len(test)):
            feed = {k: v[i] for k, v in te.items()}
            got = model(feed)[0]
            exact += int(np.array_equal(got, ref(feed)[0]))
            outs.append(got)
            advance()
    e_int = sentence_embeddings(np.stack(outs), te["attention_mask"])
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        q = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(onnx_path, q, weight_type=QuantType.QInt8)
        e_ort8 = sentence_embeddings(ort_outputs(q, te), te["attention_mask"])
    p32 = predict(w, e_fp32)
    print(f"topics {topics}; train {len(train)}, test {len(test)} held-out BBC News articles, seq {args.seq}")
    print(f"fp32 classifier accuracy on the test labels: {np.mean(p32 == y_test):.4f}")
    for name, e in (("intformer integer-only", e_int), ("onnxruntime quantize_dynamic", e_ort8)):
        cos = np.sum(e * e_fp32, axis=1)
        print(f"{name}: top-1 agreement with fp32 {np.mean(predict(w, e) == p32):.4f}, accuracy "
              f"{np.mean(predict(w, e) == y_test):.4f}, embedding cosine mean {cos.mean():.5f} min {cos.min():.5f}")
    print(f"bit-exact against the NumPy reference: {exact}/{len(test)} inputs; float ops: "
          f"{res.report.float_ops or 'none'}; matmuls int8 {res.report.matmuls.to_json()}")
    return 0 if exact == len(test) else 1


if __name__ == "__main__":
    sys.exit(main())
