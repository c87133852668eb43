"""The whole run: plan which answers to ask about, write a question for each, keep unique ones.

Each pair is written in the SFT format of :mod:`finetune.data` — ``{"question", "answer",
"contexts": [chunk text]}`` — plus the metadata fields ``source``, ``chunk_id`` and ``method``.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm import tqdm

from finetune.errors import SynthError
from finetune.synth.candidates import TYPE_PRIORITY, Candidate, chunk_candidates
from finetune.synth.cloze import cloze_question
from finetune.synth.generated import QuestionWriter, clean_generated_question

logger = logging.getLogger(__name__)

METHODS = ("cloze", "generate", "both")


class ChunkLike(Protocol):
    """What :func:`synthesize` reads from a chunk (``ingest.store.ChunkRow`` fits)."""

    @property
    def chunk_id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def metadata(self) -> Mapping[str, Any]: ...


@dataclass
class SynthPair:
    question: str
    answer: str
    context: str
    chunk_id: str
    source: str
    method: str  # cloze or generate
    kind: str  # date, year, number, name, single_name
    form: str  # wh, blank (cloze) or llm (generate)

    def to_json(self) -> dict[str, Any]:
        """One line of the SFT file (:mod:`finetune.data`) with its metadata."""
        return {
            "question": self.question,
            "answer": self.answer,
            "contexts": [self.context],
            "source": self.source,
            "chunk_id": self.chunk_id,
            "method": self.method,
        }


@dataclass
class SynthReport:
    pairs: int = 0
    chunks_total: int = 0
    chunks_with_candidates: int = 0
    chunks_used: int = 0
    candidates: int = 0
    per_method: dict[str, int] = field(default_factory=dict)
    per_kind: dict[str, int] = field(default_factory=dict)
    per_form: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    generate_attempts: int = 0
    generate_rejected: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class SynthResult:
    pairs: list[SynthPair]
    report: SynthReport


def _norm_key(question: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", question.lower()).split())


def _plan(
    chunks: list[ChunkLike], rng: random.Random, per_chunk: int, report: SynthReport, progress: bool = False
) -> list[tuple[ChunkLike, tuple[int, int], Candidate]]:
    """Candidates in the order they are tried: a round-robin over shuffled chunks, so the first pairs
    come from as many chunks as possible; within a chunk typed answers first, one per sentence first."""
    per: list[list[tuple[ChunkLike, tuple[int, int], Candidate]]] = []
    for chunk in tqdm(chunks, desc="scan chunks", unit="chunk", disable=not progress):
        found = chunk_candidates(chunk.text)
        report.candidates += len(found)
        if not found:
            continue
        report.chunks_with_candidates += 1
        rng.shuffle(found)
        seen: set[tuple[int, int]] = set()
        firsts: list[tuple[tuple[int, int], Candidate]] = []
        rest: list[tuple[tuple[int, int], Candidate]] = []
        for span, cand in sorted(found, key=lambda sc: TYPE_PRIORITY[sc[1].kind]):
            (rest if span in seen else firsts).append((span, cand))
            seen.add(span)
        per.append([(chunk, span, cand) for span, cand in (firsts + rest)[:per_chunk]])
    rng.shuffle(per)
    plan = []
    for i in range(per_chunk):
        plan += [items[i] for items in per if i < len(items)]
    return plan


def _check_options(method: str, write_question: QuestionWriter | None, n: int | None, per_chunk: int) -> None:
    if method not in METHODS:
        raise SynthError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method in ("generate", "both") and write_question is None:
        raise SynthError(f"method {method!r} needs a generator to write the questions")
    if n is not None and n < 1:
        raise SynthError("n must be at least 1")
    if per_chunk < 1:
        raise SynthError("per_chunk must be at least 1")


def _answer_text(chunk: ChunkLike, sentence: str, cand: Candidate) -> str | None:
    """The candidate's answer when it is a usable span of the chunk (one line, not blank)."""
    answer = sentence[cand.start : cand.end]
    if not answer.strip() or "\n" in answer or answer not in chunk.text:
        return None
    return answer


def _cloze_for(sentence: str, cand: Candidate, answer: str) -> tuple[str, str] | None:
    """``(question, form)`` by the cloze heuristics; None when none fits or the question leaks the answer."""
    made = cloze_question(sentence, cand)
    if made is None or answer in made[0].replace("___", ""):
        return None
    return made


