"""Prompts that make a small instruction model answer briefly and extractively.

The bundled 135M model answers in long sentences unless it is told *and shown* how: the
system message asks for the shortest exact phrase and one worked example precedes the question.
"""

from __future__ import annotations

from collections.abc import Sequence

ABSTAIN_TEXT = "I don't know."

SYSTEM = (
    "You answer questions using only the context. Reply with the shortest exact phrase copied "
    "from the context that answers the question: a name, a number, a date or a few words, never "
    "a full sentence. If the context does not contain the answer, reply: I don't know."
)

EXAMPLE_CONTEXT = (
    "The Eiffel Tower was built by Gustave Eiffel's company for the 1889 World's Fair in Paris. "
    "It is 330 metres tall."
)
EXAMPLE_QUESTION = "For which event was the Eiffel Tower built?"
EXAMPLE_ANSWER = "the 1889 World's Fair"


def user_message(question: str, contexts: Sequence[str]) -> str:
    blocks = "\n\n".join(c.strip() for c in contexts)
    return f"Context:\n{blocks}\n\nQuestion: {question.strip()}"


def chat_messages(question: str, contexts: Sequence[str], *, one_shot: bool = True) -> list[dict[str, str]]:
    """The chat turns for one prompt: system, optional worked example, then the question."""
    messages = [{"role": "system", "content": SYSTEM}]
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
