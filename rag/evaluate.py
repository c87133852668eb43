"""Evaluation on SQuAD-format data: retrieval recall@k, EM/F1, abstention, latency, speed.

EM and F1 use the official SQuAD normalisation (lower-case, strip punctuation and the articles
a/an/the, collapse white space) and take the best score over the gold answers. Unanswerable
questions (SQuAD 2.0 ``is_impossible``) score abstention: precision = abstentions that were
right / all abstentions, recall = unanswerable questions abstained on / all unanswerable.
"""

from __future__ import annotations

import collections
import functools
import logging
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag.abstention import AbstentionRule

logger = logging.getLogger(__name__)


# -- official SQuAD scoring --------------------------------------------------------------
def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    return max((metric(prediction, g) for g in golds), default=0.0)


# -- data ----------------------------------------------------------------------------------
@dataclass
class QAExample:
    qid: str
    question: str
    answers: list[str]
    title: str
    context: str
    impossible: bool


def load_squad(path: Path) -> list[QAExample]:
    """Every question of a SQuAD-format file (v1.1 or v2.0), read by :mod:`ingest.squad`.

    Raises:
        ValueError: (``ingest.squad.SquadFormatError``) the file is unreadable or not SQuAD.
    """
    from ingest.squad import iter_questions, read_squad

    return [
        QAExample(q.qid, q.question, q.answer_texts, a.title, p.context, not q.answerable)
        for a, p, q in iter_questions(read_squad(path))
    ]


def sample_examples(examples: list[QAExample], n: int | None, seed: int = 0) -> list[QAExample]:
    """``n`` answerable questions sampled with a fixed seed, plus as many unanswerable ones."""
    answerable = [e for e in examples if not e.impossible]
    impossible = [e for e in examples if e.impossible]
    rng = random.Random(seed)
    if n is not None:
        answerable = rng.sample(answerable, min(n, len(answerable)))
        impossible = rng.sample(impossible, min(n, len(impossible)))
    return answerable + impossible


# -- metrics ---------------------------------------------------------------------------------
@dataclass
class Record:
    """One evaluated question: the answer (before thresholds) and the signals for abstention."""

    qid: str
    question: str
    impossible: bool
    golds: list[str]
    prediction: str
    model_abstained: bool
    retrieval_hit: bool
    max_score: float | None
    mean_logprob: float | None
    latency_s: float
    generate_s: float
    tokens: int
    raw_prediction: str = ""  # the model's reply before clean_answer
    idk_margin: float | None = None  # mean per-token log p("I don't know.") - the answer's

    def abstains(self, min_score: float | None, min_logprob: float | None, max_idk_margin: float | None = None) -> bool:
        return self.abstains_under(AbstentionRule(min_score, min_logprob, max_idk_margin))

    def abstains_under(self, rule: AbstentionRule) -> bool:
        """Whether ``rule`` abstains on this question (the model's own "I don't know" always does)."""
        return rule.abstains(
            model_abstained=self.model_abstained,
            max_score=self.max_score,
            mean_logprob=self.mean_logprob,
            idk_margin=self.idk_margin,
        )


def record_from_answer(example: QAExample, answer: Any) -> Record:
    """The :class:`Record` of ``example`` answered by :meth:`rag.qa.QAPipeline.answer` (``answer``)."""
    return Record(
        qid=example.qid,
        question=example.question,
        impossible=example.impossible,
        golds=example.answers,
        prediction=answer.answer,
        model_abstained=answer.abstained,
        retrieval_hit=retrieval_hit([c.text for c in answer.citations], example.answers),
        max_score=answer.max_retrieval_score,
        mean_logprob=answer.mean_token_logprob,
        latency_s=answer.timings.get("total_s", 0.0),
        generate_s=answer.timings.get("generate_s", 0.0),
        tokens=answer.generated_tokens,
        raw_prediction=answer.raw_answer,
        idk_margin=answer.idk_margin,
    )


@dataclass
class Metrics:
    n: int
    n_unanswerable: int
    em: float
    f1: float
    recall_at_k: float
    abstain_precision: float | None
    abstain_recall: float | None
    abstain_rate_answerable: float
    p50_s: float
    p95_s: float
    tokens_per_s: float
    min_score: float | None = None
    min_logprob: float | None = None
    max_idk_margin: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


def thresholds(config: Any) -> dict[str, float | None]:
    """The abstention thresholds of a :class:`rag.config.QAConfig`, as keyword arguments of :func:`compute_metrics`."""
    return AbstentionRule.from_config(config).as_kwargs()


@functools.lru_cache(maxsize=65536)
def _em_f1(prediction: str, golds: tuple[str, ...]) -> tuple[float, float]:
    return best_over_golds(exact_match, prediction, list(golds)), best_over_golds(f1_score, prediction, list(golds))


def em_f1(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """Best exact match and best F1 of ``prediction`` over the gold answers (cached)."""
    return _em_f1(prediction, tuple(golds))


def question_f1s(
    records: list[Record],
    min_score: float | None = None,
    min_logprob: float | None = None,
    max_idk_margin: float | None = None,
) -> list[float]:
    """Each answerable question's F1 as :func:`compute_metrics` averages it (0 where the rule abstains), in
    record order: the per-question scores two systems are compared on (:func:`paired_bootstrap`)."""
    rule = AbstentionRule(min_score, min_logprob, max_idk_margin)
    return [
        0.0 if r.abstains_under(rule) else _em_f1(r.prediction, tuple(r.golds))[1] for r in records if not r.impossible
    ]


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap of the mean difference ``b - a`` of two systems scored on the same questions.

    Args:
        a, b: ``(Q,)`` per-question scores of the two systems, question i in the same place in both.
        n: bootstrap resamples (questions drawn with replacement, the pairs kept together).

    Returns:
        ``diff`` (the observed mean of b - a), ``low`` / ``high`` (the 95% percentile interval of the
        resampled mean differences) and ``p_better`` (the share of resamples in which b beats a).
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired scores need the same questions on both sides, got {len(a)} and {len(b)}")
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n, len(d)))
    means = d[idx].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"diff": float(d.mean()), "low": float(low), "high": float(high), "p_better": float((means > 0).mean())}