@dataclass
class _Generation:
    """Generated questions under an attempt budget; counts attempts and rejections in ``report``."""

    write_question: QuestionWriter | None
    max_attempts: int
    report: SynthReport

    def question_for(self, chunk: ChunkLike, answer: str) -> tuple[str, str] | None:
        if self.write_question is None or self.report.generate_attempts >= self.max_attempts:
            return None
        self.report.generate_attempts += 1
        try:
            raw = self.write_question(chunk.text, answer)
        except Exception as exc:  # one failed generation must not lose the run
            logger.warning("question generation failed for chunk %s: %s", chunk.chunk_id, exc)
            raw = ""
        question = clean_generated_question(raw, answer, chunk.text)
        if not question:
            self.report.generate_rejected += 1
            logger.debug("rejected generated question %r for answer %r", raw, answer)
            return None
        return question, "llm"


@dataclass
class _Collected:
    """The pairs kept so far: unique questions (case and punctuation ignored), at most ``n``."""

    n: int | None
    report: SynthReport
    pairs: list[SynthPair] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    @property
    def full(self) -> bool:
        return self.n is not None and len(self.pairs) >= self.n

    def add(self, pair: SynthPair) -> bool:
        key = _norm_key(pair.question)
        if key in self.seen:
            self.report.duplicates += 1
            return False
        self.seen.add(key)
        self.pairs.append(pair)
        for counts, value in (
            (self.report.per_method, pair.method),
            (self.report.per_kind, pair.kind),
            (self.report.per_form, pair.form),
        ):
            counts[value] = counts.get(value, 0) + 1
        return True


def synthesize(
    chunks: Iterable[ChunkLike],
    *,
    n: int | None = None,
    seed: int = 0,
    method: str = "cloze",
    per_chunk: int = 2,
    write_question: QuestionWriter | None = None,
    max_attempts: int | None = None,
    progress: bool = False,
) -> SynthResult:
    """Question/answer pairs from ``chunks``; at most ``n`` (default: up to ``per_chunk`` per chunk).

    ``method`` is ``cloze``, ``generate`` or ``both`` (each chosen answer gets a cloze and a generated
    question). ``generate`` needs ``write_question`` (see :func:`generator_question_writer`) and stops
    after ``max_attempts`` generator calls (default ``4 * n``, or one per candidate without ``n``).
    The same ``seed`` and chunks give the same pairs. Questions are unique (case and punctuation
    ignored); every answer is an exact span of its pair's context.
    """
    _check_options(method, write_question, n, per_chunk)
    t0 = time.perf_counter()
    report = SynthReport(per_method={m: 0 for m in ("cloze", "generate") if method in (m, "both")})
    items = sorted(chunks, key=lambda c: c.chunk_id)
    report.chunks_total = len(items)
    plan = _plan(items, random.Random(seed), per_chunk, report, progress)
    methods = ["cloze", "generate"] if method == "both" else [method]
    if max_attempts is None:
        max_attempts = 4 * n if n is not None else len(plan)
    generation = _Generation(write_question, max_attempts, report)
    kept = _Collected(n, report)
    total = n if n is not None else len(plan) * len(methods)
    with tqdm(total=total, desc=f"synth ({method})", unit="pair", disable=not progress) as bar:
        for chunk, (s, e), cand in plan:
            if kept.full:
                break
            sentence = chunk.text[s:e]
            answer = _answer_text(chunk, sentence, cand)
            if answer is None:
                continue
            for m in methods:
                if kept.full:
                    break
                made = _cloze_for(sentence, cand, answer) if m == "cloze" else generation.question_for(chunk, answer)
                if made is None:
                    continue
                question, form = made
                pair = SynthPair(
                    question,
                    answer,
                    chunk.text,
                    chunk.chunk_id,
                    str(chunk.metadata.get("source", "")),
                    m,
                    cand.kind,
                    form,
                )
                if kept.add(pair):
                    bar.update(1)
    return _finish(kept.pairs, report, t0)


def _finish(pairs: list[SynthPair], report: SynthReport, t0: float) -> SynthResult:
    report.pairs = len(pairs)
    report.chunks_used = len({p.chunk_id for p in pairs})
    report.seconds = time.perf_counter() - t0
    logger.info("synthesised %d pairs from %d of %d chunks", report.pairs, report.chunks_used, report.chunks_total)
    return SynthResult(pairs, report)
