"""Feedback left through the REST API, turned into SFT and preference training files.

The input is the server's answer log joined with its feedback rows — plain dicts with the keys of
``api.answers.AnswerLog.feedback_records()`` (``question, answer, rating, correction, abstained,
contexts, citations, collection, ...``). The CLI opens the log and passes the records in; nothing here
imports :mod:`api` (dependencies run ``api -> finetune``).

Rules, per feedback row:

- a correction is an SFT example: question (+ the contexts the answer was generated from) -> correction;
- a thumbs-up without a correction is an SFT example with the logged answer;
- a correction that differs from the logged answer, on an answer rated down or corrected, is a
  preference pair: ``chosen`` = correction, ``rejected`` = logged answer;
- a thumbs-down without a correction gives nothing to learn from and is counted as skipped.

Files use exactly the formats of :mod:`finetune.data`: ``{"question", "answer", "contexts"}`` and
``{"question", "chosen", "rejected", "contexts"}``; ``contexts`` is left out when none is known.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.data import write_jsonl
from finetune.errors import FeedbackError

logger = logging.getLogger(__name__)

SFT_FILE = "sft.jsonl"
PREFERENCES_FILE = "preferences.jsonl"

ContextFetcher = Callable[[str, list[str]], Mapping[str, str]]
"""``fetch(collection, chunk_ids) -> {chunk_id: text}`` for citations logged without their text."""


@dataclass
class FeedbackReport:
    records: int = 0
    sft: int = 0
    preferences: int = 0
    sft_from_corrections: int = 0
    sft_from_upvotes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    contexts_logged: int = 0
    contexts_fetched: int = 0
    contexts_missing: int = 0
    collections: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FeedbackExport:
    sft: list[dict[str, Any]]
    preferences: list[dict[str, Any]]
    report: FeedbackReport


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".!")


def record_contexts(record: Mapping[str, Any], fetch: ContextFetcher | None, report: FeedbackReport) -> list[str]:
    """The chunk texts the answer was generated from: logged texts first, else fetched by chunk id."""
    logged = [c for c in (record.get("contexts") or []) if isinstance(c, str) and c.strip()]
    citations = [c for c in (record.get("citations") or []) if isinstance(c, Mapping)]
    if logged and len(logged) >= len(citations):
        report.contexts_logged += 1
        return logged
    texts = [c.get("text") if isinstance(c.get("text"), str) and c.get("text", "").strip() else None for c in citations]
    if citations and all(texts):
        report.contexts_logged += 1
        return [t for t in texts if t]
    missing = [str(c["chunk_id"]) for c, t in zip(citations, texts) if t is None and c.get("chunk_id")]
    if missing and fetch is not None:
        try:
            found = fetch(str(record.get("collection", "")), missing)
        except Exception as exc:  # a deleted collection must not stop the export
            logger.warning("cannot fetch the chunks of collection %r: %s", record.get("collection"), exc)
            found = {}
        texts = [t if t is not None else found.get(str(c.get("chunk_id"))) for c, t in zip(citations, texts)]
        if any(texts):
            report.contexts_fetched += 1
            return [t for t in texts if t]
    report.contexts_missing += 1
    return []


def export_feedback(
    records: Iterable[Mapping[str, Any]], *, fetch_contexts: ContextFetcher | None = None
) -> FeedbackExport:
    """SFT examples and preference pairs from feedback ``records`` (see the module docstring).

    Duplicates (same question and answer, or same question, chosen and rejected; case and spacing
    ignored) are kept once. Raises :class:`FeedbackError` when there are no records.
    """
    report = FeedbackReport()
    sft: list[dict[str, Any]] = []
    prefs: list[dict[str, Any]] = []
    seen_sft: set[tuple[str, str]] = set()
    seen_pref: set[tuple[str, str, str]] = set()
    collections: set[str] = set()
    for rec in records:
        report.records += 1
        question = str(rec.get("question") or "").strip()
        answer = str(rec.get("answer") or "").strip()
        correction = str(rec.get("correction") or "").strip()
        rating = rec.get("rating")
        if rec.get("collection"):
            collections.add(str(rec["collection"]))
        if not question:
            report.skip("no question")
            continue
        if rating not in ("up", "down"):
            report.skip(f"unknown rating {rating!r}")
            continue
        if rating == "down" and not correction:
            report.skip("rated down without a correction")
            continue
        contexts = record_contexts(rec, fetch_contexts, report)
        target = correction or answer
        if not target:
            report.skip("empty answer")
            continue
        key = (_norm(question), _norm(target))
        if key in seen_sft:
            report.duplicates += 1
        else:
            seen_sft.add(key)
            sft.append({"question": question, "answer": target, **({"contexts": contexts} if contexts else {})})
            if correction:
                report.sft_from_corrections += 1
            else:
                report.sft_from_upvotes += 1
        if correction and answer and _norm(correction) != _norm(answer):
            pkey = (_norm(question), _norm(correction), _norm(answer))
            if pkey in seen_pref:
                report.duplicates += 1
            else:
                seen_pref.add(pkey)
                prefs.append(
                    {
                        "question": question,
                        "chosen": correction,
                        "rejected": answer,
                        **({"contexts": contexts} if contexts else {}),
                    }
                )
        elif correction and rating == "down":
            report.skip("correction equals the logged answer")
    if report.records == 0:
        raise FeedbackError(
            "no feedback yet: rate answers through the REST API "
            "(POST /v1/answers/{answer_id}/feedback) and export again"
        )
    report.sft, report.preferences = len(sft), len(prefs)
    report.collections = sorted(collections)
    return FeedbackExport(sft, prefs, report)


def write_feedback_files(export: FeedbackExport, output_dir: str | Path) -> dict[str, Path]:
    """Write ``sft.jsonl`` and ``preferences.jsonl`` into ``output_dir`` (atomic; created if needed)."""
    out = Path(output_dir)
    paths = {"sft": out / SFT_FILE, "preferences": out / PREFERENCES_FILE}
    write_jsonl(paths["sft"], export.sft)
    write_jsonl(paths["preferences"], export.preferences)
    return paths
