"""The retriever: dense (FAISS) + BM25 search over a collection, fused by reciprocal rank fusion.

Per query (``Retriever.retrieve``):

1. The query is embedded once (always: every returned chunk gets its dense cosine).
2. Each enabled part fetches ``candidates`` chunks (at least ``k``) under the same source/title
   filters: dense through :meth:`ingest.collection.Collection.search`, BM25 through the
   collection's cached :class:`rag.bm25.BM25Index` (only chunks sharing a term with the query).
3. ``hybrid`` fuses the two rankings with :func:`rrf_fuse`; ``dense``/``bm25`` keep their own.
4. Optional MMR (:func:`mmr_select`) re-ranks the fused candidates for diversity; else the top
   ``k`` are taken.
5. Each returned chunk carries every component score (cosine from its stored vector, BM25 score,
   RRF score, per-part ranks) and the document posterior p(z|x).

The posterior is ``softmax(s / temperature)`` over the K returned chunks with ``s`` the dense
cosine in ``dense`` and ``hybrid`` mode (the RAG paper's inner-product prior; RRF scores are
rank artefacts with no scale to take a softmax of), and in ``bm25`` mode the BM25 score divided
by the best BM25 score among the K chunks (in (0, 1], so one temperature fits both). The
order of the chunks is the retrieval order (fused rank), so in ``hybrid`` mode the posterior
need not decrease with rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from rag.bm25 import BM25Cache, BM25Index
from rag.config import RetrieverConfig
from rag.errors import RetrieverError

if TYPE_CHECKING:  # pragma: no cover
    from ingest.collection import Collection
    from ingest.store import ChunkRow

logger = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "QueryEmbedder",
    "RetrievedChunk",
    "Retrieval",
    "Retriever",
    "RetrieverError",
    "log_softmax_posterior",
    "mmr_select",
    "rrf_fuse",
    "softmax_posterior",
]

Mode = Literal["hybrid", "dense", "bm25"]
MODES: tuple[str, ...] = ("hybrid", "dense", "bm25")


class QueryEmbedder(Protocol):
    """What the retriever needs from an embedder (:class:`ingest.embedder.Embedder` has it)."""

    dim: int

    def embed_query(self, text: str) -> np.ndarray:
        """``(dim,)`` float32 of unit L2 norm."""
        ...


# -- pure maths ----------------------------------------------------------------------------------


def rrf_fuse(rankings: Sequence[Sequence[int]], k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal rank fusion (Cormack et al. 2009).

    Args:
        rankings: R rankings, each a sequence of ids, best first (lengths may differ; an id
            repeated within one ranking counts at its first position only).
        k: the RRF constant (60 in the paper); larger flattens the weight of the top ranks.

    Returns:
        ``(id, score)`` for every id in any ranking, with
        ``score(d) = sum_r 1 / (k + rank_r(d))`` (1-based ranks; rankings without ``d`` add 0),
        sorted by score descending; ties go to the id with the better best rank, then to the
        one seen first (rankings read in order).
    """
    if k < 0:
        raise ValueError(f"rrf k must be >= 0, got {k}")
    scores: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        seen: set[int] = set()
        for rank, doc in enumerate(ranking, start=1):
            if doc in seen:
                continue
            seen.add(doc)
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
            best[doc] = min(best.get(doc, rank), rank)
    order = {doc: i for i, doc in enumerate(scores)}  # first appearance
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]], order[kv[0]]))


