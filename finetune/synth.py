"""Synthetic question/answer pairs from a collection's own chunks, for users who have no training data.

Two methods, both answer with an exact span of the chunk (names, dates/years, numbers with a unit):

- ``cloze`` (default, fast, no LLM): a sentence of the chunk is turned into a question by putting a
  wh-phrase where the answer was. A year or date in a prepositional phrase moves to the front with
  subject-auxiliary inversion ("The tower was finished in 1889." -> "In what year was the tower
  finished?"); a number with a unit becomes "how many <unit>"; a name in subject position becomes
  "What/Who ..."; a possessive name becomes "whose". When no heuristic fits, the sentence becomes a
  fill-in-the-blank question ("The index holds about ___ passages?").
- ``generate``: the generator writes a question for the chunk and a chosen answer span; the question
  is kept only when it is well formed (one line ending in "?", no answer leak, on the chunk's topic:
  it shares content words with the chunk) and the answer is a span of the chunk.

Each pair is written in the SFT format of :mod:`finetune.data` — ``{"question", "answer",
"contexts": [chunk text]}`` — plus the metadata fields ``source``, ``chunk_id`` and ``method``.
Everything here is pure except :func:`generator_question_writer`, which wraps a
:class:`rag.generator.Generator`; the command line lives in :mod:`api.cli_finetune`.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm import tqdm

logger = logging.getLogger(__name__)

METHODS = ("cloze", "generate", "both")

QuestionWriter = Callable[[str, str], str]
"""``write(context, answer) -> raw text`` of a question the context answers with ``answer``."""


class SynthError(ValueError):
    """Synthetic data cannot be built as asked (bad method, no generator, nothing usable in the chunks)."""


class ChunkLike(Protocol):
    """What :func:`synthesize` reads from a chunk (``ingest.store.ChunkRow`` fits)."""

    chunk_id: str
    text: str
    metadata: Mapping[str, Any]


# -- sentences ------------------------------------------------------------------------------
_BULLET = re.compile(r"^[ \t]*(?:[-*•+]|\d{1,2}[.)])[ \t]+")
_MD_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]")
_SENT_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")
_TERMINAL = re.compile(r"[.!?][\"'”’)\]]*$")
_ABBREVIATIONS = {"e.g", "i.e", "al", "etc", "vs", "cf", "dr", "mr", "mrs", "ms", "prof", "st", "fig", "approx", "jr", "sr"}
_BAD_SENTENCE = re.compile(r"`|https?://|www\.|[{}<>=\\]|\|")


def _is_heading_line(stripped: str, next_line: str | None) -> bool:
    """A short line (up to six words) without closing punctuation, followed by more text."""
    if not next_line or not next_line.strip() or len(stripped.split()) > 6:
        return False
    return stripped[-1] not in ".!?:;,\"”’)"


def _segments(text: str) -> list[tuple[int, int]]:
    """Runs of prose in ``text`` as ``(start, end)`` offsets: paragraphs and list items, without
    headings, code fences and table rows."""
    out: list[tuple[int, int]] = []
    lines = text.splitlines(keepends=True)
    cur: list[int] | None = None
    in_fence = False
    pos = 0

    def flush() -> None:
        nonlocal cur
        if cur is not None and cur[1] > cur[0]:
            out.append((cur[0], cur[1]))
        cur = None

    for i, line in enumerate(lines):
        start = pos
        pos += len(line)
        body = line.rstrip("\r\n")
        stripped = body.strip()
        end = start + len(body.rstrip())
        if stripped.startswith("```"):
            in_fence = not in_fence
            flush()
            continue
        next_line = lines[i + 1] if i + 1 < len(lines) else None
        if (in_fence or not stripped or _MD_HEADING.match(body) or stripped.startswith("|")
                or (cur is None and _is_heading_line(stripped, next_line))):
            flush()
            continue
        bullet = _BULLET.match(body)
        if bullet:
            flush()
            cur = [start + bullet.end(), end]
            continue
        if cur is None:
            cur = [start + len(body) - len(body.lstrip()), end]
        else:
            cur[1] = end
    flush()
    return out


def sentence_spans(text: str, *, min_words: int = 5, max_words: int = 60) -> list[tuple[int, int]]:
    """Prose sentences of ``text`` as ``(start, end)`` offsets, ending with ``.``, ``!`` or ``?``.

    A paragraph's first sentence must start with a capital or a digit (a chunk may begin mid-sentence);
    later ones may start lower-case ("ragqa stores ..."). Headings, code, tables, URLs and fragments are
    left out.
    """
    found: list[tuple[int, int, bool]] = []  # (start, end, starts a paragraph)
    for seg_start, seg_end in _segments(text):
        seg = text[seg_start:seg_end]
        begin = 0
        for m in _SENT_END.finditer(seg):
            if m.group()[0] == ".":
                before = re.search(r"([A-Za-z][A-Za-z.]*)$", seg[begin:m.start()])
                word = before.group(1).lower() if before else ""
                if word in _ABBREVIATIONS or (before and len(before.group(1)) == 1 and before.group(1).isupper()):
                    continue
            found.append((seg_start + begin, seg_start + m.end(), begin == 0))
            begin = m.end()
        if begin < len(seg):
            found.append((seg_start + begin, seg_end, begin == 0))
    out = []
    for s, e, first in found:
        raw = text[s:e]
        s += len(raw) - len(raw.lstrip())
        raw = raw.strip()
        e = s + len(raw)
        if not raw or not _TERMINAL.search(raw) or not (raw[0].isalnum() and (raw[0].isupper() or raw[0].isdigit() or not first)):
            continue
        n_words = len(raw.split())
        letters = sum(ch.isalpha() or ch.isspace() for ch in raw)
        if not (min_words <= n_words <= max_words) or letters < 0.8 * len(raw) or _BAD_SENTENCE.search(raw):
            continue
        out.append((s, e))
    return out


# -- answer candidates ------------------------------------------------------------------------
_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December")
_DATE_RES = [
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?[ \t]+(?:{_MONTHS})[ \t]+\d{{4}}\b"),
    re.compile(rf"\b(?:{_MONTHS})[ \t]+\d{{1,2}}(?:st|nd|rd|th)?,[ \t]*\d{{4}}\b"),
    re.compile(rf"\b(?:{_MONTHS})[ \t]+\d{{4}}\b"),
]
_YEAR_RE = re.compile(r"(?<![\w.,/$#£€-])(?:1[5-9]\d\d|20\d\d)(?![\w%-]|[.,]\d)")
_SPELLED = (r"two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|"
            r"sixty|seventy|eighty|ninety|hundreds|thousands|dozens|(?:one|a)(?=[ \t]+(?:hundred|thousand|million|billion)\b)")
_NUMBER_RE = re.compile(
    r"(?<![\w.,/$#£€-])(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?i:" + _SPELLED + r"))"
    r"(?P<scale>[ \t]+(?:hundred|thousand|million|billion|trillion))?"
    r"(?:(?P<pct>[ \t]?%|[ \t]+per[ \t]?cent\b|[ \t]+percent\b)"
    r"|[ \t]+(?P<unit>(?:MB|GB|KB|TB|kB|ms|km|kg|cm|mm|GHz|MHz|kWh|px)\b"
    r"|(?:[a-z][a-z-]*[ \t]+)?(?:[a-z][a-z-]*[a-z]s|people|children|men|women)\b))"
)
_NOT_PLURAL = {"is", "was", "has", "as", "this", "its", "us", "yes", "thus", "plus", "less", "across", "always",
               "sometimes", "perhaps", "does", "unless", "whereas", "his", "hers", "ours", "yours", "theirs",
               "besides", "towards", "afterwards", "regardless", "nevertheless", "various", "previous",
               "serious", "famous", "obvious", "numerous", "continuous", "analysis", "basis", "process",
               "access", "class", "loss", "pass", "bus", "gas", "bias", "focus", "status", "corpus", "versus"}
_RANGE_BEFORE = re.compile(r"(?:\d|\b(?:to|or|and|from|between))[ \t]*[-–]?[ \t]*$")

_CAP = r"[A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+|['’](?!s\b)[A-Za-z]+)*"
_CONNECTORS = {"of", "de", "von", "van", "der", "du", "la", "le", "del", "da"}
_NAME_RE = re.compile(
    rf"(?<![\w'’-]){_CAP}(?:(?:[ \t]+(?:(?:{'|'.join(sorted(_CONNECTORS))})[ \t]+)?|['’]s[ \t]+){_CAP})*(?![\w-])"
)
_SENT_STARTERS = {
    "the", "a", "an", "this", "that", "these", "those", "it", "in", "on", "at", "for", "when", "if", "but", "and",
    "because", "during", "after", "before", "every", "each", "its", "their", "our", "we", "you", "they", "he", "she",
    "i", "then", "so", "as", "with", "from", "by", "to", "of", "there", "here", "what", "which", "who", "how", "why",
    "where", "some", "many", "most", "all", "any", "no", "not", "one", "only", "also", "while", "although", "since",
    "once", "use", "set", "run", "start", "switch", "check", "copy", "stop", "read", "put", "avoid", "watch", "yes",
    "nothing", "everything", "pages", "files", "vectors", "scores", "results", "intuitively", "afterwards",
}
_MONTH_SET = set(_MONTHS.split("|"))
_PERSON_VERBS = {"said", "says", "wrote", "writes", "won", "wins", "founded", "invented", "discovered", "proposed",
                 "argued", "became", "died", "married", "painted", "composed", "directed", "led", "ruled", "born",
                 "believed", "thought", "claimed", "designed", "introduced", "published"}
_TITLES = {"mr", "mrs", "ms", "dr", "prof", "professor", "sir", "president", "king", "queen", "saint", "st", "lord", "lady",
           "emperor", "empress", "pope", "prince", "princess", "duke", "general", "senator", "chancellor", "minister"}
_AUX = {"is", "are", "was", "were", "has", "have", "had", "can", "could", "will", "would", "should", "may", "might",
        "must", "does", "do", "did", "shall"}
_PREPOSITIONS = {"of", "in", "on", "at", "to", "for", "with", "by", "from", "into", "onto", "over", "under", "about",
                 "than", "as", "via", "per", "after", "before", "during", "since", "until", "between", "through",
                 "against", "without", "within", "like", "near", "across", "among", "toward", "towards", "upon"}
_FOLLOW_OK = _AUX | _PREPOSITIONS | {"and", "or", "but", "that", "which", "who", "whose", "when", "where", "not",
                                     "also", "then", "so", "if", "because", "while"}
_DETERMINERS = {"the", "a", "an", "this", "that", "these", "those", "its", "their", "his", "her", "our", "your",
                "every", "each", "some", "many", "most", "all", "any", "no", "one", "both", "such"}
_YEAR_PREPS = {"in", "on", "since", "by", "until", "till", "during", "before", "after", "around", "from"}

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
        if sentence[:span[0]].count("(") > sentence[:span[0]].count(")"):
            return  # inside parentheses: no clean question
        if not _overlaps(span, taken):
            out.append(c)
            taken.append(span)

    for rx in _DATE_RES:
        for m in rx.finditer(sentence):
            add(Candidate("date", m.start(), m.end()), (m.start(), m.end()))
    for m in _NUMBER_RE.finditer(sentence):
        if _RANGE_BEFORE.search(sentence[:m.start()]):
            continue
        unit = m.group("unit")
        if unit and unit.split()[-1].lower() in _NOT_PLURAL:
            continue
        if unit and len(unit.split()) == 2 and unit.split()[0] in _AUX | _PREPOSITIONS | _FOLLOW_OK:
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
        while words and ((words[0][0] == 0 and words[0][2].lower() in _SENT_STARTERS) or words[0][2] in _MONTH_SET
                         or words[0][2].lower() in _CONNECTORS):
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


# -- questions --------------------------------------------------------------------------------
_SUBORDINATORS = {"when", "if", "because", "although", "though", "while", "since", "as", "unless", "after", "before",
                  "once", "whenever", "whereas"}
_CLAUSE_BREAK = re.compile(r"[,;:]\s|\s[—–-]\s")
_PRONOUNS = {"it", "they", "we", "you", "he", "she", "i"}


def _prev_word(text: str, pos: int) -> str:
    m = re.search(r"(\S+)\s*$", text[:pos])
    return m.group(1) if m else ""


def _next_words(text: str, pos: int, n: int = 2) -> list[str]:
    return re.findall(r"\S+", text[pos:])[:n]


def _clause_break(sentence: str, pos: int) -> int | None:
    """The first clause break (``, ; : —``) at or after ``pos`` outside parentheses."""
    depth = 0
    for i in range(pos, len(sentence)):
        ch = sentence[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        elif depth == 0 and _CLAUSE_BREAK.match(sentence, i):
            return i
    return None


def _window(sentence: str, start: int, end: int) -> tuple[int, int]:
    """The clause around ``[start, end)``: from the last ``;`` (or a short label's ``:``) before it to
    the first clause break after it; a leading subordinate clause ("When X, ...") keeps its main clause."""
    left = 0
    for m in re.finditer(r";\s+", sentence[:start]):
        left = m.end()
    colon = re.search(r":\s+", sentence[left:start])
    if colon and len(sentence[left:left + colon.start()].split()) <= 4:
        left += colon.end()  # a label: "Fact verification: ..."
    right = _clause_break(sentence, end)
    first = re.match(r"\W*(\w+)", sentence[left:])
    if right is not None and sentence[right] == "," and first and first.group(1).lower() in _SUBORDINATORS:
        right = _clause_break(sentence, right + 1)
    if right is None:
        body = sentence[left:].rstrip()
        t = _TERMINAL.search(body)
        right = left + (t.start() if t else len(body))
    return left, max(right, end)


def _finish(question: str, capitalise: bool = True) -> str | None:
    """Whitespace normalised, parentheticals dropped, one "?" at the end; None when under 4 words."""
    q = re.sub(r"\s*\([^()]*\)", "", question)
    q = " ".join(q.split())
    q = re.sub(r"\s+([,;:?])", r"\1", q).rstrip(" .!?:;,—–-")
    if len(q.split()) < 4 or q.count("(") != q.count(")"):
        return None
    if capitalise:
        q = q[0].upper() + q[1:]
    return q + "?"


def _from(left: int, text: str) -> str | None:
    """Finish ``text``, which starts at offset ``left`` of its sentence: capitalised when it starts
    mid-sentence, as written when it starts the sentence (a name like "ragqa" keeps its case)."""
    return _finish(text, capitalise=left > 0)


def _lower_first(phrase: str) -> str:
    """Lower-case a leading determiner or pronoun ("The index" -> "the index"); names keep their capital."""
    words = phrase.split(" ", 1)
    if words and words[0].lower() in _DETERMINERS | _PRONOUNS - {"i"}:
        words[0] = words[0].lower()
    return " ".join(words)


def _blank(sentence: str, c: Candidate) -> str | None:
    left, right = _window(sentence, c.start, c.end)
    return _from(left, sentence[left:c.start] + "___" + sentence[c.end:right])


def _invert(clause: str, wh: str) -> str | None:
    """``wh`` + auxiliary + subject + rest: ("The tower was finished", "In what year") -> "In what year
    was the tower finished"; None unless an auxiliary follows a short subject."""
    tokens = list(re.finditer(r"\S+", clause))
    for i, tok in enumerate(tokens[:9]):
        word = tok.group().lower()
        if word in _AUX and i >= 1:
            subject = clause[:tok.start()].strip()
            if "," in subject or any(t.group().lower() in {"that", "which", "who"} | _SUBORDINATORS for t in tokens[:i]):
                return None
            rest = clause[tok.end():].strip()
            return f"{wh} {word} {_lower_first(subject)} {rest}" if rest else None
    return None


def _prev_allows_wh(sentence: str, start: int, left: int) -> bool:
    """A wh-word can stand in place at ``start``: clause start, or after a preposition, auxiliary,
    conjunction or past participle ("fed to BART" -> "fed to what")."""
    if start <= left:
        return True
    prev = re.sub(r"\W+$", "", _prev_word(sentence, start)).lower()
    return prev in _PREPOSITIONS | _AUX | {"and", "or", "than", "nor"} or (prev.endswith("ed") and len(prev) > 3)


def _year_question(sentence: str, c: Candidate) -> str | None:
    left, right = _window(sentence, c.start, c.end)
    before = sentence[:c.start].rstrip()
    prep = _prev_word(sentence, c.start)
    if prep.lower() in _YEAR_PREPS and before.endswith(prep):
        pp_start = max(len(before) - len(prep), left)
        p = prep.lower()
        if p == "in" and c.kind == "year":
            wh = "In what year"
        elif p in ("in", "on", "during", "around"):
            wh = "When"
        elif p in ("since", "until", "till", "by"):
            wh = f"{p.capitalize()} when"
        else:
            wh = None
        if pp_start == left and re.match(r",\s", sentence[c.end:]):  # "In 2016, the index was ..."
            nxt = _clause_break(sentence, c.end + 1)
            if nxt is None:
                body = sentence.rstrip()
                t = _TERMINAL.search(body)
                nxt = t.start() if t else len(body)
            right = nxt
        head, tail = sentence[left:pp_start], sentence[c.end:right]
        if wh is not None:
            clause = (head.rstrip(" ,") + " " + tail.lstrip(" ,")).strip()
            inverted = _invert(clause, wh)
            if inverted:
                return _finish(inverted)
        if pp_start > left:
            if c.kind == "date" and p in ("in", "during", "around"):
                return _from(left, sentence[left:pp_start] + "when" + sentence[c.end:right])
            what = "what year" if c.kind == "year" else "what date"
            return _from(left, sentence[left:c.start] + what + sentence[c.end:right])
        return None
    if c.start == left:
        return _finish(("What year" if c.kind == "year" else "What date") + sentence[c.end:right])
    return None


def _number_question(sentence: str, c: Candidate) -> str | None:
    left, right = _window(sentence, c.start, c.unit_end or c.end)
    if _prev_word(sentence, c.start).lower() in _DETERMINERS:
        return None  # "the two halves": blank form
    if c.percent:
        if not _prev_allows_wh(sentence, c.start, left):
            return None
        return _from(left, sentence[left:c.start] + "what percentage" + sentence[c.end:right])
    unit_end = c.unit_end or c.end
    unit = sentence[c.end:unit_end]
    if c.start == left:
        return _finish("How many" + unit + sentence[unit_end:right])
    return _from(left, sentence[left:c.start] + "how many" + unit + sentence[unit_end:right])


def _name_question(sentence: str, c: Candidate) -> str | None:
    start, end = c.start, c.end
    prev = re.sub(r"\W+$", "", _prev_word(sentence, start))
    following = _next_words(sentence, end, 1)
    person = (prev.lower() in _TITLES or sentence[end:].lstrip().startswith("et al")
              or sentence[start:end].split()[0].lower().rstrip(".") in _TITLES
              or (c.kind == "name" and bool(following) and following[0].lower().strip(",.") in _PERSON_VERBS))
    if prev.lower() in _TITLES or prev.lower() == "the":  # "Dr. Smith", "the Eiffel Tower" -> who / what
        start = len(sentence[:start].rstrip()) - len(_prev_word(sentence, start))
        prev = re.sub(r"\W+$", "", _prev_word(sentence, start))
    possessive = re.match(r"['’]s\b", sentence[end:])
    repl_end = end + (possessive.end() if possessive else 0)
    left, right = _window(sentence, start, repl_end)
    if start < left or not _prev_allows_wh(sentence, start, left):
        return None
    nxt = _next_words(sentence, repl_end)
    if nxt and nxt[0] in ("and", "or") and len(nxt) > 1 and nxt[1][:1].isupper():
        return None  # one of coordinated names ("the RAG-Token or RAG-Sequence style"): blank form
    if not possessive and nxt and nxt[0][:1].isalpha() and start > left:
        bare = re.sub(r"[^\w'-]+$", "", nxt[0])
        if not (bare.lower() in _FOLLOW_OK or bare.endswith("ed")):
            return None  # the name modifies a noun ("the FAISS index"): blank form
    wh = "whose" if possessive else ("who" if person else "what")
    if wh == "who" and prev.lower() in _PREPOSITIONS:
        wh = "whom"  # "ordered by whom"
    if start == left:
        return _finish(wh.capitalize() + sentence[repl_end:right])
    return _from(left, sentence[left:start] + wh + sentence[repl_end:right])


def cloze_question(sentence: str, candidate: Candidate) -> tuple[str, str] | None:
    """A question for ``candidate`` in ``sentence``: ``(question, form)`` with form ``wh`` or ``blank``;
    None when neither fits (the clause is too short)."""
    if candidate.kind in ("year", "date"):
        q = _year_question(sentence, candidate)
    elif candidate.kind == "number":
        q = _number_question(sentence, candidate)
    else:
        q = _name_question(sentence, candidate)
    if q:
        return q, "wh"
    q = _blank(sentence, candidate)
    return (q, "blank") if q else None


# -- generated questions ----------------------------------------------------------------------
QUESTION_SYSTEM = (
    "You write one exam question about a passage. The answer to your question must be exactly the given "
    "answer, copied from the passage. Reply with the question only."
)


def question_messages(context: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": QUESTION_SYSTEM},
        {"role": "user", "content": f"Passage:\n{context.strip()}\n\nAnswer: {answer}\n\n"
                                    f"Write one question about the passage whose answer is \"{answer}\"."},
    ]


_QUESTION_STOPWORDS = {
    "what", "which", "when", "where", "who", "whom", "whose", "why", "how", "many", "much", "does", "did", "have",
    "that", "this", "these", "those", "with", "from", "into", "about", "there", "their", "they", "them", "than",
    "then", "will", "would", "should", "could", "being", "been", "were", "your", "some", "most", "more", "best",
    "used", "using", "make", "made", "give", "given", "passage", "text", "according", "mentioned", "answer", "question",
}


def _content_words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.findall(r"[a-z][a-z0-9-]{3,}", text.lower()) if w not in _QUESTION_STOPWORDS}


