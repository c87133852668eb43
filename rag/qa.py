"""Question answering: retrieve evidence, generate an answer in one of three modes, cite.

Modes (Lewis et al. 2020 for the two RAG ones):

* ``stuff`` — all K chunks in one prompt (the common baseline);
* ``rag-sequence`` — one prompt per document; candidates ranked by
  p(y|x) = sum_z p(z|x) prod_i p(y_i|x,z,y<i) ("thorough" or "fast" decoding);
* ``rag-token`` — one prompt per document run as one batch; at every step the next-token
  distributions are mixed by p(z|x).

Each mode is one :class:`rag.strategies.AnswerStrategy` (registry :data:`rag.strategies.STRATEGIES`);
:class:`QAPipeline` does what they share: retrieval, the posterior, the abstention decision, citations.

Abstention: when the best dense cosine of the evidence is below ``abstain_min_score`` the
system says it does not know without generating; when the answer's mean per-token marginal
log-likelihood is below ``abstain_min_logprob``, or the model's own "I don't know." (scored from
the same prefill under the same marginal) beats the answer per token by more than
``abstain_max_idk_margin``, it withholds the answer; and when the model itself answers "I don't
know" that is reported as an abstention. The thresholds are one :class:`rag.abstention.AbstentionRule`,
the same that :mod:`rag.evaluate` applies.

Answer styles (``QAConfig.answer_style``, or ``style=`` per call):

* ``short``: a few words copied from the context; the reply is cut to its first sentence and
  cleaned by :mod:`rag.extract`, and decoding stops as soon as that sentence is complete;
* ``full``: a complete answer of a few sentences (budget ``full_max_new_tokens``), ended by eos, the
  budget or the model repeating itself (:class:`rag.extract.FullReplyStop`); each sentence cites the
  documents that the model's own document posterior restricted to the sentence's tokens favours
  (:mod:`rag.attribution`; stuff mode: word overlap), filtered and extended by word overlap so that the cited
  chunks hold the sentence's words (``citation_by_overlap``), as inline markers ``[n]``. The sentence-support
  guard (``full_min_support``) leaves out every sentence, the first included, whose content words the chunks
  read do not hold, and a lead-in ("The steps are:") whose next sentence it left out; when none is left, the
  answer quotes the chunk sentences that best match the question (``Answer.fallback == "extractive"``), or
  says "I don't know" when even those match it weakly (``fallback == "abstain"``). An answer shorter than
  ``full_quote_min_words`` goes on with the sentences of that quote it does not already say
  (``AnswerSentence.quoted``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ingest.collection import Collection
from rag.abstention import AbstentionRule
from rag.adapter_defaults import NO_ADAPTER, AdapterResolver, Resolved
from rag.attribution import (
    QUOTE_MIN_WORDS,
    ClaimCheck,
    Quote,
    choose_documents,
    cite_supporting,
    content_words,
    extractive_fallback,
    quote_runs,
    supported_sentences,
    supporting_span,
    token_sentence_spans,
    unsaid_sentences,
    without_dangling_lead_ins,
)
from rag.calibration import read_calibration
from rag.config import QAConfig
from rag.errors import QAError
from rag.extract import FullReplyStop, clean_answer, full_reply, reply_complete
from rag.generator import Generator
from rag.prompts import ABSTAIN_TEXT, is_abstention
from rag.retriever import Retrieval, Retriever
from rag.strategies import STRATEGIES, AnswerStrategy, BatchedDecoder, Generated, GenerationRequest, SoloDecoder

logger = logging.getLogger(__name__)

MODES = tuple(STRATEGIES)  # ("stuff", "rag-sequence", "rag-token")
STYLES = ("short", "full")


@dataclass
class Citation:
    """A chunk used as evidence: its retrieval score, posterior p(z|x) and share of the answer."""

    index: int
    chunk_id: str
    doc_id: str
    title: str
    source: str
    text: str
    score: float
    posterior: float
    contribution: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnswerSentence:
    """One sentence of an answer and the chunks it cites.

    Attributes:
        text: the sentence, without citation markers.
        citations: 1-based :attr:`Citation.index` values, most supporting first.
        spans: aligned with ``citations``: char offsets ``(start, end)`` in that citation's ``text`` of
            the chunk sentence that best supports this one, or None when no chunk sentence shares a word.
        quoted: the sentence is copied from its citation's chunk (``spans[0]``), not generated.
    """

    text: str
    citations: list[int] = field(default_factory=list)
    spans: list[tuple[int, int] | None] = field(default_factory=list)
    #: full style: the sentence is quoted as written from its (one) citation, not the model's own
    quoted: bool = False


@dataclass
class Answer:
    """An answer. ``answer`` is the text shown (full style: with inline markers ``[n]``, ``n`` the
    :attr:`Citation.index`); ``sentences`` the same text sentence by sentence with what each cites
    (short style: one sentence; abstentions: none)."""

    answer_id: str
    question: str
    answer: str
    abstained: bool
    mode: str
    model: str
    adapter: str | None
    collection: str
    citations: list[Citation]
    #: why ``adapter`` answered: ``request`` (named), ``collection`` / ``server`` (a promoted default),
    #: ``shipped`` (the bundled model's reader adapter) or ``none`` (the bare model)
    adapter_source: str = "none"
    logprob: float | None = None
    mean_token_logprob: float | None = None
    idk_margin: float | None = None  # mean per-token log p("I don't know.") - the answer's (same marginal)
    max_retrieval_score: float | None = None
    abstain_reason: str | None = None
    raw_answer: str = ""
    generated_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    style: str = "short"
    sentences: list[AnswerSentence] = field(default_factory=list)
    #: full style, when the sentence-support guard left no generated sentence: ``"extractive"`` (the answer
    #: quotes the read chunks' sentences that best match the question) or ``"abstain"`` ("I don't know");
    #: None: the answer is the model's own (or an abstention for another reason)
    fallback: str | None = None
    #: full style: generated sentences the guard left out (their content words are not in the chunks read)
    sentences_left_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_contexts(tokenizer, chunks: Sequence[Any], limit: int) -> list[str]:
    """Chunk texts (with their title) cut to ``limit`` generator tokens: the prompt's context blocks.

    Fine-tuning builds its prompts with this same function, so training sees what inference sees.
    """
    out = []
    for c in chunks:
        text = c.text
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > limit:
            text = tokenizer.decode(ids[:limit])
        out.append(f"[{c.title}] {text}" if c.title else text)
    return out


def with_markers(
    text: str,
    spans: Sequence[tuple[int, int]],
    citations: Sequence[Sequence[int]],
    gaps: Sequence[int] | None = None,
) -> str:
    """The sentences ``spans`` of ``text`` joined as written, each with markers ``[n]`` for its
    ``citations`` before its final punctuation: ``"Run it [1]. Then activate it [1][2]."``.

    ``gaps[j]``: where the text before sentence j starts (default: the end of sentence j - 1), so that a
    sentence left out between two kept ones leaves only the separator that preceded the next one.
    """
    out: list[str] = []
    prev = None
    for j, ((start, end), cited) in enumerate(zip(spans, citations)):
        if prev is not None:
            out.append(text[prev if gaps is None else max(prev, gaps[j]) : start])
        sentence = text[start:end]
        marks = "".join(f"[{n}]" for n in cited)
        if marks:
            body = sentence.rstrip(".!?:;")
            tail = sentence[len(body) :]
            sentence = f"{body} {marks}{tail}" if body else f"{marks}{tail}"
        out.append(sentence)
        prev = end
    return "".join(out)


class _TextStreamer:
    """Token ids -> ``on_token(new text)``: decodes every id so far and sends the text not sent yet."""

    def __init__(self, generator: Generator, on_token: Callable[[str], None] | None) -> None:
        self.generator = generator
        self.on_token = on_token
        self.emitted: list[int] = []
        self.streamed = ""

    def __call__(self, token_id: int) -> None:
        if self.on_token is None:
            return
        self.emitted.append(token_id)
        text = self.generator.decode(self.emitted)
        if len(text) > len(self.streamed):
            self.on_token(text[len(self.streamed) :])
            self.streamed = text


class QAPipeline:
    """Retriever + generator. One instance serves many questions (models load once)."""

    def __init__(
        self,
        retriever: Retriever,
        generator: Generator,
        config: QAConfig | None = None,
        *,
        scheduler: Any = None,
        adapter_resolver: AdapterResolver | None = None,
    ) -> None:
        self.retriever = retriever
        self.generator = generator
        self.config = config or QAConfig()
        #: a :class:`rag.scheduler.Scheduler` that owns the model and batches concurrent answers (the
        #: server), or None: each answer holds the model alone (``Generator.session``; the CLI, eval)
        self.scheduler = scheduler
        #: picks the default adapter when a request names none (:mod:`rag.adapter_defaults`); None: no defaults
        self.adapter_resolver = adapter_resolver
        # adapter name (as resolved in the adapters folder) -> (query encoder folder mtime, embedder), LRU order
        self._query_encoders: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def query_embedder(self, adapter: str | None):
        """The query encoder trained with ``adapter`` (loaded once), or None for the configured embedder.

        At most ``config.query_encoder_cache`` encoders stay loaded (least recently used dropped), keyed by the
        adapter's resolved folder name; a retrained encoder (newer folder) replaces its old copy."""
        if not adapter:
            return None
        folder = self.generator.adapter_query_encoder(adapter)
        if folder is None:
            return None
        key = self.generator.adapter_path(adapter).resolve().name
        mtime = folder.stat().st_mtime_ns
        with self._lock:
            cached = self._query_encoders.get(key)
            if cached is not None and cached[0] == mtime:
                self._query_encoders.move_to_end(key)
                return cached[1]
            from ingest.config import EmbedderConfig
            from ingest.embedder import load_embedder

            logger.info("adapter %s brings its own query encoder (%s)", adapter, folder)
            embedder = load_embedder(EmbedderConfig(model=str(folder)))
            self._query_encoders[key] = (mtime, embedder)
            self._query_encoders.move_to_end(key)
            while len(self._query_encoders) > self.config.query_encoder_cache:
                dropped, _ = self._query_encoders.popitem(last=False)
                logger.info("query encoder of adapter %s dropped from the cache", dropped)
            return embedder

    def resolve_adapter(self, collection: str | None, adapter: str | None, style: str | None = None) -> Resolved:
        """The adapter that answers a request naming ``adapter`` (None: the default; ``"none"``: the bare model)
        in answer style ``style`` (None: any; the shipped default may serve only some styles)."""
        if self.adapter_resolver is not None:
            return self.adapter_resolver.resolve(collection, adapter, style)
        if adapter and adapter != NO_ADAPTER:
            return Resolved(adapter, "request")
        return Resolved(None, "none")

    def contexts(self, retrieval: Retrieval) -> list[str]:
        """The context blocks of ``retrieval``'s chunks, as the prompts hold them (:func:`format_contexts`)."""
        return format_contexts(self.generator.tokenizer, retrieval.chunks, self.config.max_context_tokens)

    def answer(
        self,
        collection: Collection,
        question: str,
        *,
        mode: str | None = None,
        k: int | None = None,
        adapter: str | None = None,
        sources: list[str] | None = None,
        titles: list[str] | None = None,
        on_token: Callable[[str], None] | None = None,
        abstain: bool = True,
        deadline_s: float | None = None,
        style: str | None = None,
    ) -> Answer:
        """Answer ``question`` from ``collection``; ``on_token`` receives text as it is generated.

        With ``abstain=False`` the thresholds are off (the model's own "I don't know" and an empty
        retrieval still abstain); :func:`rag.evaluate.compute_metrics` applies them afterwards.
        ``style``: ``"short"`` or ``"full"`` (None: ``QAConfig.answer_style``).
        """
        cfg = self.config
        mode = mode or cfg.mode
        strategy = STRATEGIES.get(mode)
        if strategy is None:
            raise QAError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        style = style or cfg.answer_style
        if style not in STYLES:
            raise QAError(f"unknown answer style {style!r}; use one of {', '.join(STYLES)}")
        question = question.strip()
        if not question:
            raise QAError("the question is empty")
        resolved = self.resolve_adapter(collection.name, adapter, style)
        adapter = resolved.adapter
        t0 = time.perf_counter()
        retrieval = self.retriever.retrieve(
            collection, question, k, sources=sources, titles=titles, query_embedder=self.query_embedder(adapter)
        )
        t_ret = time.perf_counter() - t0
        ans = self._new_answer(collection, question, mode, adapter, retrieval)
        ans.style, ans.adapter_source = style, resolved.source
        if not retrieval.chunks:
            return self._abstain(ans, "the collection returned no evidence", t0, t_ret, on_token)
        rule = AbstentionRule.for_collection(cfg, read_calibration(collection)) if abstain else AbstentionRule()
        reason = rule.evidence_reason(retrieval.max_dense_score)
        if reason is not None:
            ans.citations = self._citations(retrieval, [float(c.posterior) for c in retrieval.chunks])
            return self._abstain(ans, reason, t0, t_ret, on_token)

        used, request = self._request(strategy, question, retrieval, on_token, style)
        request.adapter, request.deadline_s = adapter, deadline_s
        t1 = time.perf_counter()
        if self.scheduler is not None:
            out = strategy.generate(
                BatchedDecoder(self.scheduler, self.generator, cfg, request), self.generator, cfg, request
            )
        else:
            with self.generator.session(adapter) as model:
                out = strategy.generate(SoloDecoder(model, self.generator, cfg, request), self.generator, cfg, request)
        t_gen = time.perf_counter() - t1
        self._record_generation(ans, out, retrieval, used)
        ans.timings = {"retrieve_s": t_ret, "generate_s": t_gen, "total_s": time.perf_counter() - t0}
        self._decide(ans, rule)
        if not ans.abstained:
            self._attribute(ans, strategy, out, request, retrieval, used)
        return ans

    def _new_answer(
        self, collection: Collection, question: str, mode: str, adapter: str | None, retrieval: Retrieval
    ) -> Answer:
        return Answer(
            answer_id=uuid.uuid4().hex,
            question=question,
            answer="",
            abstained=False,
            mode=mode,
            model=str(self.generator.name),
            adapter=adapter,
            collection=collection.name,
            citations=[],
            max_retrieval_score=retrieval.max_dense_score if retrieval.chunks else None,
        )

    def _request(
        self,
        strategy: AnswerStrategy,
        question: str,
        retrieval: Retrieval,
        on_token: Callable[[str], None] | None,
        style: str = "short",
    ) -> tuple[list[int], GenerationRequest]:
        """The documents ``strategy`` reads (indices into ``retrieval.chunks``) and its generation request."""
        gen = self.generator
        contexts = self.contexts(retrieval)
        doc_lp = torch.as_tensor(retrieval.log_posterior, dtype=torch.float32)
        selected = strategy.select_documents(doc_lp, self.config)
        used = list(range(len(contexts))) if selected is None else selected
        if selected is not None:
            doc_lp = torch.log_softmax(doc_lp[selected], dim=0)
            contexts = [contexts[i] for i in selected]
        request = GenerationRequest(
            question=question,
            contexts=contexts,
            doc_logprobs=doc_lp,
            posteriors=[float(c.posterior) for c in retrieval.chunks],
            reference_ids=gen.abstention_ids,
            stop=lambda ids: reply_complete(gen.decode(ids)),  # the first sentence / line is all clean_answer keeps
            stream=_TextStreamer(gen, on_token),
            on_token=on_token,
            rng=self._rng(),
            style=style,
            max_new_tokens=self.config.max_new_tokens,
        )
        if style == "full":
            check = None
            if self.config.full_stop_unsupported and self.config.full_min_support > 0:
                check = ClaimCheck([retrieval.chunks[i].text for i in used], self.config.full_min_support)
            # eos, the budget, the model repeating itself, or (check) a sentence the chunks read (as the guard) do not
            # support
            request.stop = FullReplyStop(gen.decode, sentence_ok=check)
            request.max_new_tokens = self.config.full_max_new_tokens
        return used, request

    def _record_generation(self, ans: Answer, out: Generated, retrieval: Retrieval, used: list[int]) -> None:
        """The raw answer, its likelihood signals and the citations (shares of the documents read)."""
        gen = self.generator
        eos = set(gen.eos_token_ids)
        n_answer = max(1, len([t for t in out.token_ids if t not in eos]))
        ans.raw_answer = gen.decode(out.token_ids)
        ans.generated_tokens = len(out.token_ids)
        ans.logprob = float(out.logprob)
        ans.mean_token_logprob = float(out.logprob) / n_answer
        if out.reference_logprob is not None:
            ans.idk_margin = out.reference_logprob / max(1, len(gen.abstention_ids) - 1) - ans.mean_token_logprob
        shares = [0.0] * len(retrieval.chunks)  # chunks skipped by min_doc_posterior contributed nothing
        for i, share in zip(used, out.contributions):
            shares[i] = share
        ans.citations = self._citations(retrieval, shares)

    @staticmethod
    def _decide(ans: Answer, rule: AbstentionRule) -> None:
        """The final answer: the model's own "I don't know", the rule's abstention, or the cleaned reply."""
        if is_abstention(ans.raw_answer):
            reason: str | None = "the model found no answer in the evidence"
        else:
            reason = rule.answer_reason(ans.mean_token_logprob, ans.idk_margin)
        if reason is not None:
            ans.answer, ans.abstained, ans.abstain_reason = ABSTAIN_TEXT, True, reason
        elif ans.style == "short":
            ans.answer = clean_answer(ans.raw_answer, ans.question)

    def _attribute(
        self,
        ans: Answer,
        strategy: AnswerStrategy,
        out: Generated,
        request: GenerationRequest,
        retrieval: Retrieval,
        used: list[int],
    ) -> None:
        """``ans.sentences`` and (full style) ``ans.answer`` with its markers.

        Short style: the cleaned answer is one sentence citing the chunks of the largest whole-answer
        shares. Full style: the reply trimmed by :func:`rag.extract.full_reply`, less the sentences the
        chunks read do not support (``full_min_support``), each sentence citing the documents chosen from
        ``strategy``'s per-sentence posterior over the documents it read and by word overlap (:meth:`_cite`);
        when no sentence is left, :meth:`_fall_back`.
        """
        chunks = [retrieval.chunks[i].text for i in used]
        if ans.style == "short":
            docs = choose_documents([ans.citations[i].contribution for i in used], self.config.citation_min_share)
            ans.sentences = [self._sentence(ans.answer, docs, used, chunks)] if ans.answer else []
            return
        reply = full_reply(out.token_ids, self.generator.decode, self.generator.eos_token_ids)
        if not reply.spans:  # e.g. the reply only started a new "Question:" turn, or repeated a lead-in
            if self.config.full_min_support > 0:
                ans.sentences_left_out = 0
                self._fall_back(ans, retrieval, used, chunks)  # the documents' own words, or "I don't know"
                return
            ans.answer, ans.abstained, ans.abstain_reason = ABSTAIN_TEXT, True, "the model gave no answer"
            return
        texts = [reply.text[a:b] for a, b in reply.spans]
        keep = supported_sentences(texts, chunks, self.config.full_min_support)
        if self.config.full_min_support > 0:
            keep = without_dangling_lead_ins(texts, keep)
        ans.sentences_left_out = len(texts) - len(keep)
        if ans.sentences_left_out:
            logger.info(
                "full answer: left out %d of %d sentences the chunks do not support", len(texts) - len(keep), len(texts)
            )
        if self.config.full_min_support > 0 and not any(content_words(texts[i]) for i in keep):
            # nothing the documents back is left (a kept sentence without content words says nothing)
            self._fall_back(ans, retrieval, used, chunks)
            return
        gaps = [reply.spans[i - 1][1] if i else 0 for i in keep]  # where the separator before each kept one starts
        spans = [reply.spans[i] for i in keep]
        texts = [texts[i] for i in keep]
        token_spans = token_sentence_spans(reply.token_ends, spans)
        shares = strategy.sentence_posteriors(out, request.doc_logprobs, token_spans, texts, chunks)
        ans.sentences = [
            self._sentence(text, self._cite(text, chunks, shares[s]), used, chunks) for s, text in enumerate(texts)
        ]
        ans.answer = with_markers(reply.text, spans, [s.citations for s in ans.sentences], gaps)
        self._extend_with_quote(ans, retrieval, used, chunks)

    def _cite(self, sentence: str, chunks: list[str], shares: torch.Tensor) -> list[int]:
        """The documents (indices into ``chunks``) a full answer's sentence cites."""
        if self.config.citation_by_overlap:
            return cite_supporting(sentence, chunks, shares, self.config.citation_min_share)
        return choose_documents(shares, self.config.citation_min_share)

    def _quote(self, question: str, retrieval: Retrieval, used: list[int], chunks: list[str]) -> Quote | None:
        """The read chunks' sentences that best match ``question`` (:func:`rag.attribution.extractive_fallback`),
        up to ``full_quote_min_words`` words (at least :data:`QUOTE_MIN_WORDS`)."""
        weights = [float(retrieval.chunks[i].posterior) for i in used]
        words = max(self.config.full_quote_min_words, QUOTE_MIN_WORDS)
        return extractive_fallback(
            question, chunks, weights, self.config.full_fallback_min_overlap, max(3, words // 10), words
        )

    def _extend_with_quote(self, ans: Answer, retrieval: Retrieval, used: list[int], chunks: list[str]) -> None:
        """A full answer shorter than ``full_quote_min_words`` goes on with the quote's sentences it does not
        already say (:func:`rag.attribution.unsaid_sentences`), as written, each citing its chunk, until it has
        that many words."""
        target = self.config.full_quote_min_words
        have = sum(len(x.text.split()) for x in ans.sentences)
        if have >= target:
            return
        quote = self._quote(ans.question, retrieval, used, chunks)
        if quote is None:
            return
        chunk, n = chunks[quote.chunk], used[quote.chunk] + 1
        spans: list[tuple[int, int]] = []
        for a, b in unsaid_sentences(quote, " ".join(x.text for x in ans.sentences)):
            if have >= target:
                break
            spans.append((a, b))
            have += len(chunk[a:b].split())
        if not spans:
            return
        sentences, text = self._quoted(chunk, spans, n)
        ans.sentences += sentences
        ans.answer = ans.answer.rstrip() + " " + text
        logger.info("full answer: %d sentences quoted from citation %d to reach %d words", len(spans), n, target)

    @staticmethod
    def _quoted(chunk: str, spans: list[tuple[int, int]], n: int) -> tuple[list[AnswerSentence], str]:
        """Sentences ``spans`` of ``chunk`` (citation ``n``) as quoted answer sentences and their text: each run of
        consecutive ones (:func:`rag.attribution.quote_runs`) is one passage, as written, with one marker."""
        runs = quote_runs(spans, chunk)
        sentences = [AnswerSentence(text=chunk[a:b], citations=[n], spans=[(a, b)], quoted=True) for a, b in runs]
        return sentences, " ".join(with_markers(chunk, [run], [[n]]) for run in runs)

    def _fall_back(self, ans: Answer, retrieval: Retrieval, used: list[int], chunks: list[str]) -> None:
        """No generated sentence is supported: quote the read chunks' sentences that best match the question
        (:meth:`_quote`), each citing its chunk, or say "I don't know"."""
        quote = self._quote(ans.question, retrieval, used, chunks)
        if quote is None:
            ans.answer, ans.abstained, ans.fallback = ABSTAIN_TEXT, True, "abstain"
            ans.abstain_reason = "the documents support no sentence of the answer"
            ans.sentences = []
            return
        ans.sentences, ans.answer = self._quoted(chunks[quote.chunk], [quote.span], used[quote.chunk] + 1)
        ans.fallback = "extractive"
        logger.info("full answer: no generated sentence is supported; quoting citation %d", used[quote.chunk] + 1)

    @staticmethod
    def _sentence(text: str, docs: list[int], used: list[int], chunks: list[str]) -> AnswerSentence:
        """An :class:`AnswerSentence` citing ``docs`` (indices into ``used`` / ``chunks``)."""
        return AnswerSentence(
            text=text, citations=[used[d] + 1 for d in docs], spans=[supporting_span(text, chunks[d]) for d in docs]
        )

    def _rng(self) -> torch.Generator | None:
        if self.config.seed is None:
            return None
        return torch.Generator().manual_seed(self.config.seed)

    @staticmethod
    def _citations(retrieval: Retrieval, contributions: list[float]) -> list[Citation]:
        out = []
        for i, c in enumerate(retrieval.chunks):
            share = contributions[i] if i < len(contributions) else 0.0
            out.append(
                Citation(
                    index=i + 1,
                    chunk_id=c.chunk_id,
                    doc_id=c.doc_id,
                    title=c.title,
                    source=c.source,
                    text=c.text,
                    score=float(
                        c.dense_score if c.dense_score is not None and not math.isnan(c.dense_score) else c.score
                    ),
                    posterior=float(c.posterior),
                    contribution=float(share),
                    metadata=c.metadata,
                )
            )
        return out

    def _abstain(self, ans: Answer, reason: str, t0: float, t_ret: float, on_token) -> Answer:
        ans.answer, ans.abstained, ans.abstain_reason = ABSTAIN_TEXT, True, reason
        ans.timings = {"retrieve_s": t_ret, "generate_s": 0.0, "total_s": time.perf_counter() - t0}
        if on_token is not None:
            on_token(ABSTAIN_TEXT)
        return ans
