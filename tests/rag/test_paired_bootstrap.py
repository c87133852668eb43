"""rag.evaluate.paired_bootstrap and question_f1s against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rag.evaluate import Record, compute_metrics, paired_bootstrap, question_f1s

pytestmark = pytest.mark.unit


def test_interval_matches_the_exact_bootstrap_distribution():
    """4 questions: all 4**4 equally likely resamples enumerated give the exact distribution of the mean."""
    a = [0.0, 0.5, 1.0, 0.2]
    b = [1.0, 0.5, 0.0, 0.9]
    d = np.array(b) - np.array(a)
    exact = np.array([d[list(idx)].mean() for idx in itertools.product(range(4), repeat=4)])
    out = paired_bootstrap(a, b, n=20000, seed=1)
    assert out["diff"] == pytest.approx(d.mean())
    assert out["low"] == pytest.approx(np.quantile(exact, 0.025), abs=0.03)
    assert out["high"] == pytest.approx(np.quantile(exact, 0.975), abs=0.03)
    assert out["p_better"] == pytest.approx((exact > 0).mean(), abs=0.02)


def test_pairs_stay_together_and_the_seed_fixes_the_draws():
    same = paired_bootstrap([0.1, 0.7, 0.3], [0.4, 1.0, 0.6], n=500, seed=3)  # b = a + 0.3 on every question
    assert same["low"] == pytest.approx(0.3) and same["high"] == pytest.approx(0.3) and same["p_better"] == 1.0
    rng = np.random.default_rng(0)
    a, b = rng.random(50).tolist(), rng.random(50).tolist()
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    flipped = paired_bootstrap(b, a, seed=7)
    assert flipped["diff"] == pytest.approx(-paired_bootstrap(a, b, seed=7)["diff"])
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap([0.1], [0.1, 0.2])


def _record(prediction: str, golds: list[str], impossible: bool = False, abstained: bool = False, score=0.9):
    return Record("q", "question", impossible, golds, prediction, abstained, True, score, -0.5, 0.1, 0.1, 3)


def test_question_f1s_average_to_compute_metrics_f1():
    records = [
        _record("Paris", ["Paris"]),
        _record("the city of Paris", ["Paris", "city of Paris"]),
        _record("Rome", ["Paris"]),
        _record("I don't know.", ["Paris"], abstained=True),
        _record("Oslo", ["Oslo"], score=0.1),  # withheld by the min_score threshold below
        _record("whatever", [], impossible=True),
    ]
    for kwargs in ({}, {"min_score": 0.5}):
        f1s = question_f1s(records, **kwargs)
        assert len(f1s) == 5
        assert sum(f1s) / len(f1s) == pytest.approx(compute_metrics(records, **kwargs).f1)
    assert question_f1s(records, min_score=0.5)[4] == 0.0 and question_f1s(records)[4] == 1.0
