"""Synthetic question/answer pairs from a collection's own chunks, for users who have no training data.

Two methods, both answer with an exact span of the chunk (names, dates/years, numbers with a unit):

- ``cloze`` (default, fast, no LLM): a sentence of the chunk is turned into a question by putting a
  wh-phrase where the answer was (:mod:`~finetune.synth.cloze`).
- ``generate``: the generator writes a question for the chunk and a chosen answer span; the question
  is kept only when it is well formed and on the chunk's topic (:mod:`~finetune.synth.generated`).

One module per step: :mod:`~finetune.synth.sentences` (prose sentences of a chunk),
:mod:`~finetune.synth.candidates` (answer spans in a sentence), :mod:`~finetune.synth.cloze` and
:mod:`~finetune.synth.generated` (a question for an answer), :mod:`~finetune.synth.pairs` (the whole
run: plan, write, deduplicate, report), :mod:`~finetune.synth.words` (shared word lists).
Everything is pure except :func:`generator_question_writer`, which wraps a
:class:`rag.generator.Generator`; the command line lives in :mod:`api.cli_finetune`.
"""

from finetune.synth.candidates import TYPE_PRIORITY, Candidate, answer_candidates, chunk_candidates
from finetune.synth.cloze import cloze_question
from finetune.synth.generated import (
    QUESTION_SYSTEM,
    QuestionWriter,
    clean_generated_question,
    generator_question_writer,
    question_messages,
)
from finetune.synth.pairs import METHODS, ChunkLike, SynthError, SynthPair, SynthReport, SynthResult, synthesize
from finetune.synth.sentences import sentence_spans

__all__ = [
    "METHODS",
    "QUESTION_SYSTEM",
    "TYPE_PRIORITY",
    "Candidate",
    "ChunkLike",
    "QuestionWriter",
    "SynthError",
    "SynthPair",
    "SynthReport",
    "SynthResult",
    "answer_candidates",
    "chunk_candidates",
    "clean_generated_question",
    "cloze_question",
    "generator_question_writer",
    "question_messages",
    "sentence_spans",
    "synthesize",
]