def clean_generated_question(text: str, answer: str, context: str | None = None) -> str | None:
    """The first line of a model's reply as a question, or None when it is not a well-formed one:
    it must end in "?", have 4-40 words, start with a capital letter, be mostly letters and not
    contain the answer itself; with ``context``, at least two of its content words (one for a short
    question) must occur in the context, which drops questions about something else."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    q = re.sub(r"^(?:question\s*\d*\s*[:.-]|q\s*[:.-])\s*", "", lines[0], flags=re.IGNORECASE).strip().strip("\"“”'`*")
    if "?" not in q:
        return None
    q = q[: q.index("?") + 1].strip()
    words = q.split()
    if not (4 <= len(words) <= 40) or not q[0].isupper():
        return None
    letters = sum(ch.isalpha() or ch.isspace() for ch in q)
    if letters < 0.75 * len(q) or answer.lower() in q.lower():
        return None
    if context is not None:
        words = _content_words(q)
        if len(words & _content_words(context)) < min(2, len(words)) or not words:
            return None
    return q


def generator_question_writer(generator: Any, *, max_new_tokens: int = 48) -> QuestionWriter:
    """A :data:`QuestionWriter` on a :class:`rag.generator.Generator` (greedy, chat template when the
    tokenizer has one, the base model without adapters)."""
    import torch

    def write(context: str, answer: str) -> str:
        tok = generator.tokenizer
        messages = question_messages(context, answer)
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            ids = tok.encode("\n\n".join(m["content"] for m in messages) + "\n\nQuestion:")
        with generator.session() as model, torch.no_grad():
            input_ids = torch.tensor([ids], device=generator.device)
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=generator.eos_token_ids, pad_token_id=tok.pad_token_id,
            )
        return generator.decode(out[0, len(ids):].tolist())

    return write


# -- the whole run ----------------------------------------------------------------------------
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
        return {"question": self.question, "answer": self.answer, "contexts": [self.context],
                "source": self.source, "chunk_id": self.chunk_id, "method": self.method}


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


def chunk_candidates(text: str) -> list[tuple[tuple[int, int], Candidate]]:
    """Every ``(sentence span, candidate)`` of a chunk's text."""
    return [((s, e), c) for s, e in sentence_spans(text) for c in answer_candidates(text[s:e])]


