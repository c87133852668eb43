"""One answer strategy per mode, as transformers has one class per RAG variant.

* :class:`StuffStrategy` (``stuff``): all K chunks in one prompt, decoded with the document axis of
  size 1;
* :class:`RagSequenceStrategy` (``rag-sequence``): one prompt per document, candidates ranked by
  p(y|x) = sum_z p(z|x) prod_i p(y_i|x,z,y<i) (:func:`rag.decoding.rag_sequence_generate`);
* :class:`RagTokenStrategy` (``rag-token``): one prompt per document run as one batch, the next-token
  distributions mixed by p(z|x) at every step (:func:`rag.decoding.rag_token_generate`).

:data:`STRATEGIES` maps each mode to its strategy. What the modes share (retrieval, the posterior,
the abstention decision, citations) stays in :class:`rag.qa.QAPipeline`; a strategy only chooses the
documents it reads and turns them into generated tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rag.config import QAConfig
from rag.decoding import rag_sequence_generate, rag_token_generate
from rag.generator import Generator

__all__ = [
    "STRATEGIES",
    "AnswerStrategy",
    "GenerationRequest",
    "Generated",
    "RagSequenceStrategy",
    "RagTokenStrategy",
    "StuffStrategy",
    "kept_documents",
]


def kept_documents(doc_logprobs: torch.Tensor, min_posterior: float) -> list[int]:
    """Indices of the documents whose p(z|x) >= ``min_posterior`` (always at least the best one).

    Args:
        doc_logprobs: ``(K,)`` log p(z|x), normalised.

    The full mixture is ``(1 - e) * kept_mixture + e * dropped_mixture`` for the dropped prior mass e,
    so every RAG-Token next-token distribution (and the RAG-Sequence marginal over answers) moves by at
    most e in total variation, while each dropped document saves its whole prompt's prefill.
    """
    post = doc_logprobs.exp()
    keep = [i for i, p in enumerate(post.tolist()) if p >= min_posterior]
    return keep or [int(torch.argmax(doc_logprobs))]


@dataclass
class GenerationRequest:
    """What a strategy needs to generate one answer.

    Attributes:
        question: the stripped question.
        contexts: the context blocks of the documents the strategy kept (``len == K'``).
        doc_logprobs: ``(K',)`` log p(z|x) over the kept documents, normalised.
        posteriors: p(z|x) of every retrieved chunk (``(K,)`` floats, before any selection).
        reference_ids: the abstention text's ids, scored under the same marginal as the answer.
        stop: True once a row's generated ids hold a whole first sentence.
        stream: called with each generated token id (token-by-token modes).
        on_token: the caller's text callback, or None.
        rng: the seeded random generator for sampling, or None.
    """

    question: str
    contexts: list[str]
    doc_logprobs: torch.Tensor
    posteriors: list[float]
    reference_ids: Sequence[int]
    stop: Callable[[list[int]], bool]
    stream: Callable[[int], None]
    on_token: Callable[[str], None] | None
    rng: torch.Generator | None


@dataclass
class Generated:
    """A strategy's answer before cleaning and the abstention decision.

    Attributes:
        token_ids: generated ids (with the eos token when the answer stopped on one).
        logprob: log p(y|x) under the mode's marginal.
        contributions: each kept document's share of the answer (``K'`` floats, in the order of
            :attr:`GenerationRequest.contexts`).
        reference_logprob: log p("I don't know."|x) under the same marginal, or None.
    """

    token_ids: list[int]
    logprob: float
    contributions: list[float]
    reference_logprob: float | None


class AnswerStrategy:
    """How one mode turns the retrieved documents into an answer."""

    mode: ClassVar[str]

    def select_documents(self, doc_logprobs: torch.Tensor, config: QAConfig) -> list[int] | None:
        """Indices of the documents to read, or None for all of them (their p(z|x) unchanged).

        Args:
            doc_logprobs: ``(K,)`` log p(z|x) of the retrieved chunks.
        """
        return kept_documents(doc_logprobs, config.min_doc_posterior)

    def generate(
        self, model: Any, generator: Generator, config: QAConfig, request: GenerationRequest
    ) -> Generated:  # pragma: no cover - abstract
        raise NotImplementedError


def _token_generate(
    model: Any, generator: Generator, config: QAConfig, request: GenerationRequest,
    prompts: Sequence[Sequence[int]], doc_logprobs: torch.Tensor,
):
    return rag_token_generate(
        model, prompts, doc_logprobs, max_new_tokens=config.max_new_tokens,
        eos_token_ids=generator.eos_token_ids, strategy=config.strategy, num_beams=config.num_beams,
        temperature=config.temperature, top_p=config.top_p, generator=request.rng,
        stream_callback=request.stream, pad_token_id=generator.tokenizer.pad_token_id,
        reference_ids=request.reference_ids, stop=request.stop,
    )


def _per_document_prompts(generator: Generator, config: QAConfig, request: GenerationRequest) -> list[list[int]]:
    return [generator.prompt_ids(request.question, [c], one_shot=config.one_shot) for c in request.contexts]


class StuffStrategy(AnswerStrategy):
    """All chunks in one prompt; each chunk is credited with its retrieval posterior p(z|x)."""

    mode = "stuff"

    def select_documents(self, doc_logprobs: torch.Tensor, config: QAConfig) -> list[int] | None:
        return None

    def generate(self, model: Any, generator: Generator, config: QAConfig, request: GenerationRequest) -> Generated:
        prompts = [generator.prompt_ids(request.question, request.contexts, one_shot=config.one_shot)]
        out = _token_generate(model, generator, config, request, prompts, torch.zeros(1))
        return Generated(out.token_ids, out.logprob, list(request.posteriors), out.reference_logprob)


class RagTokenStrategy(AnswerStrategy):
    """One prompt per kept document, next-token distributions mixed by p(z|x) at every step."""

    mode = "rag-token"

    def generate(self, model: Any, generator: Generator, config: QAConfig, request: GenerationRequest) -> Generated:
        prompts = _per_document_prompts(generator, config, request)
        out = _token_generate(model, generator, config, request, prompts, request.doc_logprobs)
        return Generated(out.token_ids, out.logprob, list(out.doc_contributions), out.reference_logprob)


class RagSequenceStrategy(AnswerStrategy):
    """One prompt per kept document, whole answers ranked by their marginal; streamed once, when ranked."""

    mode = "rag-sequence"

    def generate(self, model: Any, generator: Generator, config: QAConfig, request: GenerationRequest) -> Generated:
        prompts = _per_document_prompts(generator, config, request)
        hyps = rag_sequence_generate(
            model, prompts, request.doc_logprobs, max_new_tokens=config.max_new_tokens,
            eos_token_ids=generator.eos_token_ids, num_beams=config.num_beams, decoding=config.decoding,
            pad_token_id=generator.tokenizer.pad_token_id, reference_ids=request.reference_ids, stop=request.stop,
        )
        best = hyps[0]
        if request.on_token is not None:
            request.on_token(generator.decode(best.token_ids))
        return Generated(best.token_ids, best.logprob, list(best.doc_posterior), best.reference_logprob)


#: mode -> its strategy; :data:`rag.qa.MODES` lists these keys.
STRATEGIES: dict[str, AnswerStrategy] = {
    s.mode: s for s in (StuffStrategy(), RagSequenceStrategy(), RagTokenStrategy())
}
