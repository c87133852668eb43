"""The one SQuAD reader: SQuAD-format JSON (v1.1 or v2.0) as typed articles, paragraphs and questions.

Format: ``{"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id",
"question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``.

Everything that walks a SQuAD file (the document loader, evaluation, fine-tuning data, the benchmarks)
reads it through :func:`read_squad` / :func:`parse_squad` and :func:`iter_questions`. The reader is
lenient where one bad entry should not lose the file: a non-object article, paragraph or question is
skipped with a warning, and the ``index`` fields keep the positions of the file, so keys built from
them (``"<title>/<paragraph index>"``) do not shift. Contexts are kept verbatim: ``answer_start``
offsets index into them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.errors import IngestError

logger = logging.getLogger(__name__)


class SquadFormatError(IngestError, ValueError):
    """A file cannot be read as SQuAD data; the message says what was expected."""


@dataclass(frozen=True)
class SquadAnswer:
    text: str
    answer_start: int | None = None  # character offset into the paragraph's context


@dataclass(frozen=True)
class SquadQuestion:
    """One question. ``qid`` is the file's ``id`` (or the question's position in the file when absent);
    ``answers`` holds the non-empty gold answers; ``is_impossible`` is the file's flag as written."""

    qid: str
    question: str
    answers: tuple[SquadAnswer, ...] = ()
    is_impossible: bool = False

    @property
    def answerable(self) -> bool:
        """Marked answerable and with at least one gold answer (SQuAD 2.0's definition)."""
        return not self.is_impossible and bool(self.answers)

    @property
    def answer_texts(self) -> list[str]:
        return [a.text for a in self.answers]


@dataclass(frozen=True)
class SquadParagraph:
    index: int  # position in its article (0-based), as in the file
    context: str  # verbatim; "" when the file has none
    questions: tuple[SquadQuestion, ...] = ()


@dataclass(frozen=True)
class SquadArticle:
    index: int  # position in the file's ``data`` list
    title: str  # "" when the file has none
    paragraphs: tuple[SquadParagraph, ...] = ()


@dataclass(frozen=True)
class SquadDataset:
    articles: tuple[SquadArticle, ...]
    version: str = "v2.0"

    def __iter__(self) -> Iterator[SquadArticle]:
        return iter(self.articles)

    def __len__(self) -> int:
        return len(self.articles)


def looks_like_squad(obj: Any) -> bool:
    """True when ``obj`` has the SQuAD shape (checked on the first article and paragraph)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list) or not obj["data"]:
        return False
    article = obj["data"][0]
    if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
        return False
    paragraphs = article["paragraphs"]
    return bool(paragraphs) and isinstance(paragraphs[0], dict) and isinstance(paragraphs[0].get("context"), str)


def _answers(raw: Any) -> tuple[SquadAnswer, ...]:
    out = []
    for a in raw if isinstance(raw, list) else []:
        if isinstance(a, dict) and isinstance(a.get("text"), str) and a["text"]:
            start = a.get("answer_start")
            out.append(SquadAnswer(a["text"], start if isinstance(start, int) else None))
    return tuple(out)


def parse_squad(obj: Any, source: str | Path = "<squad>") -> SquadDataset:
    """Typed view of an already-parsed SQuAD object. Raises :class:`SquadFormatError` when ``obj`` has
    no ``data`` list; skips (with a warning) entries that are not objects."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise SquadFormatError(
            f"{source} is not SQuAD format: expected {{'data': [{{'title', 'paragraphs': [{{'context', 'qas'}}]}}]}}"
        )
    n_questions = 0
    articles = []
    for a, raw_article in enumerate(obj["data"]):
        if not isinstance(raw_article, dict):
            logger.warning("%s: data[%d] is not an article object; skipped", source, a)
            continue
        title = raw_article.get("title")
        title = "" if title is None else str(title)
        paragraphs = []
        for i, raw_par in enumerate(raw_article.get("paragraphs") or []):
            if not isinstance(raw_par, dict):
                logger.warning("%s: %s paragraph %d is not an object; skipped", source, title or f"data[{a}]", i)
                continue
            questions = []
            for raw_q in raw_par.get("qas") or []:
                if not isinstance(raw_q, dict) or not isinstance(raw_q.get("question"), str):
                    logger.warning("%s: %s paragraph %d has a question without text; skipped", source, title, i)
                    continue
                qid = raw_q.get("id")
                questions.append(
                    SquadQuestion(
                        qid=str(qid if qid is not None else n_questions),
                        question=raw_q["question"],
                        answers=_answers(raw_q.get("answers")),
                        is_impossible=bool(raw_q.get("is_impossible", False)),
                    )
                )
                n_questions += 1
            context = raw_par.get("context")
            paragraphs.append(SquadParagraph(i, context if isinstance(context, str) else "", tuple(questions)))
        articles.append(SquadArticle(a, title, tuple(paragraphs)))
    return SquadDataset(tuple(articles), str(obj.get("version") or "v2.0"))


def read_squad(path: str | Path) -> SquadDataset:
    """Read a SQuAD-format JSON file. Raises :class:`SquadFormatError` when it cannot be read or parsed."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SquadFormatError(f"cannot read SQuAD data from {path}: {exc}") from exc
    return parse_squad(obj, path)


def iter_questions(
    articles: Iterable[SquadArticle], *, answerable: bool | None = None
) -> Iterator[tuple[SquadArticle, SquadParagraph, SquadQuestion]]:
    """Every ``(article, paragraph, question)`` in file order; ``answerable=True`` keeps only the
    answerable questions (:attr:`SquadQuestion.answerable`), ``False`` only the unanswerable ones."""
    for article in articles:
        for paragraph in article.paragraphs:
            for q in paragraph.questions:
                if answerable is None or q.answerable == answerable:
                    yield article, paragraph, q


def iter_paragraphs(articles: Iterable[SquadArticle]) -> Iterator[tuple[SquadArticle, SquadParagraph]]:
    """Every ``(article, paragraph)`` in file order."""
    for article in articles:
        for paragraph in article.paragraphs:
            yield article, paragraph


def to_json(articles: Iterable[SquadArticle], version: str = "v2.0") -> dict[str, Any]:
    """The SQuAD JSON object of ``articles`` (e.g. one held-out article for ``ragqa eval --data``)."""
    return {
        "version": version,
        "data": [
            {
                "title": a.title,
                "paragraphs": [
                    {
                        "context": p.context,
                        "qas": [
                            {
                                "id": q.qid,
                                "question": q.question,
                                "is_impossible": q.is_impossible,
                                "answers": [{"text": x.text, "answer_start": x.answer_start} for x in q.answers],
                            }
                            for q in p.questions
                        ],
                    }
                    for p in a.paragraphs
                ],
            }
            for a in articles
        ],
    }
