"""Training data from a SQuAD-format file: SFT pairs, "I don't know." examples, preference pairs.

For users who have SQuAD-style annotations of their own domain (or want to try the recipe on the
bundled ``data/benchmarks/squad2_dev_public.json``). :func:`squad_training_data` writes, into one
folder, files in the formats of :mod:`finetune.data`:

- ``sft.jsonl``: every answerable question of the training articles with its majority answer and its
  paragraph as ``context``; plus, with ``unanswerable`` > 0, that share (x the answerable count) of
  the training articles' unanswerable questions answered ``I don't know.`` over the paragraph they were
  written against (SQuAD 2.0's adversarial distractor), which teaches the model to abstain.
- ``heldout.json`` (with ``held_out``): the held-out articles as SQuAD JSON, for ``ragqa eval --data``;
  their questions are never trained on.
- ``preferences.jsonl`` and ``prompts.jsonl`` (with ``preferences`` > 0): chosen = the gold span,
  rejected = the whole sentence around it (the long, unextracted reply a base model tends to give);
  the prompts are the first ``prompts`` of those questions with their paragraphs, for ``finetune rlhf``.

The same file, options and ``seed`` give the same files.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.data import DataError, write_jsonl
from ingest.squad import SquadArticle, SquadFormatError, SquadQuestion, iter_questions, read_squad, to_json

SFT_FILE = "sft.jsonl"
HELD_OUT_FILE = "heldout.json"
PREFERENCES_FILE = "preferences.jsonl"
PROMPTS_FILE = "prompts.jsonl"


@dataclass
class SquadTrainingData:
    """What :func:`squad_training_data` wrote (paths are None for files it did not write)."""

    sft_path: Path
    held_out_path: Path | None = None
    preferences_path: Path | None = None
    prompts_path: Path | None = None
    train_articles: list[str] = field(default_factory=list)
    held_out_articles: list[str] = field(default_factory=list)
    answerable: int = 0  # SFT records with a gold answer
    unanswerable: int = 0  # SFT records answered "I don't know."
    preference_pairs: int = 0
    prompts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# -- records (pure) -------------------------------------------------------------------------------
def majority_answer(question: SquadQuestion) -> str | None:
    """The answer most annotators gave (ties: the shortest, then alphabetical): the usual single SQuAD
    training target; None when the question has no non-blank answer."""
    texts = [t.strip() for t in question.answer_texts if t.strip()]
    if not texts:
        return None
    return min(set(texts), key=lambda t: (-texts.count(t), len(t), t))


def sft_records(articles: Iterable[SquadArticle]) -> list[dict[str, Any]]:
    """One ``{"question", "answer", "context"}`` record per answerable question, in file order."""
    out = []
    for _, paragraph, q in iter_questions(articles, answerable=True):
        answer = majority_answer(q)
        if answer is not None:
            out.append({"question": q.question, "answer": answer, "context": paragraph.context})
    return out


def unanswerable_records(articles: Iterable[SquadArticle], k: int, seed: int = 0) -> list[dict[str, Any]]:
    """``k`` unanswerable questions (a seeded sample; all when fewer) answered with the abstention text
    over the paragraph they were written against."""
    from rag.prompts import ABSTAIN_TEXT

    pool = [
        {"question": q.question, "answer": ABSTAIN_TEXT, "context": p.context}
        for _, p, q in iter_questions(articles, answerable=False)
    ]
    k = min(len(pool), k)
    return random.Random(seed).sample(pool, k) if k > 0 else []


def sentence_around(context: str, start: int, answer: str) -> str:
    """The sentence holding the answer at ``start``: the long, unextracted reply a preference set should reject."""
    bounds = [m.end() for m in re.finditer(r"[.!?]\s+", context)]
    lo = max([b for b in bounds if b <= start], default=0)
    hi = min([b for b in bounds if b > start + len(answer)], default=len(context))
    return context[lo:hi].strip()


def preference_records(articles: Iterable[SquadArticle], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` ``{"question", "chosen", "rejected", "context"}`` pairs (seeded shuffle): chosen = the
    first gold answer, rejected = its sentence, kept when that sentence is clearly longer (> 20 characters more)."""
    pool = []
    for _, p, q in iter_questions(articles, answerable=True):
        ans = q.answers[0]
        start = ans.answer_start if ans.answer_start is not None else p.context.find(ans.text)
        if start < 0:
            continue
        sentence = sentence_around(p.context, start, ans.text)
        if len(sentence) > len(ans.text) + 20:
            pool.append({"question": q.question, "chosen": ans.text, "rejected": sentence, "context": p.context})
    random.Random(seed).shuffle(pool)
    return pool[:n]


def split_articles(
    articles: Sequence[SquadArticle], held_out: Iterable[int]
) -> tuple[list[SquadArticle], list[SquadArticle]]:
    """``(train, held out)``; ``held_out`` holds article positions in the file's ``data`` list."""
    wanted = set(held_out)
    known = {a.index for a in articles}
    missing = sorted(wanted - known)
    if missing:
        raise DataError(
            f"no article at position(s) {', '.join(map(str, missing))} of the SQuAD file; "
            f"use 0..{max(known, default=-1)} (positions in its 'data' list)"
        )
    return [a for a in articles if a.index not in wanted], [a for a in articles if a.index in wanted]


# -- the whole build --------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def squad_training_data(
    squad_path: str | Path,
    out_dir: str | Path,
    *,
    held_out: Iterable[int] = (),
    unanswerable: float = 0.0,
    preferences: int = 0,
    prompts: int = 16,
    seed: int = 0,
) -> SquadTrainingData:
    """Write SFT (and optionally held-out, preference and prompt) files from a SQuAD file into ``out_dir``.

    ``held_out``: positions of articles in the file's ``data`` list kept out of training and written to
    ``heldout.json``. ``unanswerable``: also train on ``round(unanswerable x answerable count)`` of the
    training articles' unanswerable questions, answered "I don't know.". ``preferences``: number of
    preference pairs (0: none); ``prompts``: RLHF prompts taken from them. Raises
    :class:`~finetune.data.DataError` on an unreadable file, bad options or no answerable question.
    """
    if unanswerable < 0:
        raise DataError(f"unanswerable must be a share >= 0 (e.g. 0.5), got {unanswerable}")
    if preferences < 0 or prompts < 0:
        raise DataError("preferences and prompts must be counts >= 0")
    try:
        data = read_squad(squad_path)
    except SquadFormatError as exc:
        raise DataError(f"{exc}; give a SQuAD-format JSON file") from exc
    train, held = split_articles(data.articles, held_out)
    records = sft_records(train)
    if not records:
        raise DataError(f"{squad_path}: the training articles hold no answerable question; check --held-out")
    idk = unanswerable_records(train, round(unanswerable * len(records)), seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = SquadTrainingData(
        sft_path=out / SFT_FILE,
        train_articles=[a.title for a in train],
        held_out_articles=[a.title for a in held],
        answerable=len(records),
        unanswerable=len(idk),
    )
    write_jsonl(result.sft_path, records + idk)
    if held:
        result.held_out_path = out / HELD_OUT_FILE
        _write_json(result.held_out_path, to_json(held, data.version))
    if preferences:
        pairs = preference_records(train, preferences, seed)
        result.preferences_path, result.prompts_path = out / PREFERENCES_FILE, out / PROMPTS_FILE
        result.preference_pairs = write_jsonl(result.preferences_path, pairs)
        result.prompts = write_jsonl(
            result.prompts_path, [{"question": p["question"], "context": p["context"]} for p in pairs[:prompts]]
        )
    return result
