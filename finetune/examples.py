"""Training prompts built exactly as inference builds them.

Inference (:mod:`rag.qa`) retrieves top-k chunks, cuts each to ``max_context_tokens`` generator
tokens with :func:`rag.qa.format_contexts`, and renders :func:`rag.prompts.chat_messages` with the
model's chat template. Training prompts go through the same two functions, so an adapter learns
on the very token sequences it will read at answer time.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rag.evaluate import normalize_answer
from rag.generator import Generator
from rag.prompts import ABSTAIN_TEXT, chat_messages
from rag.qa import format_contexts

logger = logging.getLogger(__name__)


def contains_answer(context: str, answer: str) -> bool:
    """Does ``context`` hold ``answer`` (after SQuAD normalisation: case, punctuation, articles)?"""
    a = normalize_answer(answer)
    return bool(a) and f" {a} " in f" {normalize_answer(context)} "


def as_retrieved(own: list[str], retrieved: list[str], probe_chars: int = 120) -> list[str]:
    """The record's own passages as the collection shows them: each one that retrieval also returned is replaced by
    that retrieved chunk (with its ``"[title] "`` header, :func:`rag.qa.format_contexts`).

    Without this a fallback prompt (the record's own passage) and a retrieved one differ in form, not only in
    content; a reader trained on both learns the form: "I don't know." examples, whose passages never hold their
    answer and so always come from the fallback, taught the 2026-12-04 reader to abstain on every passage without a
    title line and on none with one (option ``fallback_as_retrieved`` of :class:`finetune.config.SFTJob`). A passage
    matches a chunk that holds its first ``probe_chars`` characters (whitespace-normalised)."""

    def norm(text: str) -> str:
        return " ".join(text.split())

    shown = [norm(r) for r in retrieved]
    out = []
    for passage in own:
        probe = norm(passage)[:probe_chars]
        match = next((r for r, n in zip(retrieved, shown) if probe and probe in n), None)
        out.append(match if match is not None else passage)
    return out


def prompts_as_retrieved(records: Sequence[Any], source: ContextSource) -> tuple[list[Any], int]:
    """RLHF prompt records with their passages in the form the collection shows them (``finetune rlhf -c``).

    A record's own passages become the chunks retrieval returns for them (:func:`as_retrieved`: the ``"[title] "`` line
    included), so the policy is trained on the prompts it reads at answer time; a record without passages gets the
    best-ranked retrieved chunk holding its gold answer, else the top chunk (the per-document prompt rag-token and
    rag-sequence read). Returns ``(records, how many of them were changed)``."""
    out, changed = [], 0
    for rec in records:
        retrieved = source.contexts(rec.question)
        if rec.contexts:
            own = [cut(source.tokenizer, c, source.max_context_tokens) for c in rec.contexts]
            contexts = as_retrieved(own, retrieved)
        else:
            holding = [c for c in retrieved if rec.answer and contains_answer(c, rec.answer)]
            contexts = (holding or retrieved)[:1]
        changed += int(contexts != list(rec.contexts))
        out.append(replace(rec, contexts=contexts))
    return out, changed


@dataclass
class ContextSource:
    """Retrieves training contexts from a collection the way :class:`rag.qa.QAPipeline` does."""

    retriever: Any
    collection: Any
    k: int
    max_context_tokens: int
    tokenizer: Any

    def contexts(self, question: str) -> list[str]:
        retrieval = self.retriever.retrieve(self.collection, question, k=self.k)
        return format_contexts(self.tokenizer, retrieval.chunks, self.max_context_tokens)


def cut(tokenizer, text: str, limit: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids[:limit]) if len(ids) > limit else text


def evidence_sentence(context: str, answer: str) -> str | None:
    """The sentence of ``context`` that holds ``answer``: a grounded full-style target.

    A full-style reply should be a complete sentence built only from the context; for an
    extractive QA record the sentence around the gold span is exactly that. None when no single
    sentence holds the answer (it spans a boundary, or it is not in the context).
    """
    text = _TITLE.sub("", " ".join(context.split()), count=1)  # the "[title] " format_contexts puts first
    for sentence in _SENTENCE_BREAK.split(text):
        if contains_answer(sentence, answer):
            return sentence.strip()
    return None


_TITLE = re.compile(r"^\[[^\]]*\]\s*")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


def tokenize_pair(
    gen: Generator,
    question: str,
    contexts: Sequence[str],
    answer: str,
    *,
    one_shot: bool,
    style: str = "short",
) -> dict[str, list[int]]:
    """``input_ids`` of prompt + answer turn and ``completion_mask`` (1 on the answer turn's tokens).

    The prompt part is :meth:`Generator.prompt_ids` (what inference feeds); the completion is
    whatever the chat template appends for the assistant's answer (for ChatML: the answer, then
    ``<|im_end|>``), so the adapter also learns to stop.
    """
    tok = gen.tokenizer
    prompt = gen.prompt_ids(question, contexts, one_shot=one_shot, style=style)
    completion: list[int] | None = None
    if getattr(tok, "chat_template", None):
        messages = chat_messages(question, contexts, one_shot=one_shot, style=style) + [
            {"role": "assistant", "content": answer}
        ]
        full = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
        if isinstance(full, dict) or hasattr(full, "keys"):
            full = full["input_ids"]
        full = list(full)
        if full[: len(prompt)] == prompt:
            completion = full[len(prompt) :]
            # Drop a trailing newline after the end-of-turn token: generation stops at the end token.
            eos = set(gen.eos_token_ids)
            while completion and completion[-1] not in eos and any(t in eos for t in completion):
                completion = completion[:-1]
    if completion is None:  # no template, or one that renders the prompt differently in a full conversation
        completion = tok.encode(" " + answer.strip(), add_special_tokens=False) + [gen.eos_token_ids[0]]
    return {"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)}


@dataclass
class BuildReport:
    questions: int = 0
    examples: int = 0
    positives_from_retrieval: int = 0
    gold_fallback: int = 0
    no_evidence: int = 0
    distractor_examples: int = 0
    too_long: int = 0
    full_style: int = 0
    lengths: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        lengths = sorted(self.lengths) or [0]
        return {
            "questions": self.questions,
            "examples": self.examples,
            "positives_from_retrieval": self.positives_from_retrieval,
            "gold_fallback": self.gold_fallback,
            "skipped_no_evidence": self.no_evidence,
            "distractor_examples": self.distractor_examples,
            "skipped_too_long": self.too_long,
            "full_style_examples": self.full_style,
            "tokens": sum(self.lengths),
            "median_length": lengths[len(lengths) // 2],
            "max_length": lengths[-1],
        }


def build_sft_examples(
    gen: Generator,
    records: Sequence[Any],
    *,
    source: ContextSource | None,
    prompt_style: str,
    max_context_tokens: int,
    max_length: int,
    distractor_rate: float = 0.0,
    gold_fallback: bool = True,
    fallback_as_retrieved: bool = False,
    one_shot: bool = False,
    seed: int = 0,
    full_style_rate: float = 0.0,
) -> tuple[list[dict[str, list[int]]], BuildReport]:
    """Tokenised SFT examples from :class:`finetune.data.Example` records.

    ``per-document`` (what rag-token / rag-sequence read): one prompt per question holding the
    best-ranked retrieved chunk that contains the answer (else the record's own context when
    ``gold_fallback``); with probability ``distractor_rate`` also a prompt holding only a retrieved
    chunk without the answer, trained to say :data:`rag.prompts.ABSTAIN_TEXT`.
    ``stuffed`` (what the stuff mode reads, RAFT): the top-k retrieved chunks in one prompt; when
    none holds the answer the record's context replaces the last one, except for a
    ``distractor_rate`` share of prompts that keep only distractors (RAFT's 1-P).
    Without a collection the record's own contexts are used as they are.

    ``fallback_as_retrieved``: the record's own passages in the form retrieval returned them (:func:`as_retrieved`).

    ``full_style_rate``: share of questions whose prompt uses the ``full`` answer style
    (:data:`rag.prompts.FULL_SYSTEM`) with the context sentence holding the answer as the target
    (:func:`evidence_sentence`), so one adapter learns both styles: short spans, and complete
    sentences taken only from the evidence. Questions whose answer is not inside one sentence stay short.
    """
    rng = random.Random(seed)
    tok = gen.tokenizer
    report = BuildReport()
    out: list[dict[str, list[int]]] = []

    def add(question: str, contexts: list[str], answer: str, style: str = "short") -> None:
        ex = tokenize_pair(gen, question, contexts, answer, one_shot=one_shot, style=style)
        if len(ex["input_ids"]) > max_length:
            report.too_long += 1
            return
        report.lengths.append(len(ex["input_ids"]))
        out.append(ex)

    for rec in records:
        report.questions += 1
        answer = rec.answer.strip()
        own = [cut(tok, c, max_context_tokens) for c in rec.contexts]
        retrieved = source.contexts(rec.question) if source is not None else list(own)
        if fallback_as_retrieved:
            own = as_retrieved(own, retrieved)  # a fallback prompt looks like a retrieved one
        with_answer = [c for c in retrieved if contains_answer(c, answer)]
        without = [c for c in retrieved if not contains_answer(c, answer)]
        gold = (
            with_answer[0]
            if with_answer
            else (
                next((c for c in own if contains_answer(c, answer)), own[0] if own else None) if gold_fallback else None
            )
        )
        if with_answer:
            report.positives_from_retrieval += 1
        elif gold is not None:
            report.gold_fallback += 1
        if prompt_style == "per-document":
            if gold is None:
                report.no_evidence += 1
                continue
            style, target = "short", answer
            if full_style_rate > 0 and rng.random() < full_style_rate:
                sentence = answer if answer == ABSTAIN_TEXT else evidence_sentence(gold, answer)
                if sentence is not None:
                    style, target = "full", sentence
                    report.full_style += 1
            add(rec.question, [gold], target, style)
            if without and rng.random() < distractor_rate:
                add(rec.question, [rng.choice(without)], ABSTAIN_TEXT, style)
                report.distractor_examples += 1
        else:
            contexts = list(retrieved) if source is not None else list(own)
            if not with_answer and source is not None:
                if gold is None or rng.random() < distractor_rate:
                    report.distractor_examples += int(gold is not None)
                    if gold is None:
                        report.no_evidence += 1
                        continue
                else:
                    contexts = (contexts[:-1] if len(contexts) >= max(1, source.k) else contexts) + [gold]
                    rng.shuffle(contexts)
            if not contexts:
                report.no_evidence += 1
                continue
            add(rec.question, contexts, answer)
    report.examples = len(out)
    logger.info("built %d SFT examples: %s", len(out), Counter(len(e["input_ids"]) // 64 * 64 for e in out))
    return out, report
