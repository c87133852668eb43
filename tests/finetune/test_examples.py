"""Training examples: the full-style target is the evidence sentence, rendered with the full system prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from finetune.examples import build_sft_examples, evidence_sentence
from rag.config import GeneratorConfig
from rag.generator import Generator
from rag.prompts import ABSTAIN_TEXT, FULL_SYSTEM, SYSTEM

pytestmark = pytest.mark.unit

CONTEXT = (
    "The Normans lived in Normandy. In 911, Rollo signed a treaty with King Charles III of West Francia. "
    "Their language was Norman French!  Later they spread to Italy."
)


@dataclass
class Record:
    question: str
    answer: str
    contexts: list[str] = field(default_factory=list)


def test_evidence_sentence_is_the_sentence_holding_the_answer():
    assert evidence_sentence(CONTEXT, "Charles III") == (
        "In 911, Rollo signed a treaty with King Charles III of West Francia."
    )
    assert evidence_sentence(CONTEXT, "norman french") == "Their language was Norman French!"
    assert evidence_sentence(CONTEXT, "Later they spread") == "Later they spread to Italy."
    # The "[title] " header of a retrieved chunk is not part of the sentence.
    assert evidence_sentence("[Normans] " + CONTEXT, "Normandy") == "The Normans lived in Normandy."
    # Not in the context, or across a sentence boundary: no full-style target.
    assert evidence_sentence(CONTEXT, "Mars") is None
    assert evidence_sentence(CONTEXT, "Normandy. In 911") is None


@pytest.fixture(scope="module")
def gen(tiny_llm):
    return Generator(GeneratorConfig(model=str(tiny_llm)), tiny_llm.parent, tiny_llm.parent / "adapters")


def _decode(gen, ex, mask_value):
    ids = [t for t, m in zip(ex["input_ids"], ex["completion_mask"], strict=True) if m == mask_value]
    return gen.tokenizer.decode(ids)


def test_full_style_examples_use_the_full_prompt_and_the_evidence_sentence(gen):
    records = [
        Record("Who signed a treaty with Rollo?", "Charles III", [CONTEXT]),
        Record("Where did the Normans live?", "Normandy", [CONTEXT]),
        Record("What is on Mars?", ABSTAIN_TEXT, [CONTEXT]),
    ]
    kwargs = dict(source=None, prompt_style="per-document", max_context_tokens=200, max_length=512)
    full, report = build_sft_examples(gen, records, full_style_rate=1.0, **kwargs)
    assert report.full_style == 3 and report.to_dict()["full_style_examples"] == 3
    assert all(FULL_SYSTEM in _decode(gen, ex, 0) for ex in full)
    answers = [_decode(gen, ex, 1) for ex in full]
    assert answers[0].startswith("In 911, Rollo signed a treaty with King Charles III of West Francia.")
    assert answers[1].startswith("The Normans lived in Normandy.")
    assert answers[2].startswith(ABSTAIN_TEXT)  # abstention stays the abstention text

    short, report = build_sft_examples(gen, records, **kwargs)
    assert report.full_style == 0
    assert all(SYSTEM in _decode(gen, ex, 0) and FULL_SYSTEM not in _decode(gen, ex, 0) for ex in short)
    assert _decode(gen, short[0], 1).startswith("Charles III")
    # Rate 0 draws no random numbers: the examples are exactly those of the old builder.
    again, _ = build_sft_examples(gen, records, full_style_rate=0.0, **kwargs)
    assert again == short


def test_a_fallback_passage_is_shown_as_retrieval_shows_it():
    """The record's own passage, when retrieval returned it, is used in the retrieved chunk's form (its title line),
    so "I don't know." examples (always from the fallback) do not differ from answerable ones by their form."""
    from finetune.examples import as_retrieved

    other = "[Mars] Mars is the fourth planet."
    shown = "[Normans] " + CONTEXT.replace("  ", " ")
    assert as_retrieved([CONTEXT], [other, shown]) == [shown]
    assert as_retrieved([CONTEXT], [other]) == [CONTEXT]  # not retrieved: as it is
    assert as_retrieved(["", CONTEXT], [shown]) == ["", shown]


@dataclass
class _Source:
    chunks: list[str]
    k: int = 2

    def contexts(self, question: str) -> list[str]:
        return list(self.chunks)


def test_rlhf_prompts_read_their_passages_as_retrieval_shows_them(gen):
    """``finetune rlhf -c``: a prompt's own passage becomes its retrieved chunk (title line); a prompt without one
    gets the top retrieved chunk holding its gold answer, else the top chunk."""
    from finetune.data import Example
    from finetune.examples import prompts_as_retrieved

    shown = "[Normans] " + CONTEXT
    source = _Source(["[Other] Nothing about Rollo here.", shown])
    source.tokenizer, source.max_context_tokens = gen.tokenizer, 200
    records = [
        Example("Who signed a treaty with Rollo?", "Charles III", [CONTEXT]),
        Example("Who signed a treaty with Rollo?", "Charles III"),  # no passage: the chunk holding the answer
        Example("What is on Mars?"),  # no passage, no answer: the top chunk
        Example("What is on Mars?", "red dust", ["Mars is red."]),  # not retrieved: kept as it is
    ]
    out, changed = prompts_as_retrieved(records, source)
    assert [r.contexts for r in out] == [[shown], [shown], ["[Other] Nothing about Rollo here."], ["Mars is red."]]
    assert changed == 3 and [r.answer for r in out] == [r.answer for r in records]


def test_abstain_examples_read_the_retrieved_form_of_their_passage(gen):
    shown = "[Normans] " + CONTEXT
    records = [
        Record("Who signed a treaty with Rollo?", "Charles III", [CONTEXT]),
        Record("What is on Mars?", ABSTAIN_TEXT, [CONTEXT]),
    ]
    source = _Source(["[Other] Nothing to see here.", shown])
    kwargs = dict(source=source, prompt_style="per-document", max_context_tokens=200, max_length=512)
    examples, report = build_sft_examples(gen, records, fallback_as_retrieved=True, **kwargs)
    assert report.examples == 2 and report.gold_fallback == 1  # the abstain example came from the fallback
    prompts = [_decode(gen, ex, 0) for ex in examples]
    assert all("[Normans]" in p for p in prompts)
    # Off (the default, as the shipped reader was trained): the abstain example reads the untitled passage.
    examples, _ = build_sft_examples(gen, records, **kwargs)
    assert ["[Normans]" in _decode(gen, ex, 0) for ex in examples] == [True, False]
