"""One answer strategy per mode, as transformers has one class per RAG variant.

* :class:`StuffStrategy` (``stuff``): all K chunks in one prompt, decoded with the document axis of
  size 1;
* :class:`RagSequenceStrategy` (``rag-sequence``): one prompt per document, candidates ranked by
  p(y|x) = sum_z p(z|x) prod_i p(y_i|x,z,y<i) (:func:`rag.decoding.rag_sequence_generate`), or with
  ``strategy="sample"`` one answer drawn from that marginal (:func:`rag.decoding.rag_sequence_sample`);
* :class:`RagTokenStrategy` (``rag-token``): one prompt per document run as one batch, the next-token
  distributions mixed by p(z|x) at every step (:func:`rag.decoding.rag_token_generate`).

:data:`STRATEGIES` maps each mode to its strategy. What the modes share (retrieval, the posterior,
the abstention decision, citations) stays in :class:`rag.qa.QAPipeline`; a strategy only chooses the
documents it reads, turns them into generated tokens and, for a full answer, attributes each sentence
to the documents it read (:meth:`AnswerStrategy.sentence_posteriors`, maths in :mod:`rag.attribution`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rag.attribution import overlap_shares, rag_sequence_sentence_posteriors, rag_token_sentence_posteriors
from rag.config import QAConfig
from rag.decoding import (
    RagSequenceHypothesis,
    RagTokenOutput,
    rag_sequence_generate,
    rag_sequence_sample,
    rag_token_generate,
)
from rag.generator import Generator
from rag.prefix_cache import PrefixSpec

__all__ = [
    "STRATEGIES",
    "AnswerStrategy",
    "BatchedDecoder",
    "Decoder",
    "SoloDecoder",
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
        adapter: the LoRA adapter answering (None: the base model); part of the prefix-cache key.
        deadline_s: seconds the generation may take, queueing included (None: no limit).
        style: the answer style (``"short"`` / ``"full"``): chooses the prompts' system message.
        max_new_tokens: the style's token budget (None: ``QAConfig.max_new_tokens``).
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
    adapter: str | None = None
    deadline_s: float | None = None
    style: str = "short"
    max_new_tokens: int | None = None


@dataclass
class Generated:
    """A strategy's answer before cleaning and the abstention decision.

    Attributes:
        token_ids: generated ids (with the eos token when the answer stopped on one).
        logprob: log p(y|x) under the mode's marginal.
        contributions: each kept document's share of the answer (``K'`` floats, in the order of
            :attr:`GenerationRequest.contexts`).
        reference_logprob: log p("I don't know."|x) under the same marginal, or None.
        token_logprobs: ``(K', T)`` log p(y_i|x,z_k,y_<i) of the answer's tokens under each kept
            document (rag-token, rag-sequence), or None (stuff: one prompt, no per-document likelihood).
    """

    token_ids: list[int]
    logprob: float
    contributions: list[float]
    reference_logprob: float | None
    token_logprobs: torch.Tensor | None = None


Parts = list[tuple[list[int], list[int]]]  # (prefix_ids, suffix_ids) per prompt, see Generator.prompt_parts


class Decoder:
    """Runs a strategy's decoding on the model: :class:`SoloDecoder` (this thread holds the model) or
    :class:`BatchedDecoder` (a :class:`rag.scheduler.Scheduler` thread owns it and batches requests).
    Both reuse cached prompt-prefix KV states when the generator's prefix cache is on."""

    def __init__(self, generator: Generator, config: QAConfig, request: GenerationRequest) -> None:
        self.generator = generator
        self.config = config
        self.request = request

    def rag_token(self, parts: Parts, doc_logprobs: torch.Tensor) -> RagTokenOutput:  # pragma: no cover - abstract
        """RAG-Token decoding of the prompts ``parts`` (``doc_logprobs``: ``(K,)`` log p(z|x))."""
        raise NotImplementedError

    def call(self, fn: Callable[[Any, PrefixSpec | None], Any], parts: Parts) -> Any:  # pragma: no cover - abstract
        """``fn(model, prefix)`` alone on the model (whole-answer jobs: RAG-Sequence, beam search)."""
        raise NotImplementedError

    def _prefix(self, parts: Parts) -> PrefixSpec | None:
        """Call with the adapter active (the key holds a fingerprint of its loaded weights)."""
        return self.generator.prefix_spec(
            parts, adapter=self.request.adapter, one_shot=self.config.one_shot, style=self.request.style
        )

    def _token_kwargs(self) -> dict[str, Any]:
        cfg, req = self.config, self.request
        return dict(
            max_new_tokens=req.max_new_tokens or cfg.max_new_tokens,
            eos_token_ids=self.generator.eos_token_ids,
            strategy=cfg.strategy,
            num_beams=cfg.num_beams,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            generator=req.rng,
            reference_ids=req.reference_ids,
            stop=req.stop,
        )


class SoloDecoder(Decoder):
    """Decodes on ``model``, which the caller holds (``Generator.session``) for the whole answer."""

    def __init__(self, model: Any, generator: Generator, config: QAConfig, request: GenerationRequest) -> None:
        super().__init__(generator, config, request)
        self.model = model

    def rag_token(self, parts: Parts, doc_logprobs: torch.Tensor) -> RagTokenOutput:
        return rag_token_generate(
            self.model,
            [p + s for p, s in parts],
            doc_logprobs,
            stream_callback=self.request.stream,
            pad_token_id=self.generator.tokenizer.pad_token_id,
            prefix=self._prefix(parts),
            **self._token_kwargs(),
        )

    def call(self, fn: Callable[[Any, PrefixSpec | None], Any], parts: Parts) -> Any:
        return fn(self.model, self._prefix(parts))


class BatchedDecoder(Decoder):
    """Decodes through a :class:`rag.scheduler.Scheduler`: greedy / sampled RAG-Token (and stuff) answers
    join its shared decode loop; whole-answer jobs run alone in its thread between two steps."""

    def __init__(self, scheduler: Any, generator: Generator, config: QAConfig, request: GenerationRequest) -> None:
        super().__init__(generator, config, request)
        self.scheduler = scheduler

    def rag_token(self, parts: Parts, doc_logprobs: torch.Tensor) -> RagTokenOutput:
        from rag.scheduler import GenerationRequest as BatchRequest

        handle = self.scheduler.submit(
            BatchRequest(
                prompt_ids=[p + s for p, s in parts],
                doc_logprobs=doc_logprobs,
                adapter=self.request.adapter,
                stream_callback=self.request.stream,
                deadline_s=self.request.deadline_s,
                prefix_fn=lambda model: self._prefix(parts),  # scheduler thread, adapter active
                **self._token_kwargs(),
            )
        )
        return handle.result()

    def call(self, fn: Callable[[Any, PrefixSpec | None], Any], parts: Parts) -> Any:
        handle = self.scheduler.submit_call(
            lambda model: fn(model, self._prefix(parts)),
            adapter=self.request.adapter,
            deadline_s=self.request.deadline_s,
        )
        return handle.result()


class AnswerStrategy:
    """How one mode turns the retrieved documents into an answer."""

    mode: ClassVar[str]
    #: per-sentence document shares from token log-probs ``(K', T)``, log p(z|x) and token spans (None: overlap)
    token_posteriors: ClassVar[Callable[..., torch.Tensor] | None] = None

    def select_documents(self, doc_logprobs: torch.Tensor, config: QAConfig) -> list[int] | None:
        """Indices of the documents to read, or None for all of them (their p(z|x) unchanged).

        Args:
            doc_logprobs: ``(K,)`` log p(z|x) of the retrieved chunks.
        """
        return kept_documents(doc_logprobs, config.min_doc_posterior)

    def generate(
        self, decoder: Decoder, generator: Generator, config: QAConfig, request: GenerationRequest
    ) -> Generated:  # pragma: no cover - abstract
        raise NotImplementedError

    def sentence_posteriors(
        self,
        out: Generated,
        doc_logprobs: torch.Tensor,
        token_spans: Sequence[tuple[int, int]],
        sentences: Sequence[str],
        chunks: Sequence[str],
    ) -> torch.Tensor:
        """Each answer sentence's share of each document read (``(S, K')``, rows summing to 1 or all 0).

        Args:
            out: the generated answer.
            doc_logprobs: ``(K',)`` log p(z|x) of the documents read.
            token_spans: ``S`` ranges of ``out.token_ids`` (:func:`rag.attribution.token_sentence_spans`).
            sentences: the ``S`` sentence texts.
            chunks: the ``K'`` chunk texts.

        A mode with per-document token likelihoods sets :attr:`token_posteriors` (the maths of
        :mod:`rag.attribution`); without them (stuff, or no token log-probs) the shares are content-word overlaps.
        """
        if self.token_posteriors is None or out.token_logprobs is None:
            return overlap_shares(sentences, chunks)
        return self.token_posteriors(out.token_logprobs, doc_logprobs.float().cpu(), token_spans)


def _per_document_parts(generator: Generator, config: QAConfig, request: GenerationRequest) -> Parts:
    return [
        generator.prompt_parts(request.question, [c], one_shot=config.one_shot, style=request.style)
        for c in request.contexts
    ]


class StuffStrategy(AnswerStrategy):
    """All chunks in one prompt; each chunk is credited with its retrieval posterior p(z|x), and each
    sentence of a full answer with its word overlap (the base class's :meth:`sentence_posteriors`)."""

    mode = "stuff"

    def select_documents(self, doc_logprobs: torch.Tensor, config: QAConfig) -> list[int] | None:
        return None

    def generate(
        self, decoder: Decoder, generator: Generator, config: QAConfig, request: GenerationRequest
    ) -> Generated:
        parts = [
            generator.prompt_parts(request.question, request.contexts, one_shot=config.one_shot, style=request.style)
        ]
        out = decoder.rag_token(parts, torch.zeros(1))
        return Generated(out.token_ids, out.logprob, list(request.posteriors), out.reference_logprob)


class RagTokenStrategy(AnswerStrategy):
    """One prompt per kept document, next-token distributions mixed by p(z|x) at every step."""

    mode = "rag-token"

    def generate(
        self, decoder: Decoder, generator: Generator, config: QAConfig, request: GenerationRequest
    ) -> Generated:
        out = decoder.rag_token(_per_document_parts(generator, config, request), request.doc_logprobs)
        return Generated(
            out.token_ids, out.logprob, list(out.doc_contributions), out.reference_logprob, out.token_logprobs
        )

    #: Mean per-token document posterior over each sentence's tokens.
    token_posteriors = staticmethod(rag_token_sentence_posteriors)


class RagSequenceStrategy(AnswerStrategy):
    """One prompt per kept document, whole answers ranked by their marginal; streamed once, when ranked."""

    mode = "rag-sequence"

    def generate(
        self, decoder: Decoder, generator: Generator, config: QAConfig, request: GenerationRequest
    ) -> Generated:
        parts = _per_document_parts(generator, config, request)
        prompts = [p + s for p, s in parts]
        decode = self._sample if config.strategy == "sample" else self._best
        common: dict[str, Any] = dict(
            max_new_tokens=request.max_new_tokens or config.max_new_tokens,
            eos_token_ids=generator.eos_token_ids,
            pad_token_id=generator.tokenizer.pad_token_id,
            reference_ids=request.reference_ids,
            stop=request.stop,
        )

        def run(model: Any, prefix: PrefixSpec | None) -> RagSequenceHypothesis:
            return decode(model, prompts, config, request, prefix=prefix, **common)

        hyp = decoder.call(run, parts)
        if request.on_token is not None:
            request.on_token(generator.decode(hyp.token_ids))
        return Generated(hyp.token_ids, hyp.logprob, list(hyp.doc_posterior), hyp.reference_logprob, hyp.token_logprobs)

    @staticmethod
    def _best(
        model: Any, prompts: list[list[int]], config: QAConfig, request: GenerationRequest, **common: Any
    ) -> RagSequenceHypothesis:
        """Greedy (``num_beams=1``) or beam candidates per document, ranked by the marginal: the best one
        (:func:`rag.decoding.rag_sequence_generate`)."""
        hyps = rag_sequence_generate(
            model, prompts, request.doc_logprobs, num_beams=config.num_beams, decoding=config.decoding, **common
        )
        return hyps[0]

    @staticmethod
    def _sample(
        model: Any, prompts: list[list[int]], config: QAConfig, request: GenerationRequest, **common: Any
    ) -> RagSequenceHypothesis:
        """``strategy="sample"``: one answer drawn from the RAG-Sequence marginal (z ~ p(z|x), then
        y ~ p(y|x,z); :func:`rag.decoding.rag_sequence_sample`), with ``request.rng``."""
        return rag_sequence_sample(
            model,
            prompts,
            request.doc_logprobs,
            temperature=config.temperature,
            top_p=config.top_p,
            generator=request.rng,
            **common,
        )

    #: p(z | x, y_s) from the product of each sentence's token likelihoods under each document.
    token_posteriors = staticmethod(rag_sequence_sentence_posteriors)


#: mode -> its strategy; :data:`rag.qa.MODES` lists these keys.
STRATEGIES: dict[str, AnswerStrategy] = {
    s.mode: s for s in (StuffStrategy(), RagSequenceStrategy(), RagTokenStrategy())
}