def log_softmax_posterior(scores: np.ndarray | Sequence[float], temperature: float) -> np.ndarray:
    """``log p(z_k|x) = log_softmax(scores / temperature)``: scores ``(K,)`` -> ``(K,)`` float64 (``(0,)`` for K=0)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1) / temperature
    if s.size == 0:
        return s
    shifted = s - s.max()
    return shifted - np.log(np.exp(shifted).sum())


def softmax_posterior(scores: np.ndarray | Sequence[float], temperature: float) -> np.ndarray:
    """``p(z_k|x) = softmax(scores / temperature)``: scores ``(K,)`` -> ``(K,)`` float64 summing to 1."""
    return np.exp(log_softmax_posterior(scores, temperature))


def mmr_select(
    query_vec: np.ndarray,
    cand_vecs: np.ndarray,
    relevance: np.ndarray | None,
    k: int,
    lambda_: float = 0.5,
) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein 1998), greedy.

    Args:
        query_vec: ``(d,)`` unit query vector (used only when ``relevance`` is None).
        cand_vecs: ``(n, d)`` unit candidate vectors.
        relevance: ``(n,)`` relevance of each candidate; None means the cosine ``cand_vecs @ query_vec``.
        k: how many to select (at most ``n``).
        lambda_: 1 = pure relevance, 0 = pure diversity.

    Returns:
        ``min(k, n)`` candidate indices in selection order; step ``t`` picks
        ``argmax_{i not in S} lambda_ * rel_i - (1 - lambda_) * max_{j in S} cos(v_i, v_j)``
        (the redundancy term is 0 while ``S`` is empty; ties go to the lower index).
    """
    cand_vecs = np.asarray(cand_vecs, dtype=np.float64)
    n = cand_vecs.shape[0]
    if relevance is None:
        relevance = cand_vecs @ np.asarray(query_vec, dtype=np.float64)
    rel = np.asarray(relevance, dtype=np.float64).reshape(-1)
    if rel.shape != (n,):
        raise ValueError(f"relevance has shape {rel.shape}, expected ({n},)")
    selected: list[int] = []
    redundancy = np.zeros(n)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        score = np.where(available, lambda_ * rel - (1.0 - lambda_) * redundancy, -np.inf)
        i = int(np.argmax(score))
        selected.append(i)
        available[i] = False
        sims = cand_vecs @ cand_vecs[i]
        redundancy = sims if len(selected) == 1 else np.maximum(redundancy, sims)
    return selected


# -- results -------------------------------------------------------------------------------------


@dataclass
class RetrievedChunk:
    """One retrieved chunk with every score that went into its place.

    ``score`` is what ranked it: the cosine (dense mode), the BM25 score (bm25 mode) or the RRF
    score (hybrid). ``dense_score`` is always the cosine of the chunk's stored vector with the
    query; ``bm25_score`` is its BM25 score (0 when it shares no term; None in dense mode, where no
    BM25 index is consulted). Ranks are 1-based; ``dense_rank``/``bm25_rank`` are None when that
    part did not return the chunk among its candidates.
    """

    chunk_id: str
    doc_id: str
    text: str
    title: str
    source: str
    metadata: dict[str, Any]
    score: float
    dense_score: float
    bm25_score: float | None
    posterior: float
    rank: int
    rrf_score: float | None = None
    dense_rank: int | None = None
    bm25_rank: int | None = None
    faiss_id: int = -1

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(float(x), 6)

        return {
            "rank": self.rank,
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "title": self.title,
            "source": self.source,
            "score": r(self.score),
            "dense_score": r(self.dense_score),
            "bm25_score": r(self.bm25_score),
            "rrf_score": r(self.rrf_score),
            "dense_rank": self.dense_rank,
            "bm25_rank": self.bm25_rank,
            "posterior": r(self.posterior),
            "text": self.text,
            "metadata": self.metadata,
        }


