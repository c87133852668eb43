"""Cloze questions: a sentence turned into a question by putting a wh-phrase where the answer was.

A year or date in a prepositional phrase moves to the front with subject-auxiliary inversion ("The
tower was finished in 1889." -> "In what year was the tower finished?"); a number with a unit becomes
"how many <unit>"; a name in subject position becomes "What/Who ..."; a possessive name becomes
"whose". When no heuristic fits, the sentence becomes a fill-in-the-blank question.
"""

from __future__ import annotations

import re

from finetune.synth.candidates import Candidate
from finetune.synth.sentences import TERMINAL
from finetune.synth.words import (
    AUX,
    DETERMINERS,
    FOLLOW_OK,
    PERSON_VERBS,
    PREPOSITIONS,
    PRONOUNS,
    SUBORDINATORS,
    TITLES,
    YEAR_PREPS,
)

_CLAUSE_BREAK = re.compile(r"[,;:]\s|\s[—–-]\s")


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
    if colon and len(sentence[left : left + colon.start()].split()) <= 4:
        left += colon.end()  # a label: "Fact verification: ..."
    right = _clause_break(sentence, end)
    first = re.match(r"\W*(\w+)", sentence[left:])
    if right is not None and sentence[right] == "," and first and first.group(1).lower() in SUBORDINATORS:
        right = _clause_break(sentence, right + 1)
    if right is None:
        body = sentence[left:].rstrip()
        t = TERMINAL.search(body)
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
    if words and words[0].lower() in DETERMINERS | PRONOUNS - {"i"}:
        words[0] = words[0].lower()
    return " ".join(words)


def _blank(sentence: str, c: Candidate) -> str | None:
    left, right = _window(sentence, c.start, c.end)
    return _from(left, sentence[left : c.start] + "___" + sentence[c.end : right])


def _invert(clause: str, wh: str) -> str | None:
    """``wh`` + auxiliary + subject + rest: ("The tower was finished", "In what year") -> "In what year
    was the tower finished"; None unless an auxiliary follows a short subject."""
    tokens = list(re.finditer(r"\S+", clause))
    for i, tok in enumerate(tokens[:9]):
        word = tok.group().lower()
        if word in AUX and i >= 1:
            subject = clause[: tok.start()].strip()
            if "," in subject or any(t.group().lower() in {"that", "which", "who"} | SUBORDINATORS for t in tokens[:i]):
                return None
            rest = clause[tok.end() :].strip()
            return f"{wh} {word} {_lower_first(subject)} {rest}" if rest else None
    return None


def _prev_allows_wh(sentence: str, start: int, left: int) -> bool:
    """A wh-word can stand in place at ``start``: clause start, or after a preposition, auxiliary,
    conjunction or past participle ("fed to BART" -> "fed to what")."""
    if start <= left:
        return True
    prev = re.sub(r"\W+$", "", _prev_word(sentence, start)).lower()
    return prev in PREPOSITIONS | AUX | {"and", "or", "than", "nor"} or (prev.endswith("ed") and len(prev) > 3)


def _year_question(sentence: str, c: Candidate) -> str | None:
    left, right = _window(sentence, c.start, c.end)
    before = sentence[: c.start].rstrip()
    prep = _prev_word(sentence, c.start)
    if prep.lower() in YEAR_PREPS and before.endswith(prep):
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
        if pp_start == left and re.match(r",\s", sentence[c.end :]):  # "In 2016, the index was ..."
            nxt = _clause_break(sentence, c.end + 1)
            if nxt is None:
                body = sentence.rstrip()
                t = TERMINAL.search(body)
                nxt = t.start() if t else len(body)
            right = nxt
        head, tail = sentence[left:pp_start], sentence[c.end : right]
        if wh is not None:
            clause = (head.rstrip(" ,") + " " + tail.lstrip(" ,")).strip()
            inverted = _invert(clause, wh)
            if inverted:
                return _finish(inverted)
        if pp_start > left:
            if c.kind == "date" and p in ("in", "during", "around"):
                return _from(left, sentence[left:pp_start] + "when" + sentence[c.end : right])
            what = "what year" if c.kind == "year" else "what date"
            return _from(left, sentence[left : c.start] + what + sentence[c.end : right])
        return None
    if c.start == left:
        return _finish(("What year" if c.kind == "year" else "What date") + sentence[c.end : right])
    return None


def _number_question(sentence: str, c: Candidate) -> str | None:
    left, right = _window(sentence, c.start, c.unit_end or c.end)
    if _prev_word(sentence, c.start).lower() in DETERMINERS:
        return None  # "the two halves": blank form
    if c.percent:
        if not _prev_allows_wh(sentence, c.start, left):
            return None
        return _from(left, sentence[left : c.start] + "what percentage" + sentence[c.end : right])
    unit_end = c.unit_end or c.end
    unit = sentence[c.end : unit_end]
    if c.start == left:
        return _finish("How many" + unit + sentence[unit_end:right])
    return _from(left, sentence[left : c.start] + "how many" + unit + sentence[unit_end:right])


def _name_question(sentence: str, c: Candidate) -> str | None:
    start, end = c.start, c.end
    prev = re.sub(r"\W+$", "", _prev_word(sentence, start))
    following = _next_words(sentence, end, 1)
    person = (
        prev.lower() in TITLES
        or sentence[end:].lstrip().startswith("et al")
        or sentence[start:end].split()[0].lower().rstrip(".") in TITLES
        or (c.kind == "name" and bool(following) and following[0].lower().strip(",.") in PERSON_VERBS)
    )
    if prev.lower() in TITLES or prev.lower() == "the":  # "Dr. Smith", "the Eiffel Tower" -> who / what
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
        if not (bare.lower() in FOLLOW_OK or bare.endswith("ed")):
            return None  # the name modifies a noun ("the FAISS index"): blank form
    wh = "whose" if possessive else ("who" if person else "what")
    if wh == "who" and prev.lower() in PREPOSITIONS:
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
