"""Question answering: retrieve evidence, generate a short answer in one of three modes, cite.

Modes (Lewis et al. 2020 for the two RAG ones):

* ``stuff`` — all K chunks in one prompt (the common baseline);
* ``rag-sequence`` — one prompt per document; candidates ranked by
  p(y|x) = sum_z p(z|x) prod_i p(y_i|x,z,y<i) ("thorough" or "fast" decoding);
* ``rag-token`` — one prompt per document run as one batch; at every step the next-token
  distributions are mixed by p(z|x).

Abstention: when the best dense cosine of the evidence is below ``abstain_min_score`` the
system says it does not know without generating; when the answer's mean per-token marginal
log-likelihood is below ``abstain_min_logprob``, or the model's own "I don't know." (scored from
the same prefill under the same marginal) beats the answer per token by more than
``abstain_max_idk_margin``, it withholds the answer; and when the model itself answers "I don't
know" that is reported as an abstention. Answers are cut to their first sentence and cleaned by
:mod:`rag.extract`; decoding stops as soon as that sentence is complete.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ingest.collection import Collection
from rag.config import QAConfig
from rag.decoding import rag_sequence_generate, rag_token_generate
from rag.errors import QAError
from rag.extract import clean_answer, reply_complete
from rag.generator import Generator
from rag.prompts import ABSTAIN_TEXT, is_abstention
from rag.retriever import Retrieval, Retriever

logger = logging.getLogger(__name__)

MODES = ("stuff", "rag-sequence", "rag-token")


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
class Answer:
    answer_id: str
    question: str
    answer: str
    abstained: bool
    mode: str
    model: str
    adapter: str | None
    collection: str
    citations: list[Citation]
    logprob: float | None = None
    mean_token_logprob: float | None = None
    idk_margin: float | None = None  # mean per-token log p("I don't know.") - the answer's (same marginal)
    max_retrieval_score: float | None = None
    abstain_reason: str | None = None
    raw_answer: str = ""
    generated_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)

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


class QAPipeline:
    """Retriever + generator. One instance serves many questions (models load once)."""

    def __init__(self, retriever: Retriever, generator: Generator, config: QAConfig | None = None) -> None:
        self.retriever = retriever
        self.generator = generator
        self.config = config or QAConfig()
        self._query_encoders: dict[str, Any] = {}
        self._lock = threading.Lock()

    def query_embedder(self, adapter: str | None):
        """The query encoder trained with ``adapter`` (loaded once), or None for the configured embedder."""
        if not adapter:
            return None
        folder = self.generator.adapter_query_encoder(adapter)
        if folder is None:
            return None
        with self._lock:
            key = f"{adapter}:{folder.stat().st_mtime_ns}"
            if key not in self._query_encoders:
                from ingest.config import EmbedderConfig
                from ingest.embedder import load_embedder

                logger.info("adapter %s brings its own query encoder (%s)", adapter, folder)
                self._query_encoders[key] = load_embedder(EmbedderConfig(model=str(folder)))
            return self._query_encoders[key]

    def _contexts(self, retrieval: Retrieval) -> list[str]:
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
    ) -> Answer:
        """Answer ``question`` from ``collection``; ``on_token`` receives text as it is generated."""
        cfg = self.config
        mode = mode or cfg.mode
        if mode not in MODES:
            raise QAError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        question = question.strip()
        if not question:
            raise QAError("the question is empty")
        t0 = time.perf_counter()
        retrieval = self.retriever.retrieve(
            collection, question, k, sources=sources, titles=titles, query_embedder=self.query_embedder(adapter)
        )
        t_ret = time.perf_counter() - t0
        ans = Answer(
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
        posts = [float(c.posterior) for c in retrieval.chunks]
        if not retrieval.chunks:
            return self._abstain(ans, "the collection returned no evidence", t0, t_ret, on_token)
        if abstain and cfg.abstain_min_score is not None and retrieval.max_dense_score < cfg.abstain_min_score:
            ans.citations = self._citations(retrieval, posts)
            return self._abstain(
                ans, f"best evidence score {retrieval.max_dense_score:.3f} < {cfg.abstain_min_score:.3f}", t0, t_ret, on_token
            )

        gen = self.generator
        contexts = self._contexts(retrieval)
        idk = gen.abstention_ids
        used = list(range(len(contexts)))
        doc_lp = torch.as_tensor(retrieval.log_posterior, dtype=torch.float32)
        if mode != "stuff":
            used = kept_documents(doc_lp, cfg.min_doc_posterior)
            doc_lp = torch.log_softmax(doc_lp[used], dim=0)
            contexts = [contexts[i] for i in used]

        def stop(ids: list[int]) -> bool:  # the first sentence / line is all clean_answer keeps
            return reply_complete(gen.decode(ids))

        emitted: list[int] = []
        streamed = [""]

        def stream(token_id: int) -> None:
            if on_token is None:
                return
            emitted.append(token_id)
            text = gen.decode(emitted)
            if len(text) > len(streamed[0]):
                on_token(text[len(streamed[0]):])
                streamed[0] = text

        t1 = time.perf_counter()
        with gen.session(adapter) as model:
            if mode == "stuff":
                prompts = [gen.prompt_ids(question, contexts, one_shot=cfg.one_shot)]
                out = rag_token_generate(
                    model, prompts, torch.zeros(1), max_new_tokens=cfg.max_new_tokens,
                    eos_token_ids=gen.eos_token_ids, strategy=cfg.strategy, num_beams=cfg.num_beams,
                    temperature=cfg.temperature, top_p=cfg.top_p, generator=self._rng(),
                    stream_callback=stream, pad_token_id=gen.tokenizer.pad_token_id, reference_ids=idk, stop=stop,
                )
                tokens, logprob, contrib, idk_lp = out.token_ids, out.logprob, posts, out.reference_logprob
            elif mode == "rag-token":
                prompts = [gen.prompt_ids(question, [c], one_shot=cfg.one_shot) for c in contexts]
                out = rag_token_generate(
                    model, prompts, doc_lp, max_new_tokens=cfg.max_new_tokens,
                    eos_token_ids=gen.eos_token_ids, strategy=cfg.strategy, num_beams=cfg.num_beams,
                    temperature=cfg.temperature, top_p=cfg.top_p, generator=self._rng(),
                    stream_callback=stream, pad_token_id=gen.tokenizer.pad_token_id, reference_ids=idk, stop=stop,
                )
                tokens, logprob, contrib = out.token_ids, out.logprob, list(out.doc_contributions)
                idk_lp = out.reference_logprob
            else:
                prompts = [gen.prompt_ids(question, [c], one_shot=cfg.one_shot) for c in contexts]
                hyps = rag_sequence_generate(
                    model, prompts, doc_lp, max_new_tokens=cfg.max_new_tokens, eos_token_ids=gen.eos_token_ids,
                    num_beams=cfg.num_beams, decoding=cfg.decoding, pad_token_id=gen.tokenizer.pad_token_id,
                    reference_ids=idk, stop=stop,
                )
                best = hyps[0]
                tokens, logprob, contrib = best.token_ids, best.logprob, list(best.doc_posterior)
                idk_lp = best.reference_logprob
                if on_token is not None:
                    on_token(gen.decode(tokens))
        t_gen = time.perf_counter() - t1
        eos = set(gen.eos_token_ids)
        n_answer = max(1, len([t for t in tokens if t not in eos]))
        raw = gen.decode(tokens)
        ans.raw_answer = raw
        ans.generated_tokens = len(tokens)
        ans.logprob = float(logprob)
        ans.mean_token_logprob = float(logprob) / n_answer
        if idk_lp is not None:
            ans.idk_margin = idk_lp / max(1, len(idk) - 1) - ans.mean_token_logprob
        shares = [0.0] * len(retrieval.chunks)  # chunks skipped by min_doc_posterior contributed nothing
        for i, share in zip(used, contrib):
            shares[i] = share
        ans.citations = self._citations(retrieval, shares)
        ans.timings = {"retrieve_s": t_ret, "generate_s": t_gen, "total_s": time.perf_counter() - t0}
        if is_abstention(raw):
            ans.answer, ans.abstained, ans.abstain_reason = ABSTAIN_TEXT, True, "the model found no answer in the evidence"
        elif abstain and cfg.abstain_min_logprob is not None and ans.mean_token_logprob < cfg.abstain_min_logprob:
            ans.answer, ans.abstained = ABSTAIN_TEXT, True
            ans.abstain_reason = f"answer likelihood {ans.mean_token_logprob:.3f} < {cfg.abstain_min_logprob:.3f} per token"
        elif (
            abstain and cfg.abstain_max_idk_margin is not None and ans.idk_margin is not None
            and ans.idk_margin > cfg.abstain_max_idk_margin
        ):
            ans.answer, ans.abstained = ABSTAIN_TEXT, True
            ans.abstain_reason = (
                f"the model finds \"I don't know\" likelier than its answer (margin {ans.idk_margin:.3f} "
                f"> {cfg.abstain_max_idk_margin:.3f} per token)"
            )
        else:
            ans.answer = clean_answer(raw, question)
        return ans

    def _rng(self) -> torch.Generator | None:
        if self.config.seed is None:
            return None
        return torch.Generator().manual_seed(self.config.seed)

    @staticmethod
    def _citations(retrieval: Retrieval, contributions: list[float]) -> list[Citation]:
        out = []
        for i, c in enumerate(retrieval.chunks):
            share = contributions[i] if i < len(contributions) else 0.0
            out.append(Citation(
                index=i + 1, chunk_id=c.chunk_id, doc_id=c.doc_id, title=c.title, source=c.source, text=c.text,
                score=float(c.dense_score if c.dense_score is not None and not math.isnan(c.dense_score) else c.score),
                posterior=float(c.posterior), contribution=float(share), metadata=c.metadata,
            ))
        return out

    def _abstain(self, ans: Answer, reason: str, t0: float, t_ret: float, on_token) -> Answer:
        ans.answer, ans.abstained, ans.abstain_reason = ABSTAIN_TEXT, True, reason
        ans.timings = {"retrieve_s": t_ret, "generate_s": 0.0, "total_s": time.perf_counter() - t0}
        if on_token is not None:
            on_token(ABSTAIN_TEXT)
        return ans
