"""Follow-up questions: turn "When was it built?" into a question that retrieval can answer alone.

A follow-up leans on the conversation before it ("it" = the Eiffel Tower of the previous turn), so
retrieving with it as written finds nothing useful. Two ways to make it standalone, chosen by
:attr:`rag.config.ConversationConfig.method`:

* ``history`` — :func:`history_query`: the previous question(s) joined in front of the follow-up. The
  retriever's BM25 half finds the entity's words, the dense half embeds the whole exchange. Pure string
  work: no model call, no failure mode.
* ``condense`` — :class:`Condenser`: the generator rewrites the follow-up with a short condense prompt
  (greedy, a small token budget). Its output is checked (:func:`accept_condensed`): an empty reply,
  one that is not a question, that drops the follow-up's own words or runs long falls back to the
  follow-up as written.

``bench/followups.py`` measures both (recall@4 on SQuAD two-turn conversations); the default is the
one that retrieved better (see BENCHMARKS.md, "Follow-up questions").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rag.config import ConversationConfig
from rag.decoding import advance, prefill
from rag.errors import InvalidInputError

logger = logging.getLogger(__name__)

METHODS = ("condense", "history")

CONDENSE_SYSTEM = (
    "Rewrite the last question so that it can be understood without the conversation: replace words "
    "such as it, they, he, she, its, their, this with what they refer to. Reply with the rewritten question only."
)

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_LEAD_IN = re.compile(r"^\s*(?:standalone|rewritten|new)?\s*(?:question)?\s*:\s*", re.IGNORECASE)
#: words a follow-up keeps when it is rewritten (the referring words are replaced, so they do not count)
_FUNCTION_WORDS = frozenset(
    "a an the of in on at to for by from with about and or is are was were be been do does did what which who "
    "whom whose when where why how it its it's they them their theirs he him his she her hers this that these "
    "those there one ones".split()
)


@dataclass(frozen=True)
class Turn:
    """One exchange of a conversation: the question as the user wrote it and the answer given."""

    question: str
    answer: str


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` without function words and referring pronouns."""
    return {w.lower() for w in _WORD.findall(text)} - _FUNCTION_WORDS


def recent(history: Sequence[Turn], max_turns: int, max_chars: int) -> list[Turn]:
    """The last ``max_turns`` turns of ``history`` whose questions and answers fit in ``max_chars``
    characters together (the most recent turn is always kept, cut to ``max_chars``)."""
    out: list[Turn] = []
    used = 0
    for turn in reversed(list(history)[-max_turns:] if max_turns > 0 else []):
        size = len(turn.question) + len(turn.answer)
        if out and used + size > max_chars:
            break
        if not out and size > max_chars:
            turn = Turn(turn.question[:max_chars], turn.answer[: max(0, max_chars - len(turn.question))])
            size = len(turn.question) + len(turn.answer)
        out.append(turn)
        used += size
    return out[::-1]


def history_query(question: str, history: Sequence[Turn], *, turns: int = 1) -> str:
    """The retrieval query of ``question`` after ``history``: the last ``turns`` previous questions,
    oldest first, then ``question`` (last, so a generator reading it ends on the question asked)."""
    question = question.strip()
    previous = [t.question.strip() for t in list(history)[-turns:] if turns > 0 and t.question.strip()]
    return " ".join([*previous, question])


def _condense_user(question: str, history: Sequence[Turn]) -> str:
    lines = []
    for t in history:
        lines.append(f"User: {t.question.strip()}")
        if t.answer.strip():
            lines.append(f"Assistant: {t.answer.strip()}")
    conversation = "\n".join(lines)
    return f"Conversation:\n{conversation}\n\nLast question: {question.strip()}\n\nRewritten question:"


#: the worked example shown before the real conversation (the 135M model follows a shown rewrite far
#: more often than an instruction alone)
EXAMPLE = (
    [Turn("Who designed the Eiffel Tower?", "Gustave Eiffel's company")],
    "When was it built?",
    "When was the Eiffel Tower built?",
)


def condense_messages(question: str, history: Sequence[Turn]) -> list[dict[str, str]]:
    """The chat turns of the condense prompt: system, the worked example, then the conversation so far
    and the question to rewrite."""
    ex_history, ex_question, ex_rewrite = EXAMPLE
    return [
        {"role": "system", "content": CONDENSE_SYSTEM},
        {"role": "user", "content": _condense_user(ex_question, ex_history)},
        {"role": "assistant", "content": ex_rewrite},
        {"role": "user", "content": _condense_user(question, history)},
    ]


