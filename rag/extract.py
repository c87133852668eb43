"""From the small model's reply to a short answer.

A 135M instruction model, asked for "a few words copied from the context", usually replies with a
lead-in ("The answer is: X.") or by restating the question before the answer ("The border to the
south is the Mexico-United States border."), and keeps writing after the first sentence. These
functions keep the answer:

* :func:`clean_answer`: first line / first sentence, lead-ins, quotes and the final full stop removed,
  and, given the question, a restated subject before a copula ("The border to the south is ...").
* :func:`reply_complete`: True once the reply holds a whole first sentence or line, so decoding can
  stop there instead of spending tokens on text :func:`clean_answer` would drop.
"""

from __future__ import annotations

import re

from rag.stemming import s_stem

_ANSWER_PREFIX = re.compile(
    r"^(?:(?:the\s+)?answer(?:\s+to\s+(?:this|the)\s+question)?(?:\s+is)?\s*:|the\s+answer\s+is\b|a\s*:)\s*",
    re.IGNORECASE,
)
#: the end of a first sentence: a full stop after a lower-case letter, digit or closing mark, then a capital
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\"'”\]])\.\s+(?=[A-Z])")
_COPULA = re.compile(r"\s(?:is|was|are|were)(?:\s+called)?\s", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_FUNCTION_WORDS = frozenset(
    "a an the of in on at to for from by with and or its their his her this that these those which who".split()
)


def _content_words(text: str) -> list[str]:
    return [w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in _FUNCTION_WORDS]


def strip_restatement(text: str, question: str) -> str:
    """``text`` without a leading restatement of the question: when every content word before the
    first copula (is / was / are / were [called]) occurs in ``question`` (plurals folded by
    :func:`rag.stemming.s_stem`), keep what follows it."""
    match = _COPULA.search(text)
    if match is None:
        return text
    subject, rest = text[: match.start()], text[match.end() :].strip()
    words = _content_words(subject)
    asked = {s_stem(w) for w in _content_words(question)}
    if not rest or not words or any(s_stem(w) not in asked for w in words):
        return text
    return rest


def _strip_lead_in(line: str) -> str:
    line = line.strip()
    for _ in range(3):  # "The answer is: The answer is: X"
        line, n = _ANSWER_PREFIX.subn("", line, count=1)
        if not n:
            break
    return line.strip()


def clean_answer(text: str, question: str | None = None) -> str:
    """The first sentence of the model's reply (its first line with something after a lead-in such
    as "The answer is:"), without a restated question (when ``question`` is given), wrapping
    quotes/brackets or a trailing full stop."""
    text = next((kept for line in text.split("\n") if (kept := _strip_lead_in(line))), "")
    text = _SENTENCE_END.split(text, maxsplit=1)[0]
    if question:
        text = strip_restatement(text, question)
    for _ in range(2):
        if text.endswith(".") and not re.search(r"(^|[\s.])[A-Z]\.$", text):
            text = text[:-1].rstrip()
        text = text.strip().strip("\"“”'`").strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1].strip()
    return text


def reply_complete(text: str) -> bool:
    """True when ``text`` (the reply so far) already holds everything :func:`clean_answer` keeps:
    a finished line with an answer in it, or the end of that line's first sentence."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        kept = _strip_lead_in(line)
        if kept:
            return i < len(lines) - 1 or _SENTENCE_END.search(kept) is not None
    return False


__all__ = ["clean_answer", "reply_complete", "strip_restatement"]
