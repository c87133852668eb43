"""The one abstention rule (rag.abstention), used by QAPipeline while answering and by compute_metrics after."""

from __future__ import annotations

from rag.abstention import AbstentionRule
from rag.config import QAConfig
from rag.evaluate import Record, thresholds
from rag.stemming import s_stem

SIGNALS = {"model_abstained": False, "max_score": 0.5, "mean_logprob": -1.0, "idk_margin": 0.2}


def test_thresholds_off_only_the_model_abstains():
    rule = AbstentionRule()
    assert not rule.abstains(**SIGNALS)
    assert rule.abstains(**{**SIGNALS, "model_abstained": True})
    assert rule.evidence_reason(0.0) is None and rule.answer_reason(-99.0, 99.0) is None


def test_each_threshold_alone():
    assert AbstentionRule(min_score=0.6).abstains(**SIGNALS)
    assert not AbstentionRule(min_score=0.4).abstains(**SIGNALS)
    assert AbstentionRule(min_logprob=-0.5).abstains(**SIGNALS)
    assert not AbstentionRule(min_logprob=-1.5).abstains(**SIGNALS)
    assert AbstentionRule(max_idk_margin=0.1).abstains(**SIGNALS)
    assert not AbstentionRule(max_idk_margin=0.3).abstains(**SIGNALS)
    # a missing signal never triggers its threshold
    assert not AbstentionRule(0.9, -0.1, 0.0).abstains(
        model_abstained=False, max_score=None, mean_logprob=None, idk_margin=None
    )


def test_reasons_name_the_signal_and_the_threshold():
    rule = AbstentionRule(min_score=0.6, min_logprob=-0.5, max_idk_margin=0.1)
    assert rule.evidence_reason(0.5) == "best evidence score 0.500 < 0.600"
    assert rule.answer_reason(-1.0, 0.2) == "answer likelihood -1.000 < -0.500 per token"  # likelihood first
    assert rule.answer_reason(-0.1, 0.2) == (
        'the model finds "I don\'t know" likelier than its answer (margin 0.200 > 0.100 per token)'
    )
    assert rule.answer_reason(-0.1, 0.0) is None


def test_config_and_records_use_the_same_rule():
    cfg = QAConfig(abstain_min_score=0.3, abstain_min_logprob=-2.0, abstain_max_idk_margin=0.5)
    rule = AbstentionRule.from_config(cfg)
    assert thresholds(cfg) == rule.as_kwargs() == {"min_score": 0.3, "min_logprob": -2.0, "max_idk_margin": 0.5}
    rec = Record(
        qid="q",
        question="?",
        impossible=True,
        golds=[],
        prediction="x",
        model_abstained=False,
        retrieval_hit=False,
        max_score=0.2,
        mean_logprob=-1.0,
        latency_s=0.0,
        generate_s=0.0,
        tokens=1,
        idk_margin=0.0,
    )
    assert rec.abstains(**thresholds(cfg)) is rec.abstains_under(rule) is True
    assert rec.abstains(None, None, None) is False


def test_one_plural_stemmer():
    assert [s_stem(w) for w in ("normans", "theories", "classes", "glass", "campus", "1990s", "bus")] == [
        "norman",
        "theory",
        "classe",
        "glass",
        "campus",
        "1990s",
        "bus",
    ]