def compute_metrics(
    records: list[Record],
    min_score: float | None = None,
    min_logprob: float | None = None,
    max_idk_margin: float | None = None,
) -> Metrics:
    answerable = [r for r in records if not r.impossible]
    impossible = [r for r in records if r.impossible]
    rule = AbstentionRule(min_score, min_logprob, max_idk_margin)
    em = f1 = 0.0
    abstained_answerable = 0
    for r in answerable:
        if r.abstains_under(rule):
            abstained_answerable += 1
            continue
        e, f = _em_f1(r.prediction, tuple(r.golds))
        em += e
        f1 += f
    n = max(len(answerable), 1)
    abst_imp = sum(r.abstains_under(rule) for r in impossible)
    abst_all = abst_imp + abstained_answerable
    lat = np.array([r.latency_s for r in records]) if records else np.zeros(1)
    gen_s = sum(r.generate_s for r in records)
    toks = sum(r.tokens for r in records)
    return Metrics(
        n=len(answerable),
        n_unanswerable=len(impossible),
        em=em / n,
        f1=f1 / n,
        recall_at_k=sum(r.retrieval_hit for r in answerable) / n,
        abstain_precision=(abst_imp / abst_all) if impossible and abst_all else (0.0 if impossible else None),
        abstain_recall=(abst_imp / len(impossible)) if impossible else None,
        abstain_rate_answerable=abstained_answerable / n,
        p50_s=float(np.percentile(lat, 50)),
        p95_s=float(np.percentile(lat, 95)),
        tokens_per_s=toks / gen_s if gen_s > 0 else 0.0,
        min_score=min_score,
        min_logprob=min_logprob,
        max_idk_margin=max_idk_margin,
    )


def calibrate(records: list[Record], max_f1_drop: float = 0.10) -> dict[str, Any]:
    """Thresholds that catch the most unanswerable questions while answerable F1 drops < ``max_f1_drop``
    and abstentions are right more often than the unanswerable share of ``records`` (else a coin would do).

    Searches the retrieval-score, answer-likelihood and "I don't know" margin thresholds (each alone
    and together) over quantiles of the observed values; returns the best triple (most abstention
    recall, then precision) and the metrics it gives on ``records``. Fit on other questions than the
    ones you report: the F1 drop hangs on the few answers that are right, so thresholds fitted on 60
    questions rarely hold on the next 60 (calibrate on hundreds, with a stricter ``max_f1_drop``).
    """
    base = compute_metrics(records)
    base_rate = sum(r.impossible for r in records) / max(len(records), 1)
    none = {"min_score": None, "min_logprob": None, "max_idk_margin": None}
    if not any(r.impossible for r in records):
        return {**none, "metrics": base.to_dict()}

    def grid(values: list[float], upper: bool = False) -> list[float | None]:
        if not values:
            return [None]
        qs = np.quantile(values, np.linspace(0.2, 1.0, 17) if upper else np.linspace(0, 0.8, 17))
        return [None] + sorted({round(float(q), 4) for q in qs})

    scores = grid([r.max_score for r in records if r.max_score is not None])
    lps = grid([r.mean_logprob for r in records if r.mean_logprob is not None])
    margins = grid([r.idk_margin for r in records if r.idk_margin is not None], upper=True)
    best: tuple[float, float, dict[str, float | None]] | None = None
    for s in scores:
        for lp in lps:
            for mg in margins:
                m = compute_metrics(records, s, lp, mg)
                if base.f1 > 0 and m.f1 < (1 - max_f1_drop) * base.f1:
                    continue
                if (m.abstain_recall or 0.0) > 0 and (m.abstain_precision or 0.0) <= base_rate:
                    continue
                key = (m.abstain_recall or 0.0, m.abstain_precision or 0.0)
                if best is None or key > best[:2]:
                    best = (*key, {"min_score": s, "min_logprob": lp, "max_idk_margin": mg})
    if best is None:
        return {**none, "metrics": base.to_dict()}
    chosen = best[2]
    return {**chosen, "metrics": compute_metrics(records, **chosen).to_dict()}


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """How well a score ranks positives above negatives: P(random positive > random negative), ties
    counting half (the Mann-Whitney U statistic over all pairs); 0.5 = no better than a coin."""
    if not len(positive) or not len(negative):
        return None
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def retrieval_hit(texts: Sequence[str], golds: Sequence[str]) -> bool:
    """A gold answer string appears (case-insensitively) in a retrieved chunk."""
    low = [t.lower() for t in texts]
    return any(g.lower() in t for g in golds for t in low)


def run_eval(
    pipeline,
    collection,
    examples: list[QAExample],
    *,
    mode: str | None = None,
    k: int | None = None,
    adapter: str | None = None,
    progress: bool = False,
) -> list[Record]:
    """Answer every example with ``pipeline`` (a :class:`rag.qa.QAPipeline`) with thresholds off.

    Thresholds are applied afterwards by :func:`compute_metrics`, so one pass serves both the
    configured thresholds and :func:`calibrate`.
    """
    from tqdm.auto import tqdm

    records = []
    for ex in tqdm(examples, desc="eval", unit="q", disable=not progress):
        ans = pipeline.answer(collection, ex.question, mode=mode, k=k, adapter=adapter, abstain=False, style="short")
        records.append(record_from_answer(ex, ans))
    return records
