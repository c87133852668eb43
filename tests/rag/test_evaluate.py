"""SQuAD scoring, sampling, metrics and threshold calibration."""

from __future__ import annotations

import pytest

from rag.evaluate import (
    Record,
    calibrate,
    compute_metrics,
    exact_match,
    f1_score,
    load_squad,
    normalize_answer,
    retrieval_hit,
    roc_auc,
    sample_examples,
)
from tests.conftest import SQUAD


def rec(impossible, pred, golds=("Paris",), score=0.5, lp=-1.0, abst=False, hit=True):
    return Record("q", "?", impossible, list(golds), pred, abst, hit, score, lp, 1.0, 0.5, 5)


def test_official_normalisation():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple a day") == "apple day"
    assert exact_match("the Normans", "Normans") == 1.0
    assert f1_score("in the year 1066", "1066") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert f1_score("", "") == 1.0 and f1_score("x", "") == 0.0


def test_load_and_sample_the_benchmark_file():
    ex = load_squad(SQUAD)
    assert sum(not e.impossible for e in ex) == 473 and sum(e.impossible for e in ex) == 477
    a = sample_examples(ex, 10, seed=3)
    b = sample_examples(ex, 10, seed=3)
    assert [e.qid for e in a] == [e.qid for e in b] and len(a) == 20
    assert sum(e.impossible for e in a) == 10


def test_load_squad_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not SQuAD format"):
        load_squad(p)


def test_metrics_and_abstention():
    records = [
        rec(False, "Paris"),
        rec(False, "Lyon", score=0.2),
        rec(True, "Nice", score=0.1),
        rec(True, "x", abst=True),
    ]
    m = compute_metrics(records)
    assert m.em == 0.5 and m.n == 2 and m.n_unanswerable == 2
    assert m.abstain_precision == 1.0 and m.abstain_recall == 0.5
    t = compute_metrics(records, min_score=0.3)
    assert t.abstain_recall == 1.0 and t.abstain_precision == pytest.approx(2 / 3) and t.em == 0.5


def test_calibrate_keeps_f1_and_catches_unanswerable():
    records = [rec(False, "Paris", score=0.6 + i / 100) for i in range(10)]
    records += [rec(True, "Nice", score=0.3 + i / 100) for i in range(10)]
    cal = calibrate(records)
    assert cal["min_score"] is not None and 0.39 < cal["min_score"] <= 0.6
    assert cal["metrics"]["abstain_recall"] == 1.0 and cal["metrics"]["f1"] == 1.0


def test_calibrate_refuses_thresholds_no_better_than_chance():
    levels = [0.1 + i / 20 for i in range(8)]
    records = [rec(False, "Paris", score=0.9) for _ in range(2)]
    records += [rec(False, "Lyon", score=s - 0.01) for s in levels]  # wrong answers, a bit less evidence
    records += [rec(True, "Nice", score=s) for s in levels] + [rec(True, "Nice", score=0.95) for _ in range(2)]
    cal = calibrate(records)  # every usable threshold withholds as many answerable as unanswerable questions
    assert (cal["min_score"], cal["min_logprob"]) == (None, None)
    assert cal["metrics"]["abstain_recall"] == 0.0


def test_roc_auc():
    assert roc_auc([3, 4], [1, 2]) == 1.0 and roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1, 2], [1, 2]) == 0.5
    assert roc_auc([2], [1, 2, 3]) == 0.5  # one below, one tie, one above
    assert roc_auc([], [1]) is None


def test_retrieval_hit():
    assert retrieval_hit(["The Normans came"], ["normans"])
    assert not retrieval_hit(["nothing"], ["Normans"])
