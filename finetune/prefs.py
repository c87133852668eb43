"""On-policy preference pairs: the policy's own answers, sampled through retrieval and the RAG pipeline,
ranked by a verifier.

For every training question, ``samples`` short answers (:data:`ANSWER_STYLE`, as ``ragqa eval``
answers) are drawn from the policy (the base model or an adapter) by :class:`rag.qa.QAPipeline` itself:
the same retrieval, the same per-document prompts and the RAG-Sequence or RAG-Token marginal, with
``strategy="sample"`` (RAG-Token: each token drawn from the mixture; RAG-Sequence: z ~ p(z|x), then
y ~ p(y|x,z)) and one seed per sample. Each answer is scored by
the verifier: token F1 against the record's gold answer (:func:`finetune.verifier.answer_f1`, the
benchmark's score), or the reward model for a question without one. The best answer becomes ``chosen``,
the worst ``rejected`` (:func:`preference_pair`); a group whose scores all tie teaches nothing and is
skipped. Pairs are written in the format of ``ragqa feedback export`` (``question, chosen, rejected,
contexts``; :mod:`finetune.feedback`), plus ``margin`` and the two scores, so ``ragqa finetune dpo`` and
``reward`` read both. A sidecar ``NAME.meta.json`` records the policy, mode, seeds and counts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config import PrefsJob
from finetune.data import Example, file_sha256, read_jsonl, write_jsonl
from finetune.errors import DataError, FinetuneError
from finetune.runner import Workspace, set_threads
from finetune.verifier import answer_f1

logger = logging.getLogger(__name__)

#: The answer style sampled: the short span the F1 verifier scores against a gold answer, as ``ragqa eval``
#: answers (not the workspace's default style: full answers with citation markers and up to
#: ``full_max_new_tokens`` tokens would be scored against a span and train the short-answer policy on them).
ANSWER_STYLE = "short"


@dataclass(frozen=True)
class PreferencePair:
    """The best and the worst of one question's sampled answers (indices into the group)."""

    chosen: int
    rejected: int
    chosen_score: float
    rejected_score: float

    @property
    def margin(self) -> float:
        return self.chosen_score - self.rejected_score


def preference_pair(scores: Sequence[float], min_margin: float = 0.0) -> PreferencePair | None:
    """Best against worst of ``scores`` (one per sampled answer; the first of equal scores wins either way).

    None when every score ties or the margin is not above ``min_margin``.
    """
    if len(scores) < 2:
        return None
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    pair = PreferencePair(best, worst, float(scores[best]), float(scores[worst]))
    if pair.margin <= 0 or pair.margin <= min_margin:
        return None
    return pair


def sample_seed(seed: int, question: int, sample: int, samples: int) -> int:
    """The sampling seed of answer ``sample`` to question number ``question`` (distinct within a run)."""
    return seed * 1_000_003 + question * samples + sample


@dataclass
class PrefsReport:
    questions: int = 0
    answers: int = 0
    distinct_answers: int = 0
    pairs: int = 0
    tied: int = 0
    below_margin: int = 0
    no_evidence: int = 0
    scored_by_f1: int = 0
    scored_by_reward_model: int = 0
    margins: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        def mean(xs: list[float]) -> float | None:
            return round(sum(xs) / len(xs), 4) if xs else None

        return {
            "questions": self.questions,
            "answers": self.answers,
            "distinct_answers_per_question": round(self.distinct_answers / max(1, self.questions), 2),
            "pairs": self.pairs,
            "skipped_tied": self.tied,
            "skipped_below_margin": self.below_margin,
            "skipped_no_evidence": self.no_evidence,
            "questions_scored_by_f1": self.scored_by_f1,
            "questions_scored_by_reward_model": self.scored_by_reward_model,
            "mean_margin": mean(self.margins),
            "mean_score": mean(self.scores),
            "seconds": round(self.seconds, 1),
        }


@dataclass
class PrefsResult:
    """What :func:`run_prefs` returns: the pairs file, its sidecar and the run's counts."""

    output: Path
    meta_path: Path
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "meta": str(self.meta_path), "metrics": self.metrics}