def accept_condensed(output: str, question: str, *, max_chars: int | None = None) -> str | None:
    """The rewritten question in the generator's ``output``, or None when it is not usable.

    Usable: the first non-empty line, without a lead-in ("Rewritten question:") or quotes, a question
    (ends with "?"), at most ``max_chars`` characters (default: 3x the follow-up + 80), and holding
    at least half of the follow-up's own content words (a rewrite replaces the referring words; it
    must not answer, or ask something else)."""
    line = next((ln.strip() for ln in output.splitlines() if ln.strip()), "")
    line = _LEAD_IN.sub("", line).strip().strip("\"“”'`").strip()
    if "?" in line:
        line = line[: line.index("?") + 1]
    limit = max_chars if max_chars is not None else 3 * len(question) + 80
    if not line.endswith("?") or len(line) < 4 or len(line) > limit:
        return None
    own = content_words(question)
    if own and len(own & content_words(line)) < (len(own) + 1) // 2:
        return None
    return line


class Condenser:
    """Rewrites a follow-up as a standalone question with the generator (greedy, a few tokens).

    ``generator`` is a :class:`rag.generator.Generator`; its model is used under ``session()`` (so it
    waits for a batching scheduler's current step in the server)."""

    def __init__(self, generator: Any, config: ConversationConfig | None = None) -> None:
        self.generator = generator
        self.config = config or ConversationConfig()

    def prompt_ids(self, question: str, history: Sequence[Turn]) -> list[int]:
        tok = self.generator.tokenizer
        messages = condense_messages(question, history)
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok.encode(text, add_special_tokens=False))
        text = "\n\n".join(m["content"] for m in messages) + " "
        return list(tok.encode(text, add_special_tokens=True))

    def generate(self, question: str, history: Sequence[Turn]) -> str:
        """The generator's raw rewrite (greedy, at most ``condense_max_new_tokens`` tokens, first line)."""
        gen = self.generator
        ids = self.prompt_ids(question, history)
        eos = set(gen.eos_token_ids)
        newline = {i for i in gen.tokenizer.encode("\n", add_special_tokens=False)}
        out: list[int] = []
        with gen.session(None) as model:
            state = prefill(model, [ids], pad_token_id=gen.tokenizer.pad_token_id)
            for _ in range(self.config.condense_max_new_tokens):
                nxt = int(state.next_logprobs[0].argmax())
                if nxt in eos or (nxt in newline and out):
                    break
                out.append(nxt)
                if "?" in gen.decode(out):
                    break
                advance(model, state, torch.tensor([nxt]))
        return gen.decode(out)

    def condense(self, question: str, history: Sequence[Turn]) -> str:
        """``question`` rewritten to stand alone, or ``question`` itself when there is no history or the
        rewrite is not usable (:func:`accept_condensed`)."""
        cfg = self.config
        history = recent(history, cfg.max_turns, cfg.max_history_chars)
        if not history:
            return question.strip()
        raw = self.generate(question, history)
        kept = accept_condensed(raw, question)
        if kept is None:
            logger.info("condensed follow-up not usable (%r); using the question as written", raw[:200])
            return question.strip()
        return kept


def standalone_question(
    question: str,
    history: Sequence[Turn],
    *,
    config: ConversationConfig | None = None,
    generator: Any = None,
    method: str | None = None,
) -> str:
    """``question`` made standalone from ``history`` by ``method`` (default: ``config.method``):
    the text to retrieve and answer with. Without history the question is returned as it is."""
    cfg = config or ConversationConfig()
    method = method or cfg.method
    if method not in METHODS:
        raise InvalidInputError(f"unknown conversation method {method!r}; use one of {', '.join(METHODS)}")
    question = question.strip()
    turns = recent(history, cfg.max_turns, cfg.max_history_chars)
    if not turns:
        return question
    if method == "history":
        return history_query(question, turns, turns=cfg.history_turns)
    if generator is None:
        raise InvalidInputError("method 'condense' needs the generator")
    return Condenser(generator, cfg).condense(question, turns)


__all__ = [
    "METHODS",
    "Condenser",
    "Turn",
    "accept_condensed",
    "condense_messages",
    "content_words",
    "history_query",
    "recent",
    "standalone_question",
]
