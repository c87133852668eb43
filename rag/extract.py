"""From the small model's reply to the answer of its style.

Short style:

A 135M instruction model, asked for "a few words copied from the context", usually replies with a
lead-in ("The answer is: X.") or by restating the question before the answer ("The border to the
south is the Mexico-United States border."), and keeps writing after the first sentence. These
functions keep the answer:

* :func:`clean_answer`: first line / first sentence, lead-ins, quotes and the final full stop removed,
  and, given the question, a restated subject before a copula ("The border to the south is ...").
* :func:`reply_complete`: True once the reply holds a whole first sentence or line, so decoding can
  stop there instead of spending tokens on text :func:`clean_answer` would drop.

Full style (a few sentences): small models loop, repeating a sentence or a long run of tokens.

* :func:`repetition_start`: where a repeated run of tokens starts;
* :func:`FullReplyStop`: the stop rule, True once the reply repeats itself (or writes a sentence the
  documents do not support);
* :func:`full_reply`: the reply's sentences, without the repetition, the sentences that repeat an
  earlier one and (when the budget cut it) the unfinished last sentence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rag.attribution import is_finished, sentence_spans
from rag.stemming import s_stem

_ANSWER_PREFIX = re.compile(
    r"^(?:(?:the\s+)?answer(?:\s+to\s+(?:this|the)\s+question)?(?:\s+is)?\s*:|the\s+answer\s+is\b|a\s*:)\s*",
    re.IGNORECASE,
)
#: a full answer's lead-in ("The answer is: X."); without the colon ("The answer is to ...") it is part of the sentence
_FULL_LEAD_IN = re.compile(
    r"^(?:(?:the\s+)?answer(?:\s+to\s+(?:this|the)\s+question)?(?:\s+is)?\s*:)\s*", re.IGNORECASE
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


REPEAT_NGRAM = 12
"""A run of this many tokens seen before in the reply counts as the model repeating itself."""

#: a line that starts a new prompt turn ("Question: ...", "Context: ..."): the answer is over
_PROMPT_ECHO = re.compile(r"(?:^|\n)\s*(?:Question|Context)\s*:", re.IGNORECASE)


def prompt_echo_start(text: str) -> int | None:
    """Char offset where ``text`` starts writing a new prompt turn (a line beginning "Question:" or
    "Context:", as the prompts do), or None."""
    match = _PROMPT_ECHO.search(text)
    return match.start() if match else None


def repetition_start(ids: Sequence[int], n: int = REPEAT_NGRAM) -> int | None:
    """Index of the first token of the earliest run of ``n`` tokens that already occurred earlier in
    ``ids`` (its second occurrence), or None when no ``n``-token run repeats."""
    seen: set[tuple[int, ...]] = set()
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i : i + n])
        if gram in seen:
            return i
        seen.add(gram)
    return None


def _sentence_key(sentence: str) -> str:
    return " ".join(_WORD.findall(sentence.lower()))


class FullReplyStop:
    """The full style's stop rule: True once the reply repeats itself, i.e. its last ``n`` tokens
    occurred before, or its last finished sentence equals (case and punctuation aside) an earlier one,
    or once it starts a new prompt turn (:func:`prompt_echo_start`), or, given ``sentence_ok``, once a
    finished sentence fails it (the sentence-support guard would leave it out, and what a small model
    writes after an unsupported sentence rarely returns to the documents: decoding it costs time for
    nothing). Eos and the token budget end decoding too, outside this rule. One rule may serve several
    rows (it keeps no per-row state; ``sentence_ok``'s verdicts are remembered per sentence text)."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        n: int = REPEAT_NGRAM,
        sentence_ok: Callable[[str], bool] | None = None,
    ) -> None:
        self.decode = decode
        self.n = n
        self.sentence_ok = sentence_ok
        self._verdicts: dict[str, bool] = {}  # sentence_ok per finished sentence (rows share this rule)

    def __call__(self, ids: list[int]) -> bool:
        n = self.n
        if len(ids) > n:
            tail = ids[-n:]
            if any(ids[i : i + n] == tail for i in range(len(ids) - n)):
                return True
        text = self.decode(ids)
        if prompt_echo_start(text) is not None:
            return True
        spans = sentence_spans(text)
        if not spans or (len(spans) < 2 and self.sentence_ok is None):
            return False
        done = spans if is_finished(text[spans[-1][0] : spans[-1][1]]) else spans[:-1]
        if self.sentence_ok is not None and any(not self._ok(text[a:b]) for a, b in done):
            return True
        if len(done) < 2:
            return False
        last = _sentence_key(text[done[-1][0] : done[-1][1]])
        return bool(last) and any(_sentence_key(text[a:b]) == last for a, b in done[:-1])

    def _ok(self, sentence: str) -> bool:
        verdict = self._verdicts.get(sentence)
        if verdict is None:
            assert self.sentence_ok is not None
            verdict = self._verdicts[sentence] = self.sentence_ok(sentence)
        return verdict


@dataclass(frozen=True)
class FullReply:
    """A full-style reply, trimmed.

    Attributes:
        text: the decoded text of ``token_ids``.
        token_ids: the kept tokens (no eos), a prefix of the generated ones.
        token_ends: ``len(token_ids)`` char offsets: ``token_ends[i]`` = length of the text of tokens ``0..i``.
        spans: char spans in ``text`` of the kept sentences.
    """

    text: str
    token_ids: list[int]
    token_ends: list[int]
    spans: list[tuple[int, int]]


def full_reply(ids: Sequence[int], decode: Callable[[list[int]], str], eos_token_ids: Sequence[int]) -> FullReply:
    """The sentences worth keeping of a full-style reply ``ids`` (generated ids, eos included if any).

    A repeated run of tokens (:func:`repetition_start`) and a new prompt turn the model started
    (:func:`prompt_echo_start`) are cut off, sentences from the first one that repeats an earlier
    sentence are dropped, and the last sentence is dropped when it is unfinished
    and the reply did not end on eos (the budget or the repetition cut it), unless it is the only one.
    """
    eos = set(eos_token_ids)
    kept = list(ids)
    ended = bool(kept) and kept[-1] in eos
    kept = [t for t in kept if t not in eos]
    cut = repetition_start(kept)
    if cut is not None:
        kept, ended = kept[:cut], False
    ends: list[int] = []
    for i in range(len(kept)):
        ends.append(max(len(decode(kept[: i + 1])), ends[-1] if ends else 0))
    text = decode(kept)
    echo = prompt_echo_start(text)
    if echo is not None:
        ended = False  # what came before the new turn may be unfinished ("... as follows:")
    spans: list[tuple[int, int]] = []
    seen: set[str] = set()
    for a, b in sentence_spans(text if echo is None else text[:echo]):
        key = _sentence_key(text[a:b])
        if key and key in seen:
            ended = False
            break
        seen.add(key)
        spans.append((a, b))
    if len(spans) > 1 and not ended and not is_finished(text[spans[-1][0] : spans[-1][1]]):
        spans.pop()
    if spans:  # "The answer is: X." -> "X."
        a, b = spans[0]
        seg = text[a:b].rstrip()
        kept_text = _FULL_LEAD_IN.sub("", seg.strip(), count=1).strip()
        if not kept_text:
            spans.pop(0)
        elif kept_text != seg.strip():
            spans[0] = (a + len(seg) - len(kept_text), b)
    return FullReply(text=text, token_ids=kept, token_ends=ends, spans=spans)


__all__ = [
    "FullReply",
    "FullReplyStop",
    "clean_answer",
    "full_reply",
    "prompt_echo_start",
    "reply_complete",
    "repetition_start",
    "strip_restatement",
]