def meta_path(output: Path) -> Path:
    """The sidecar of a pairs file: ``pairs.jsonl`` -> ``pairs.meta.json``."""
    return output.with_name(output.stem + ".meta.json")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def run_prefs(job: PrefsJob, ws: Workspace, *, progress: bool = False) -> PrefsResult:
    """Sample, score and pair the policy's answers to ``job.data``'s questions; write ``job.output`` and its sidecar."""
    from ingest.workspace import Workspace as IngestWorkspace
    from rag.retriever import Retriever

    if job.output.exists() and job.output.is_dir():
        raise DataError(f"{job.output} is a directory; give a file name such as {job.output / 'pairs.jsonl'}")
    records = read_jsonl(job.data, "prompt", min_examples=1)
    if job.max_questions is not None:
        records = records[: job.max_questions]
    ungraded = sum(1 for r in records if not r.answer)
    if ungraded and not job.reward_model:
        raise DataError(
            f"{ungraded} question(s) in {job.data} have no gold 'answer' to score against; "
            "add answers, or pass --reward-model NAME to score those with a reward adapter"
        )
    started = time.perf_counter()
    set_threads()
    gen = ws.base_generator()
    if job.adapter:
        ws.adapters.require_generator_adapter(job.adapter)  # a clear error for a missing or reward adapter
    iws = IngestWorkspace(ws.home, ws.ingest)
    collection = iws.open(job.collection, readonly=True)  # closed below, whatever happens
    retriever = Retriever(iws.embedder, ws.retriever)
    max_ctx = job.max_context_tokens or ws.qa.max_context_tokens
    config = ws.qa.model_copy(
        update={
            "mode": job.mode,
            "strategy": "sample",
            "temperature": job.temperature,
            "top_p": job.top_p,
            "max_context_tokens": max_ctx,
        }
    )
    scorer = None
    if ungraded:
        from finetune.reward import RewardScorer

        scorer = RewardScorer(ws, str(job.reward_model), gen)
    report = PrefsReport()
    pairs: list[dict[str, Any]] = []
    try:
        _sample_pairs(job, records, gen, collection, retriever, config, scorer, report, pairs, progress)
    finally:
        collection.close()
    report.seconds = time.perf_counter() - started
    if not pairs:
        raise FinetuneError(
            f"no preference pairs from {report.questions} question(s): every group of {job.samples} answers tied "
            f"({report.tied}) or fell below --min-margin ({report.below_margin}); sample more (--samples), "
            "raise --temperature, or use more questions"
        )
    write_jsonl(job.output, pairs)
    metrics = report.to_dict()
    side = meta_path(job.output)
    _write_json(
        side,
        {
            "kind": "on-policy-preferences",
            "policy": {"base_model": gen.name, "adapter": job.adapter},
            "mode": job.mode,
            "collection": job.collection,
            "sampling": {
                "samples": job.samples,
                "temperature": job.temperature,
                "top_p": job.top_p,
                "seed": job.seed,
                "seeds": "seed * 1000003 + question_index * samples + sample_index",
            },
            "verifier": {"f1": "gold answer", "reward_model": job.reward_model},
            "data": {"path": str(job.data), "sha256": file_sha256(job.data), "records": len(records)},
            "options": job.model_dump(mode="json"),
            "counts": metrics,
        },
    )
    logger.info("wrote %d on-policy preference pairs to %s", len(pairs), job.output)
    return PrefsResult(job.output, side, metrics)


def _scores(rec: Example, texts: list[str], contexts: list[str], scorer: Any, report: PrefsReport) -> list[float]:
    """The verifier's score of each answer: F1 against the gold answer, else the reward model."""
    if rec.answer:
        report.scored_by_f1 += 1
        return [answer_f1(t, rec.answer) for t in texts]
    report.scored_by_reward_model += 1
    return [float(s) for s in scorer.score(rec.question, contexts, texts)]


def _sample_pairs(
    job: PrefsJob,
    records: list[Example],
    gen: Any,
    collection: Any,
    retriever: Any,
    config: Any,
    scorer: Any,
    report: PrefsReport,
    pairs: list[dict[str, Any]],
    progress: bool,
) -> None:
    """Sample ``job.samples`` answers per record through the pipeline, score them, append the pairs."""
    from tqdm.auto import tqdm

    from rag.qa import QAPipeline, format_contexts

    max_ctx = config.max_context_tokens
    for qi, rec in enumerate(tqdm(records, desc="prefs", unit="q", disable=not progress)):
        report.questions += 1
        answers = []
        for j in range(job.samples):
            pipe = QAPipeline(
                retriever, gen, config.model_copy(update={"seed": sample_seed(job.seed, qi, j, job.samples)})
            )
            answers.append(
                pipe.answer(collection, rec.question, k=job.k, adapter=job.adapter, abstain=False, style=ANSWER_STYLE)
            )
        if not answers[0].citations:
            report.no_evidence += 1
            continue
        texts = [a.answer for a in answers]
        report.answers += len(texts)
        report.distinct_answers += len({t.strip().lower() for t in texts})
        contexts = format_contexts(gen.tokenizer, answers[0].citations, max_ctx)
        scores = _scores(rec, texts, contexts, scorer, report)
        report.scores += scores
        pair = preference_pair(scores, job.min_margin)
        if pair is None:
            if max(scores) == min(scores):
                report.tied += 1
            else:
                report.below_margin += 1
            continue
        chosen = answers[pair.chosen]
        if job.contexts == "top":
            shares = [c.contribution for c in chosen.citations]
            contexts = [contexts[max(range(len(shares)), key=lambda i: (shares[i], -i))]]
        report.pairs += 1
        report.margins.append(pair.margin)
        pairs.append(
            {
                "question": rec.question,
                "chosen": texts[pair.chosen],
                "rejected": texts[pair.rejected],
                "contexts": contexts,
                "margin": round(pair.margin, 4),
                "chosen_score": round(pair.chosen_score, 4),
                "rejected_score": round(pair.rejected_score, 4),
                "verifier": "f1" if rec.answer else "reward_model",
            }
        )
