"""Generated questions: the generator writes a question for a chunk and a chosen answer span; the
question is kept only when it is well formed (one line ending in "?", no answer leak, on the chunk's
topic). The only module of :mod:`finetune.synth` that touches a model."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rag.stemming import s_stem

QuestionWriter = Callable[[str, str], str]
"""``write(context, answer) -> raw text`` of a question the context answers with ``answer``."""

QUESTION_SYSTEM = (
    "You write one exam question about a passage. The answer to your question must be exactly the given "
    "answer, copied from the passage. Reply with the question only."
)


def question_messages(context: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": QUESTION_SYSTEM},
        {
            "role": "user",
            "content": f"Passage:\n{context.strip()}\n\nAnswer: {answer}\n\n"
            f'Write one question about the passage whose answer is "{answer}".',
        },
    ]


_QUESTION_STOPWORDS = {
    "what",
    "which",
    "when",
    "where",
    "who",
    "whom",
    "whose",
    "why",
    "how",
    "many",
    "much",
    "does",
    "did",
    "have",
    "that",
    "this",
    "these",
    "those",
    "with",
    "from",
    "into",
    "about",
    "there",
    "their",
    "they",
    "them",
    "than",
    "then",
    "will",
    "would",
    "should",
    "could",
    "being",
    "been",
    "were",
    "your",
    "some",
    "most",
    "more",
    "best",
    "used",
    "using",
    "make",
    "made",
    "give",
    "given",
    "passage",
    "text",
    "according",
    "mentioned",
    "answer",
    "question",
}


def _content_words(text: str) -> set[str]:
    return {s_stem(w) for w in re.findall(r"[a-z][a-z0-9-]{3,}", text.lower()) if w not in _QUESTION_STOPWORDS}


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
        content = _content_words(q)
        if len(content & _content_words(context)) < min(2, len(content)) or not content:
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
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=generator.eos_token_ids,
                pad_token_id=tok.pad_token_id,
            )
        return generator.decode(out[0, len(ids) :].tolist())

    return write
