"""Latency against sequence length: a ranged intformer library (`--input-shape input_ids=1x1..128`) called at
each length through the VM's `main`, interleaved with onnxruntime int8 (quantize_dynamic) at the same length,
1 thread, one process (a script that prints figures, not a test).

    python examples/benchmark/lengths.py LIB.so MODEL.onnx [--lengths 1 8 16 17 24 32 ...] [--rounds 7]
        [--fixed FIXED.so]   # also the fixed-shape library on the text padded to its length

Each round times every engine at every length (median of 20 calls); the table shows the median over rounds,
and the ratio ORT int8 / intformer of each round's pair (robust on a shared machine).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def _median_ms(fn, calls: int = 20) -> float:
    fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("library")
    ap.add_argument("model")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 8, 16, 17, 24, 32, 33, 48, 64, 65, 96, 128])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fixed", help="a fixed-shape library: the text padded to its length")
    a = ap.parse_args()
    import onnxruntime as ort
    import tvm.runtime as rt
    from onnxruntime.quantization import QuantType, quantize_dynamic

    vm = rt.vm.VirtualMachine(rt.load_module(a.library), rt.cpu())
    fixed = rt.vm.VirtualMachine(rt.load_module(a.fixed), rt.cpu()) if a.fixed else None
    with tempfile.TemporaryDirectory() as tmp:
        q = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(a.model, q, weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
        sess = ort.InferenceSession(q, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    rng = np.random.default_rng(0)
    rows = {n: {"ours": [], "ort": [], "fixed": [], "ratio": []} for n in a.lengths}
    top = max(a.lengths)
    for _ in range(a.rounds):
        for n in a.lengths:
            ids = rng.integers(1000, 20000, (1, n)).astype(np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            args = [rt.tensor(feed[k]) for k in names]
            ours = _median_ms(functools.partial(vm["main"], *args))
            theirs = _median_ms(functools.partial(sess.run, None, {k: feed[k] for k in names}))
            rows[n]["ours"].append(ours)
            rows[n]["ort"].append(theirs)
            rows[n]["ratio"].append(theirs / ours)
            if fixed is not None:
                pad = [rt.tensor(np.pad(feed[k], [(0, 0), (0, top - n)])) for k in names]
                rows[n]["fixed"].append(_median_ms(functools.partial(fixed["main"], *pad)))
    print(f"{'tokens':>6} {'intformer ms':>12} {'ORT int8 ms':>11} {'ours/ORT':>8}"
          + ("  fixed-shape padded ms" if fixed else ""))
    for n in a.lengths:
        r = rows[n]
        line = (f"{n:6d} {statistics.median(r['ours']):12.3f} {statistics.median(r['ort']):11.3f} "
                f"{1 / statistics.median(r['ratio']):8.2f}")
        if fixed is not None:
            line += f"  {statistics.median(r['fixed']):10.3f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