@dataclass
class Retrieval:
    """The K retrieved chunks of a query and their posterior.

    ``log_posterior``: ``(K,)`` float64 numpy, ``log p(z_k|x)`` in the order of ``chunks`` (feed
    ``torch.from_numpy(...)`` to :mod:`rag.marginalize`). ``max_dense_score``: the highest dense
    cosine among the chunks (the evidence-strength signal for abstention), None when nothing was
    retrieved. ``posterior_score``: which score the posterior is a softmax of.
    """

    query: str
    chunks: list[RetrievedChunk]
    log_posterior: np.ndarray
    max_dense_score: float | None
    mode: str = "hybrid"
    posterior_score: str = "dense"
    temperature: float = 0.05

    @property
    def posterior(self) -> np.ndarray:
        """``(K,)`` p(z_k|x)."""
        return np.exp(self.log_posterior)

    def __len__(self) -> int:
        return len(self.chunks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "mode": self.mode,
            "posterior_score": self.posterior_score,
            "temperature": self.temperature,
            "max_dense_score": None if self.max_dense_score is None else round(self.max_dense_score, 6),
            "chunks": [c.to_dict() for c in self.chunks],
        }


# -- the retriever -------------------------------------------------------------------------------


@dataclass
class _Sparse:
    """A BM25 search: the index, the score of every chunk ``(n_chunks,)`` and the ranked hits."""

    index: BM25Index
    scores: np.ndarray
    ranked: list[tuple[int, float]]


@dataclass
class _Pool:
    """The candidates that survived to the final selection, aligned by position.

    ``hits``: ``(faiss_id, ranking score)``; ``vectors``: ``(n, d)`` stored vectors; ``cos``: ``(n,)``
    their cosine with the query; ``ranking_scores``: ``(n,)`` float64.
    """

    hits: list[tuple[int, float]]
    rows: dict[int, ChunkRow]
    vectors: np.ndarray
    cos: np.ndarray
    ranking_scores: np.ndarray


