"""Follow-up questions: does a follow-up that refers back ("When did they do it?") retrieve as well as
the same question written out in full?

    .venv/bin/python -m bench.followups [--home H] [--n 60] [--methods standalone raw history condense] [--write]

Conversations are built from the public SQuAD file (``data/benchmarks/squad2_dev_public.json``, the
3 articles also ingested as the collection): turn 1 is a question of a paragraph, turn 2 another question
of the same paragraph that names the same entity (the article's subject, e.g. "Normans", or a capitalised
name found in both questions). In turn 2 the entity is dropped (ellipsis: "What is the largest city in
Southern California?" -> "What is the largest city?") where it ends the question after a preposition,
else replaced by a pronoun ("When did the Normans conquer England?" -> "When did they conquer England?").
Turn 1's answer is its gold answer. One conversation per paragraph at most, in file order.

Measured: recall@4 (the gold paragraph among the 4 chunks retrieved, ragqa's hybrid retriever with the
bundled models) of the standalone question, the raw follow-up, the history-aware query
(:func:`rag.conversation.history_query`) and the generator's condensed question
(:class:`rag.conversation.Condenser`, greedy). Target: follow-up recall >= 0.9x standalone.

``--write`` replaces the "Follow-up questions" section of BENCHMARKS.md (between
``<!-- followups:start -->`` and ``<!-- followups:end -->``).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench import common

common.stay_offline()

logger = logging.getLogger("bench.followups")

SECTION = common.Section("followups", "## Follow-up questions")
METHODS = ("standalone", "raw", "history", "condense")
TARGET_RATIO = 0.9
K = 4

_PREPOSITIONS = ("in", "of", "for", "by", "from", "at", "to", "about", "on", "with", "during", "under")
_SUBJECT_BEFORE = set(
    "what which who when where why how did does do was were is are has have had can could would will".split()
)


_COPULA = {"is", "are", "was", "were", *_PREPOSITIONS}


@dataclass
class Conversation:
    title: str
    paragraph: int
    entity: str
    kind: str  # "pronoun" or "ellipsis"
    first_question: str
    first_answer: str
    standalone: str  # turn 2 as SQuAD wrote it
    followup: str  # turn 2 referring back


def title_entities(title: str) -> list[str]:
    """Names an article's subject goes by in its questions: "Southern_California" -> ["Southern California"];
    "Normans" -> ["Normans", "Norman"]; "Computational_complexity_theory" -> [..., "complexity theory"]."""
    name = title.replace("_", " ")
    out = [name]
    words = name.split()
    if len(words) > 2:
        out.append(" ".join(words[-2:]))
    if name.endswith("s") and not name.endswith("ss"):
        out.append(name[:-1])
    return out


_NAME = re.compile(r"\b[A-Z][a-zA-Z]+(?:\s+(?:of\s+)?[A-Z][a-zA-Z]+)*")


def shared_entity(q1: str, q2: str, title: str) -> str | None:
    """The longest entity named in both questions: a name of the article's subject, or a capitalised
    name (not a question word), extended by the lowercase words that follow it in both ("Turing machine")."""
    found = [e for e in title_entities(title) if _find(q1, e) is not None and _find(q2, e) is not None]
    names = {
        m.group(0)
        for m in _NAME.finditer(q2)
        if m.start() > 0 and not q2[: m.start()].rstrip().endswith((".", "?", "!")) and m.group(0).lower() != "the"
    }
    found += [n for n in names if _find(q1, n) is not None]
    extended = []
    for entity in found:
        while (m := re.search(rf"\b(?i:{re.escape(entity)})\s+([a-z][a-z-]*)\b", q2)) and _find(
            q1, f"{entity} {m.group(1)}"
        ):
            entity = f"{entity} {m.group(1)}"
        extended.append(entity)
    return max(extended, key=len) if extended else None


def _find(text: str, entity: str) -> re.Match | None:
    return re.search(rf"\b{re.escape(entity)}\b", text, flags=re.IGNORECASE)


def refer_back(question: str, entity: str, prefer_ellipsis: bool, plural: bool = False) -> tuple[str, str] | None:
    """``question`` with ``entity`` dropped (``"ellipsis"``) or replaced by a pronoun (``"pronoun"``); None
    where that would not read as English (the entity is part of a longer name, or follows an adjective)."""
    m = _find(question, entity)
    if m is None:
        return None
    before, after = question[: m.start()], question[m.end() :]
    if re.match(r"\s+(?:the\s+)?[A-Z]|-|\s+machines?\b", after):  # part of a longer name ("Edward the
        return None  # Confessor", "NP-complete", "Turing machines")
    rest = after.strip()
    ell = re.search(rf"\s+(?:{'|'.join(_PREPOSITIONS)})\s+(?:the\s+|an?\s+)?$", before, flags=re.IGNORECASE)
    if prefer_ellipsis and ell and rest in ("?", ""):
        out = before[: ell.start()].rstrip() + "?"
        kind = "ellipsis"
    else:
        det = re.search(r"(?:\b(?:the|an?)\s+)$", before, flags=re.IGNORECASE)
        head = before[: det.start()] if det else before
        prev = head.strip().split()[-1].lower().strip(",") if head.strip() else ""
        nxt = re.match(r"\s+([a-z]+)\b", after)
        if det and nxt and nxt.group(1) not in _PREPOSITIONS + ("and", "or", "that", "which") and prev in _COPULA:
            return None  # "What is the Norman architecture idiom?": the entity modifies a noun
        if prev and prev not in _SUBJECT_BEFORE and prev not in _PREPOSITIONS and prev != "and":
            return None  # "southern California", "a deterministic Turing machine": no pronoun fits
        if after.startswith("'s") or after.startswith("'"):
            pronoun = "their" if plural else "its"
            after = after[2:] if after.startswith("'s") else after[1:]
        else:
            pronoun = ("they" if prev in _SUBJECT_BEFORE or not prev else "them") if plural else "it"
        if not head.strip():
            pronoun = pronoun.capitalize()
        out = f"{head}{pronoun}{after}"
        kind = "pronoun"
    out = re.sub(r"\s+", " ", out).strip()
    if len(out.split()) < 3 or out.lower() == question.lower():
        return None
    return out, kind


def build_conversations(data: pathlib.Path, n: int) -> list[Conversation]:
    """Up to ``n`` two-turn conversations, one per paragraph at most, in file order (see the module doc)."""
    from ingest.squad import read_squad

    out: list[Conversation] = []
    for article in read_squad(data):
        for paragraph in article.paragraphs:
            qs = [q for q in paragraph.questions if q.answerable]
            conv = _pair(article.title, paragraph.index, qs, prefer_ellipsis=len(out) % 2 == 0)
            if conv is not None:
                out.append(conv)
    # spread over the articles: round-robin by article, file order within each
    by_title: dict[str, list[Conversation]] = {}
    for c in out:
        by_title.setdefault(c.title, []).append(c)
    spread: list[Conversation] = []
    while len(spread) < n and any(by_title.values()):
        for convs in by_title.values():
            if convs and len(spread) < n:
                spread.append(convs.pop(0))
    return spread


def _pair(title: str, index: int, qs: list[Any], prefer_ellipsis: bool) -> Conversation | None:
    for second in qs:
        for first in qs:
            if first is second or first.question.strip() == second.question.strip():
                continue
            entity = shared_entity(first.question, second.question, title)
            if entity is None:
                continue
            plural = entity in title_entities(title) and entity.endswith("s") and not entity.endswith("ss")
            made = refer_back(second.question.strip(), entity, prefer_ellipsis, plural)
            if made is None:
                continue
            followup, kind = made
            return Conversation(
                title=title,
                paragraph=index,
                entity=entity,
                kind=kind,
                first_question=first.question.strip(),
                first_answer=first.answer_texts[0],
                standalone=second.question.strip(),
                followup=followup,
            )
    return None


def hit(retrieval: Any, conv: Conversation) -> bool:
    return any(
        c.metadata.get("title") == conv.title and c.metadata.get("paragraph") == conv.paragraph
        for c in retrieval.chunks
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rag.conversation import Condenser, Turn, history_query

    data = pathlib.Path(args.data)
    convs = build_conversations(data, args.n)
    logger.info("%d conversations", len(convs))
    settings, ws, qa = common.open_pipeline(pathlib.Path(args.home).expanduser(), args.collection, data)
    cfg = settings.conversation
    condenser = Condenser(qa.generator, cfg)
    rows: list[dict[str, Any]] = []
    seconds = {m: 0.0 for m in args.methods}
    with ws.open(args.collection, readonly=True) as coll:
        for i, conv in enumerate(convs):
            history = [Turn(conv.first_question, conv.first_answer)]
            row: dict[str, Any] = {**asdict(conv), "queries": {}, "hits": {}}
            for method in args.methods:
                t0 = time.perf_counter()
                if method == "standalone":
                    query = conv.standalone
                elif method == "raw":
                    query = conv.followup
                elif method == "history":
                    query = history_query(conv.followup, history, turns=cfg.history_turns)
                else:
                    query = condenser.condense(conv.followup, history)
                retrieval = qa.retriever.retrieve(coll, query, K)
                seconds[method] += time.perf_counter() - t0
                row["queries"][method] = query
                row["hits"][method] = hit(retrieval, conv)
            rows.append(row)
            logger.info("%d/%d %s", i + 1, len(convs), row["hits"])
    n = max(len(rows), 1)
    recall = {m: sum(r["hits"][m] for r in rows) / n for m in args.methods}
    condensed_changed = sum(1 for r in rows if "condense" in r["queries"] and r["queries"]["condense"] != r["followup"])
    return {
        "data": str(data),
        "n": len(rows),
        "kinds": {k: sum(1 for r in rows if r["kind"] == k) for k in ("pronoun", "ellipsis")},
        "articles": sorted({r["title"] for r in rows}),
        "recall": recall,
        "mean_s": {m: seconds[m] / n for m in args.methods},
        "condensed_changed": condensed_changed,
        "config": cfg.model_dump(),
        "rows": rows,
    }


def render(res: dict[str, Any], argv: list[str]) -> str:
    rec = res["recall"]
    base = rec.get("standalone")
    lines = [f"Command: `{common.command_line(pathlib.Path(__file__), argv)}`  "]
    lines.append(f"Date: {common.today()} · revision {common.git_revision()}  ")
    lines.append(f"Machine: {common.machine_summary()} (shared with other jobs: times are noisy)")
    lines.append("")
    lines.append(
        f"Data: {res['n']} two-turn conversations from `{pathlib.Path(res['data']).name}` "
        f"({', '.join(res['articles'])}; {res['kinds']['pronoun']} with a pronoun, {res['kinds']['ellipsis']} with "
        "ellipsis); turn 1's answer is its gold answer. Collection: the same file ingested with the bundled "
        f"models; hybrid retrieval, k={K}. Recall@{K}: the gold paragraph among the retrieved chunks."
    )
    lines.append("")
    lines.append(f"| turn-2 query | recall@{K} | / standalone | target (>= {TARGET_RATIO}x) | mean s per query |")
    lines.append("|---|---|---|---|---|")
    labels = {
        "standalone": "standalone question (as SQuAD wrote it)",
        "raw": "follow-up as written",
        "history": f"history-aware: previous question(s) + follow-up (history_turns={res['config']['history_turns']})",
        "condense": "condensed by the generator (greedy, falls back to the follow-up)",
    }
    for m, r in rec.items():
        ratio = r / base if base else None
        target = "" if m == "standalone" else ("met" if ratio is not None and ratio >= TARGET_RATIO else "not met")
        lines.append(f"| {labels[m]} | {r:.3f} | {common.fmt(ratio, '.2f')} | {target} | {res['mean_s'][m]:.3f} |")
    lines.append("")
    if "condense" in rec:
        lines.append(
            f"The generator changed {res['condensed_changed']} of {res['n']} follow-ups (the others fell back to the "
            "follow-up as written: an echo, an answer instead of a question, or a rewrite that dropped its words)."
        )
    best = max((m for m in rec if m in ("history", "condense")), key=lambda m: rec[m], default=None)
    if best:
        lines.append(f"Better method here: **{best}** (`ConversationConfig.method`, `RAGQA_CONVERSATION__METHOD`).")
    lines.append("")
    lines.append("Samples:")
    lines.append("")
    for r in res["rows"][:4]:
        q = r["queries"]
        lines.append(
            f'- turn 1 "{r["first_question"]}" -> turn 2 "{r["followup"]}" (standalone: "{r["standalone"]}")'
            + (f'; condensed: "{q["condense"]}"' if "condense" in q else "")
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", default=os.environ.get("RAGQA_HOME", "~/.ragqa"), help="RAGQA_HOME holding the collection")
    p.add_argument("--collection", default="squad")
    p.add_argument("--data", default=str(common.SQUAD))
    p.add_argument("--n", type=int, default=60, help="conversations (at least 40 for the issue's benchmark)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--json", default=None)
    p.add_argument("--write", action="store_true", help="replace the Follow-up questions section of BENCHMARKS.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=common.LOG_FORMAT)

    res = run(args)
    common.save_json(args.json, res)
    body = render(res, argv)
    SECTION.publish(body, write=args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
