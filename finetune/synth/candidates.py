"""Answer candidates in a sentence: names (capitalised, multi-word first), dates, years and numbers
with a unit; each is an exact span the question will be asked about."""

from __future__ import annotations

import re
from dataclasses import dataclass

from finetune.synth.sentences import sentence_spans
from finetune.synth.words import AUX, FOLLOW_OK, PREPOSITIONS

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATE_RES = [
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?[ \t]+(?:{_MONTHS})[ \t]+\d{{4}}\b"),
    re.compile(rf"\b(?:{_MONTHS})[ \t]+\d{{1,2}}(?:st|nd|rd|th)?,[ \t]*\d{{4}}\b"),
    re.compile(rf"\b(?:{_MONTHS})[ \t]+\d{{4}}\b"),
]
_YEAR_RE = re.compile(r"(?<![\w.,/$#£€-])(?:1[5-9]\d\d|20\d\d)(?![\w%-]|[.,]\d)")
_SPELLED = (
    r"two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|"
    r"sixty|seventy|eighty|ninety|hundreds|thousands|dozens|(?:one|a)(?=[ \t]+(?:hundred|thousand|million|billion)\b)"
)
_NUMBER_RE = re.compile(
    r"(?<![\w.,/$#£€-])(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?i:" + _SPELLED + r"))"
    r"(?P<scale>[ \t]+(?:hundred|thousand|million|billion|trillion))?"
    r"(?:(?P<pct>[ \t]?%|[ \t]+per[ \t]?cent\b|[ \t]+percent\b)"
    r"|[ \t]+(?P<unit>(?:MB|GB|KB|TB|kB|ms|km|kg|cm|mm|GHz|MHz|kWh|px)\b"
    r"|(?:[a-z][a-z-]*[ \t]+)?(?:[a-z][a-z-]*[a-z]s|people|children|men|women)\b))"
)
_NOT_PLURAL = {
    "is",
    "was",
    "has",
    "as",
    "this",
    "its",
    "us",
    "yes",
    "thus",
    "plus",
    "less",
    "across",
    "always",
    "sometimes",
    "perhaps",
    "does",
    "unless",
    "whereas",
    "his",
    "hers",
    "ours",
    "yours",
    "theirs",
    "besides",
    "towards",
    "afterwards",
    "regardless",
    "nevertheless",
    "various",
    "previous",
    "serious",
    "famous",
    "obvious",
    "numerous",
    "continuous",
    "analysis",
    "basis",
    "process",
    "access",
    "class",
    "loss",
    "pass",
    "bus",
    "gas",
    "bias",
    "focus",
    "status",
    "corpus",
    "versus",
}
_RANGE_BEFORE = re.compile(r"(?:\d|\b(?:to|or|and|from|between))[ \t]*[-–]?[ \t]*$")

_CAP = r"[A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+|['’](?!s\b)[A-Za-z]+)*"
_CONNECTORS = {"of", "de", "von", "van", "der", "du", "la", "le", "del", "da"}
_NAME_RE = re.compile(
    rf"(?<![\w'’-]){_CAP}(?:(?:[ \t]+(?:(?:{'|'.join(sorted(_CONNECTORS))})[ \t]+)?|['’]s[ \t]+){_CAP})*(?![\w-])"
)
_SENT_STARTERS = {
    "the",
    "a",
    "an",
    "this",
    "that",
    "these",
    "those",
    "it",
    "in",
    "on",
    "at",
    "for",
    "when",
    "if",
    "but",
    "and",
    "because",
    "during",
    "after",
    "before",
    "every",
    "each",
    "its",
    "their",
    "our",
    "we",
    "you",
    "they",
    "he",
    "she",
    "i",
    "then",
    "so",
    "as",
    "with",
    "from",
    "by",
    "to",
    "of",
    "there",
    "here",
    "what",
    "which",
    "who",
    "how",
    "why",
    "where",
    "some",
    "many",
    "most",
    "all",
    "any",
    "no",
    "not",
    "one",
    "only",
    "also",
    "while",
    "although",
    "since",
    "once",
    "use",
    "set",
    "run",
    "start",
    "switch",
    "check",
    "copy",
    "stop",
    "read",
    "put",
    "avoid",
    "watch",
    "yes",
    "nothing",
    "everything",
    "pages",
    "files",
    "vectors",
    "scores",
    "results",
    "intuitively",
    "afterwards",
}
_MONTH_SET = set(_MONTHS.split("|"))

