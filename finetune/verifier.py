"""The verifiable reward: token F1 of an answer against the gold answer, scored as the benchmark scores it.

:func:`answer_f1` is what :func:`rag.evaluate.compute_metrics` gives one question: SQuAD token F1 against
the gold answer (:func:`rag.evaluate.f1_score`), 0 for an abstention on an answerable question, and for an
unanswerable question (gold = :data:`rag.prompts.ABSTAIN_TEXT`) 1 for abstaining, 0 for answering.
On-policy preference pairs (:mod:`finetune.prefs`) and the ``f1`` reward of RLHF (:mod:`finetune.rlhf`)
both use it, so preference training optimises the number the benchmark reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rag.evaluate import f1_score
from rag.extract import clean_answer
from rag.prompts import is_abstention


def answer_f1(prediction: str, gold: str) -> float:
    """Token F1 of ``prediction`` against ``gold`` in [0, 1]; abstentions as the benchmark scores them."""
    if is_abstention(gold):
        return float(is_abstention(prediction))
    if is_abstention(prediction):
        return 0.0
    return f1_score(prediction, gold)


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational list of ``{"role", "content"}`` turns."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def reply_answer(raw: str, question: str | None = None) -> str:
    """The short answer inference would show for the model's ``raw`` reply (:func:`rag.extract.clean_answer`),
    or the abstention text when the reply is one."""
    from rag.prompts import ABSTAIN_TEXT

    if is_abstention(raw):
        return ABSTAIN_TEXT
    answer = clean_answer(raw, question)
    return answer if answer else ABSTAIN_TEXT


def make_f1_reward() -> Callable[..., list[float | None]]:
    """TRL reward function ``(prompts, completions, answer, question) -> [F1 or None]``: each completion is
    cleaned as inference cleans a short answer and scored by :func:`answer_f1` against the prompt's gold
    ``answer`` column; None (TRL: not scorable by this function) where a prompt has no gold answer."""

    def f1(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        answer: Sequence[str | None] | None = None,
        question: Sequence[str] | None = None,
        **_: Any,
    ) -> list[float | None]:
        out: list[float | None] = []
        for i, completion in enumerate(completions):
            gold = answer[i] if answer is not None else None
            if not gold:
                out.append(None)
                continue
            q = question[i] if question is not None else None
            out.append(answer_f1(reply_answer(completion_text(completion), q), gold))
        return out

    f1.__name__ = "f1"
    return f1
