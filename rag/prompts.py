"""Prompts of the two answer styles (``QAConfig.answer_style``).

``short`` (:data:`SYSTEM`) makes a small instruction model answer briefly and extractively;
``full`` (:data:`FULL_SYSTEM`) asks for a complete answer of a few sentences that uses only the
context. The system message is part of every prompt's token ids, so cached prompt-prefix KV
states (:mod:`rag.prefix_cache`) of the two styles never mix.

Short style:

The bundled 135M model answers in long sentences unless it is told how: a short system message
asks for a few words copied from the context. A worked example (``one_shot``) is available but off
by default (``QAConfig.one_shot``): measured on SQuAD 2.0 (bench/qa.py), the 135M model copies the
example's answer (or its type: a year for a year) whenever it is unsure, which scored lower F1 than
zero-shot, and the example is repeated in every per-document prompt of rag-token / rag-sequence.
Zero-shot replies usually read "The answer is: X. ..." and :func:`rag.qa.clean_answer` keeps X.
"""

from __future__ import annotations

from collections.abc import Sequence

ABSTAIN_TEXT = "I don't know."

PROMPT_TEMPLATE_VERSION = 1
"""Bump on any change to how prompts are rendered: cached prompt-prefix KV states
(:mod:`rag.prefix_cache`) are keyed by it, besides the prompt's token ids."""

CONTEXT_END = "\n\nQuestion:"
"""The end of the question-independent (cacheable) part of the user message. The question follows after a
space, which a byte-level BPE pre-tokenizer always splits from the ":" (measured on the bundled tokenizer: the
two parts tokenized apart give the joint ids for all 950 public SQuAD questions), so the marker's 4 tokens are
part of every chunk's cached prefix instead of being prefilled again for every question and chunk."""

SYSTEM = (
    "Answer with a few words copied from the context. If the context does not contain the answer, reply: I don't know."
)
"""The ``short`` style's system message (extractive SQuAD-shaped answers)."""

FULL_SYSTEM = (
    "Answer the question in a few complete sentences, using only facts from the context. "
    "Explain how, and include the exact commands, names or values the context gives. "
    "If the context does not contain the answer, reply: I don't know."
)
"""The ``full`` style's system message (a complete, grounded answer)."""

SYSTEMS = {"short": SYSTEM, "full": FULL_SYSTEM}
"""Answer style -> its system message."""

EXAMPLE_CONTEXT = (
    "The Eiffel Tower was built by Gustave Eiffel's company for the 1889 World's Fair in Paris. It is 330 metres tall."
)
EXAMPLE_QUESTION = "For which event was the Eiffel Tower built?"
EXAMPLE_ANSWER = "the 1889 World's Fair"


def user_message(question: str, contexts: Sequence[str]) -> str:
    return "".join(user_message_parts(question, contexts))


def user_message_parts(question: str, contexts: Sequence[str]) -> tuple[str, str]:
    """The user message split where the question starts: ``(context part, question part)``."""
    blocks = "\n\n".join(c.strip() for c in contexts)
    return f"Context:\n{blocks}{CONTEXT_END}", f" {question.strip()}"


def system_message(style: str) -> str:
    """The system message of answer style ``style`` (``"short"`` or ``"full"``)."""
    try:
        return SYSTEMS[style]
    except KeyError:
        raise ValueError(f"unknown answer style {style!r}; use one of {', '.join(SYSTEMS)}") from None


def chat_messages(
    question: str, contexts: Sequence[str], *, one_shot: bool = True, style: str = "short"
) -> list[dict[str, str]]:
    """The chat turns for one prompt: the style's system message, optional worked example, then the question."""
    messages = [{"role": "system", "content": system_message(style)}]
    if one_shot:
        messages += [
            {"role": "user", "content": user_message(EXAMPLE_QUESTION, [EXAMPLE_CONTEXT])},
            {"role": "assistant", "content": EXAMPLE_ANSWER},
        ]
    messages.append({"role": "user", "content": user_message(question, contexts)})
    return messages


def is_abstention(text: str) -> bool:
    t = text.strip().lower().rstrip(".!")
    return t.startswith("i don't know") or t.startswith("i do not know") or t in ("unknown", "no answer", "")