TYPE_PRIORITY = {"date": 0, "year": 0, "number": 0, "name": 0, "single_name": 1}


@dataclass
class Candidate:
    """An answer span ``[start, end)`` inside ``sentence`` (offsets into the sentence)."""

    kind: str  # date, year, number, name, single_name
    start: int
    end: int
    unit_end: int | None = None  # numbers: where the unit ends (the unit stays in the question)
    percent: bool = False


def _overlaps(a: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e in taken)


def answer_candidates(sentence: str) -> list[Candidate]:
    """Names (capitalised, multi-word first), dates, years and numbers with a unit found in ``sentence``."""
    out: list[Candidate] = []
    taken: list[tuple[int, int]] = []

    def add(c: Candidate, span: tuple[int, int]) -> None:
        if sentence[: span[0]].count("(") > sentence[: span[0]].count(")"):
            return  # inside parentheses: no clean question
        if not _overlaps(span, taken):
            out.append(c)
            taken.append(span)

    for rx in _DATE_RES:
        for m in rx.finditer(sentence):
            add(Candidate("date", m.start(), m.end()), (m.start(), m.end()))
    for m in _NUMBER_RE.finditer(sentence):
        if _RANGE_BEFORE.search(sentence[: m.start()]):
            continue
        unit = m.group("unit")
        if unit and unit.split()[-1].lower() in _NOT_PLURAL:
            continue
        if unit and len(unit.split()) == 2 and unit.split()[0] in AUX | PREPOSITIONS | FOLLOW_OK:
            continue  # "3 are ...", "10 of ..." are not units
        num_end = m.end("scale") if m.group("scale") else m.end("num")
        if m.group("pct"):
            add(Candidate("number", m.start(), m.end(), percent=True), (m.start(), m.end()))
        else:
            add(Candidate("number", m.start(), num_end, unit_end=m.end()), (m.start(), m.end()))
    for m in _YEAR_RE.finditer(sentence):
        add(Candidate("year", m.start(), m.end()), (m.start(), m.end()))
    for m in _NAME_RE.finditer(sentence):
        words = [(w.start() + m.start(), w.end() + m.start(), w.group()) for w in re.finditer(r"\S+", m.group())]
        while words and (
            (words[0][0] == 0 and words[0][2].lower() in _SENT_STARTERS)
            or words[0][2] in _MONTH_SET
            or words[0][2].lower() in _CONNECTORS
        ):
            words = words[1:]
        while words and (words[-1][2] in _MONTH_SET or words[-1][2].lower() in _CONNECTORS):
            words = words[:-1]
        if not words:
            continue
        start, end = words[0][0], words[-1][1]
        span_text = sentence[start:end]
        if sentence[:start].endswith("(") and sentence[end:].startswith(")"):
            continue  # an abbreviation spelled out just before: "Dense Passage Retrieval (DPR)"
        if len(span_text) < 2 or len(span_text) > 60 or span_text.lower() in _SENT_STARTERS:
            continue
        if len(words) >= 2:
            add(Candidate("name", start, end), (start, end))
        elif start > 0 and not re.search(r"[.:!?\"“]\s*$", sentence[:start]) and span_text not in ("I", "OK"):
            add(Candidate("single_name", start, end), (start, end))
    return sorted(out, key=lambda c: c.start)


def chunk_candidates(text: str) -> list[tuple[tuple[int, int], Candidate]]:
    """Every ``(sentence span, candidate)`` of a chunk's text."""
    return [((s, e), c) for s, e in sentence_spans(text) for c in answer_candidates(text[s:e])]