def _plan(chunks: list[ChunkLike], rng: random.Random, per_chunk: int, report: SynthReport,
          progress: bool = False) -> list[tuple[ChunkLike, tuple[int, int], Candidate]]:
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
        firsts, rest = [], []
        for span, cand in sorted(found, key=lambda sc: TYPE_PRIORITY[sc[1].kind]):
            (rest if span in seen else firsts).append((span, cand))
            seen.add(span)
        per.append([(chunk, span, cand) for span, cand in (firsts + rest)[:per_chunk]])
    rng.shuffle(per)
    plan = []
    for i in range(per_chunk):
        plan += [items[i] for items in per if i < len(items)]
    return plan


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
    if method not in METHODS:
        raise SynthError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method in ("generate", "both") and write_question is None:
        raise SynthError(f"method {method!r} needs a generator to write the questions")
    if n is not None and n < 1:
        raise SynthError("n must be at least 1")
    if per_chunk < 1:
        raise SynthError("per_chunk must be at least 1")
    t0 = time.perf_counter()
    report = SynthReport(per_method={m: 0 for m in ("cloze", "generate") if method in (m, "both")})
    items = sorted(chunks, key=lambda c: c.chunk_id)
    report.chunks_total = len(items)
    rng = random.Random(seed)
    plan = _plan(items, rng, per_chunk, report, progress)
    methods = ["cloze", "generate"] if method == "both" else [method]
    if max_attempts is None:
        max_attempts = 4 * n if n is not None else len(plan)

    pairs: list[SynthPair] = []
    seen: set[str] = set()
    total = n if n is not None else len(plan) * len(methods)
    bar = tqdm(total=total, desc=f"synth ({method})", unit="pair", disable=not progress)
    try:
        for chunk, (s, e), cand in plan:
            if n is not None and len(pairs) >= n:
                break
            sentence = chunk.text[s:e]
            answer = sentence[cand.start:cand.end]
            if not answer.strip() or "\n" in answer or answer not in chunk.text:
                continue
            for m in methods:
                if n is not None and len(pairs) >= n:
                    break
                if m == "cloze":
                    made = cloze_question(sentence, cand)
                    if made is None:
                        continue
                    question, form = made
                    if answer in question.replace("___", ""):
                        continue
                else:
                    if report.generate_attempts >= max_attempts:
                        continue
                    report.generate_attempts += 1
                    try:
                        raw = write_question(chunk.text, answer)  # type: ignore[misc]
                    except Exception as exc:  # one failed generation must not lose the run
                        logger.warning("question generation failed for chunk %s: %s", chunk.chunk_id, exc)
                        raw = ""
                    question = clean_generated_question(raw, answer, chunk.text) or ""
                    form = "llm"
                    if not question:
                        report.generate_rejected += 1
                        logger.debug("rejected generated question %r for answer %r", raw, answer)
                        continue
                key = _norm_key(question)
                if key in seen:
                    report.duplicates += 1
                    continue
                seen.add(key)
                pairs.append(SynthPair(question, answer, chunk.text, chunk.chunk_id,
                                       str(chunk.metadata.get("source", "")), m, cand.kind, form))
                report.per_method[m] = report.per_method.get(m, 0) + 1
                report.per_kind[cand.kind] = report.per_kind.get(cand.kind, 0) + 1
                report.per_form[form] = report.per_form.get(form, 0) + 1
                bar.update(1)
    finally:
        bar.close()
    report.pairs = len(pairs)
    report.chunks_used = len({p.chunk_id for p in pairs})
    report.seconds = time.perf_counter() - t0
    logger.info("synthesised %d pairs from %d of %d chunks", report.pairs, report.chunks_used, report.chunks_total)
    return SynthResult(pairs, report)