class Retriever:
    """Dense + BM25 retrieval over :class:`ingest.collection.Collection` objects.

    One instance serves many collections: BM25 indexes are cached per collection folder and
    store generation (see :class:`rag.bm25.BM25Cache`). Thread-safe.
    """

    def __init__(self, embedder: QueryEmbedder, config: RetrieverConfig | None = None) -> None:
        self.embedder = embedder
        self.config = config if config is not None else RetrieverConfig()
        self.bm25_cache = BM25Cache(self.config.bm25)

    def warm_up(self, collection: Collection) -> None:
        """Build (or load) the collection's BM25 index now rather than on the first query."""
        if self.config.mode != "dense":
            self.bm25_cache.get(collection)

    def bm25_index(self, collection: Collection) -> BM25Index:
        return self.bm25_cache.get(collection)

    def retrieve(
        self,
        collection: Collection,
        query: str,
        k: int | None = None,
        *,
        mode: Mode | None = None,
        sources: list[str] | None = None,
        titles: list[str] | None = None,
        mmr: bool | None = None,
        query_embedder: QueryEmbedder | None = None,
    ) -> Retrieval:
        """The top-``k`` chunks of ``collection`` for ``query`` (per-call arguments override the config).

        ``query_embedder`` replaces the configured embedder for the query side only (a query encoder
        fine-tuned against the collection's fixed document vectors); it must give vectors of the
        collection's dimension."""
        cfg = self.config
        k = k if k is not None else cfg.k
        mode = mode if mode is not None else cfg.mode
        mmr = mmr if mmr is not None else cfg.mmr
        self._check_request(collection, mode, k)
        n_cand = max(cfg.candidates, k)
        qvec = self._embed_query(collection, query, query_embedder)

        dense = self._dense_search(collection, qvec, n_cand, sources, titles) if mode in ("dense", "hybrid") else []
        sparse = self._sparse_search(collection, query, n_cand, sources, titles) if mode in ("bm25", "hybrid") else None
        ranked, rrf = self._fuse(mode, dense, sparse.ranked if sparse is not None else [])
        pool = self._candidates(collection, qvec, ranked[:n_cand] if mmr else ranked[:k])
        if pool is None:
            return self._empty(query, mode)
        order = self._mmr_order(qvec, pool, mode, k) if mmr else list(range(len(pool.hits)))
        log_post, posterior_score = self._posterior(pool, order, mode)
        chunks = self._chunks(pool, order, log_post, mode, dense, sparse, rrf)
        return Retrieval(
            query=query,
            chunks=chunks,
            log_posterior=log_post,
            max_dense_score=float(max(c.dense_score for c in chunks)),
            mode=mode,
            posterior_score=posterior_score,
            temperature=cfg.temperature,
        )

    def chunk_vectors(self, collection: Collection, faiss_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors of chunks ``faiss_ids``: faiss id -> ``(dim,)`` float32 (missing ids are absent)."""
        ids, vecs = collection.store.all_vectors(collection.dim, faiss_ids=[int(i) for i in faiss_ids])
        return {int(i): v for i, v in zip(ids, vecs)}

    # -- the steps of retrieve -------------------------------------------------------------------
    def _check_request(self, collection: Collection, mode: str, k: int) -> None:
        if mode not in MODES:
            raise RetrieverError(f"unknown retrieval mode {mode!r}; use one of {', '.join(MODES)}")
        if k < 1:
            raise RetrieverError(f"k must be >= 1, got {k}")
        self._check_embedder(collection)

    def _embed_query(self, collection: Collection, query: str, query_embedder: QueryEmbedder | None) -> np.ndarray:
        """The query vector ``(dim,)`` float32, always computed (every returned chunk gets its cosine)."""
        embedder = query_embedder if query_embedder is not None else self.embedder
        qvec = np.asarray(embedder.embed_query(query), dtype=np.float32).reshape(-1)
        if qvec.shape[0] != collection.dim:
            raise RetrieverError(
                f"the query encoder gives {qvec.shape[0]}-dimensional vectors but collection {collection.name!r} "
                f"holds {collection.dim}-dimensional ones"
            )
        return qvec

    @staticmethod
    def _dense_search(
        collection: Collection, qvec: np.ndarray, n: int, sources: list[str] | None, titles: list[str] | None
    ) -> list[tuple[int, float]]:
        """``(faiss_id, cosine)`` of the ``n`` nearest chunks under the filters, best first."""
        return [(h.faiss_id, float(h.score)) for h in collection.search(qvec, n, sources=sources, titles=titles)]

    def _sparse_search(
        self, collection: Collection, query: str, n: int, sources: list[str] | None, titles: list[str] | None
    ) -> _Sparse:
        """The BM25 scores of every chunk, and the ``n`` best that share a term with the query under the filters."""
        index = self.bm25_cache.get(collection)
        scores = index.scores(query)
        return _Sparse(index, scores, index.top(scores, n, index.mask(sources, titles)))

    def _fuse(
        self, mode: str, dense: list[tuple[int, float]], bm25: list[tuple[int, float]]
    ) -> tuple[list[tuple[int, float]], dict[int, float]]:
        """The ranking that places the chunks (``(faiss_id, ranking score)``, best first), and the RRF
        score of each chunk (empty unless ``hybrid``)."""
        if mode == "dense":
            return dense, {}
        if mode == "bm25":
            return bm25, {}
        ranked = rrf_fuse([[i for i, _ in dense], [i for i, _ in bm25]], self.config.rrf_k)
        return ranked, dict(ranked)

    def _candidates(self, collection: Collection, qvec: np.ndarray, hits: list[tuple[int, float]]) -> _Pool | None:
        """The stored rows and vectors of ``hits``, without chunks deleted meanwhile; None when none is left."""
        if not hits:
            return None
        ids = [i for i, _ in hits]
        rows = collection.store.get_chunks(ids)
        vecs = self.chunk_vectors(collection, ids)
        hits = [h for h in hits if h[0] in rows and h[0] in vecs]  # a concurrent delete
        if not hits:
            return None
        V = np.stack([vecs[i] for i, _ in hits])  # (n, d)
        return _Pool(
            hits=hits,
            rows=rows,
            vectors=V,
            cos=V @ qvec,
            ranking_scores=np.array([s for _, s in hits], dtype=np.float64),
        )

    def _mmr_order(self, qvec: np.ndarray, pool: _Pool, mode: str, k: int) -> list[int]:
        """Indices into ``pool`` picked by MMR: relevance is the cosine (dense) or the ranking score
        scaled so the best candidate has relevance 1 (RRF or BM25)."""
        if mode == "dense":
            rel = pool.cos.astype(np.float64)
        else:
            rel = pool.ranking_scores / max(float(pool.ranking_scores.max()), 1e-12)
        return mmr_select(qvec, pool.vectors, rel, k, self.config.mmr_lambda)

    def _posterior(self, pool: _Pool, order: list[int], mode: str) -> tuple[np.ndarray, str]:
        """``(log p(z|x) (K,), name of the score it is a softmax of)`` for the chunks ``order`` picks."""
        if mode == "bm25":
            sel = pool.ranking_scores[order]
            return log_softmax_posterior(sel / max(float(sel.max()), 1e-12), self.config.temperature), "bm25"
        return log_softmax_posterior(pool.cos[order].astype(np.float64), self.config.temperature), "dense"

    @staticmethod
    def _chunks(
        pool: _Pool,
        order: list[int],
        log_post: np.ndarray,
        mode: str,
        dense: list[tuple[int, float]],
        sparse: _Sparse | None,
        rrf: dict[int, float],
    ) -> list[RetrievedChunk]:
        """One :class:`RetrievedChunk` per picked candidate, with every component score and rank."""
        dense_rank = {i: r for r, (i, _) in enumerate(dense, start=1)}
        bm25_rank = {i: r for r, (i, _) in enumerate(sparse.ranked, start=1)} if sparse is not None else {}
        chunks: list[RetrievedChunk] = []
        for rank, (j, lp) in enumerate(zip(order, log_post), start=1):
            i, score = pool.hits[j]
            row = pool.rows[i]
            meta = row.metadata
            chunks.append(
                RetrievedChunk(
                    chunk_id=row.chunk_id,
                    doc_id=row.doc_id,
                    text=row.text,
                    title=str(meta.get("title", "")),
                    source=str(meta.get("source", "")),
                    metadata=meta,
                    score=float(score),
                    dense_score=float(pool.cos[j]),
                    bm25_score=sparse.index.score_of(sparse.scores, i) if sparse is not None else None,
                    posterior=float(math.exp(lp)),
                    rank=rank,
                    rrf_score=rrf.get(i) if mode == "hybrid" else None,
                    dense_rank=dense_rank.get(i),
                    bm25_rank=bm25_rank.get(i),
                    faiss_id=i,
                )
            )
        return chunks

    # -- helpers ---------------------------------------------------------------------------------
    def _empty(self, query: str, mode: str) -> Retrieval:
        return Retrieval(
            query=query,
            chunks=[],
            log_posterior=np.zeros(0, dtype=np.float64),
            max_dense_score=None,
            mode=mode,
            posterior_score="bm25" if mode == "bm25" else "dense",
            temperature=self.config.temperature,
        )

    def _check_embedder(self, collection: Collection) -> None:
        dim = getattr(self.embedder, "dim", None)
        if dim is not None and int(dim) != int(collection.dim):
            raise RetrieverError(
                f"the embedder gives {dim}-dimensional vectors but collection {collection.name!r} holds "
                f"{collection.dim}-dimensional ones (built with {collection.embedder_name!r}); configure that "
                "embedder or re-ingest the collection"
            )
        name = getattr(self.embedder, "name", None)
        if isinstance(name, str) and name and collection.embedder_name and name != collection.embedder_name:
            raise RetrieverError(
                f"collection {collection.name!r} was built with embedder {collection.embedder_name!r}, "
                f"not {name!r}; set RAGQA_INGEST__EMBEDDER__MODEL={collection.embedder_name} or re-ingest"
            )
