"""Dense search over N FAISS shards held by Ray actors (``retriever.backend: ray``).

The collection's chunk vectors are split by ``faiss_id % shards``; shard ``i`` is a Ray actor
(:class:`VectorShard`) that reads its slice from the collection's store (``store.sqlite``, read-only)
and builds its own FAISS index of the collection's kind. A query fans out to every shard (dense
top-``n`` each, in parallel) and the hits are merged by score; the rest of retrieval — BM25, RRF
fusion, MMR, posterior, per-chunk scores — is :class:`rag.retriever.Retriever`'s own code, which
:class:`ShardedRetriever` inherits and only swaps the dense step of. With an exact ('flat') index
the merged top-``n`` is the single index's top-``n``, so dense and hybrid results are the same
(ids, and scores to float tolerance); with an approximate kind (ivf, hnsw, ivfpq) each shard is
approximate on its own and results may differ as between any two approximate indexes.

Generations: every committed change bumps the store's ``generation``. A shard set is built for one
generation (each actor reads its slice between two reads of the generation and retries until they
agree; the set is rebuilt until all shards loaded the same one). Before each query the driver reads
the collection's generation (one SQLite read); on a change it builds a whole new set, then swaps it
in with one assignment. A query holds the set it started with, so it never mixes shards of two
generations; the old actors end when the last query holding them is done (Ray reference counting).

Nodes: each actor opens ``<collections_dir>/<name>/store.sqlite`` itself, so every node that hosts
shards needs the collections folder at the same path (one machine, or a shared file system).
Shard actors reserve no CPU (``num_cpus=0``) and are spread over the cluster's nodes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.config import RetrieverConfig
from rag.errors import RetrieverError
from rag.retriever import QueryEmbedder, Retriever

if TYPE_CHECKING:  # pragma: no cover
    from ingest.collection import Collection

logger = logging.getLogger(__name__)

__all__ = ["ShardSet", "ShardedRetriever", "VectorShard", "merge_topk", "shard_of"]

#: Times a shard set is rebuilt when its shards loaded different generations (a writer committed meanwhile).
MAX_BUILD_ATTEMPTS = 8


def shard_of(faiss_ids: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard of each chunk: ``faiss_ids (n,) int64 -> (n,) int64`` in ``[0, n_shards)``."""
    return np.asarray(faiss_ids, dtype=np.int64) % int(n_shards)


def merge_topk(parts: Sequence[Sequence[tuple[int, float]]], n: int) -> list[tuple[int, float]]:
    """The ``n`` best ``(faiss_id, score)`` over the shards' own top lists, best first.

    Each part is one shard's hits, best first; shards hold disjoint ids. Ties keep the order of the
    shards (a stable sort), as the single index keeps its own insertion order."""
    merged = [hit for part in parts for hit in part]
    merged.sort(key=lambda hit: -hit[1])
    return merged[:n]


class VectorShard:
    """One shard of a collection's vectors: the chunks with ``faiss_id % n_shards == shard`` in a FAISS index.

    Run as a Ray actor (``ray.remote(VectorShard)``); usable in-process too (tests, one-shard debugging).
    """

    def __init__(self, store_path: str, dim: int, index: dict[str, Any], shard: int, n_shards: int) -> None:
        from ingest.config import IndexConfig
        from ingest.index import build_index

        ids, vecs, generation = self._load(Path(store_path), dim, shard, n_shards)
        self.shard = shard
        self.generation = generation
        self.index = build_index(IndexConfig(**index), dim, vecs, ids)

    @staticmethod
    def _load(store_path: Path, dim: int, shard: int, n_shards: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``(ids (m,), vectors (m, dim), generation)`` of this shard, read at one generation of the store."""
        from ingest.store import SQLiteDocumentStore

        store = SQLiteDocumentStore(store_path, readonly=True)
        try:
            while True:  # every content change bumps the generation in its own transaction
                before = store.generation
                all_ids = np.asarray(store.faiss_ids(), dtype=np.int64)
                mine = all_ids[shard_of(all_ids, n_shards) == shard]
                ids, vecs = store.all_vectors(dim, faiss_ids=mine.tolist())
                if store.generation == before:
                    return ids, vecs, before
        finally:
            store.close()

    def info(self) -> tuple[int, int, int]:
        """``(shard, generation, vectors held)``."""
        return self.shard, self.generation, int(self.index.ntotal)

    def search(self, query: np.ndarray, n: int) -> list[tuple[int, float]]:
        """This shard's ``n`` nearest chunks to ``query`` ``(dim,)``: ``(faiss_id, cosine)``, best first."""
        if self.index.ntotal == 0:
            return []
        scores, ids = self.index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), min(n, self.index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


@dataclass(frozen=True)
class ShardSet:
    """The shard actors of one collection at one store generation (replaced whole, never changed)."""

    generation: int
    actors: tuple[Any, ...]
    sizes: tuple[int, ...]

    def search(self, query: np.ndarray, n: int) -> list[tuple[int, float]]:
        """Fan ``query`` out to every shard and merge: the ``n`` best ``(faiss_id, cosine)``."""
        import ray

        parts = ray.get([actor.search.remote(query, n) for actor in self.actors])
        return merge_topk(parts, n)


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RetrieverError(
            "retriever.backend 'ray' needs Ray: install it with `pip install -e '.[ray]'`, or set "
            "RAGQA_RETRIEVER__BACKEND=local"
        ) from exc
    return ray


class ShardedRetriever(Retriever):
    """:class:`~rag.retriever.Retriever` whose dense search runs over ``config.shards`` Ray actors.

    Filtered dense searches (``sources``/``titles``) stay exact scans of the stored vectors, as in the
    single-index retriever. Thread-safe; one shard set per collection folder.
    """

    def __init__(self, embedder: QueryEmbedder, config: RetrieverConfig | None = None) -> None:
        super().__init__(embedder, config)
        self._sets: dict[Path, ShardSet] = {}
        self._build_lock = threading.Lock()
        self.builds = 0  #: shard sets built (for tests)

    def warm_up(self, collection: Collection) -> None:
        super().warm_up(collection)
        self.shard_set(collection)

    def shard_set(self, collection: Collection) -> ShardSet:
        """The collection's shard set at its current store generation (built on a change, then swapped in)."""
        generation = collection.store.generation
        current = self._sets.get(collection.path)
        if current is not None and current.generation >= generation:
            return current
        with self._build_lock:
            current = self._sets.get(collection.path)
            if current is None or current.generation < generation:
                current = self._build(collection)
                self._sets[collection.path] = current  # the swap: one assignment
        return current

    def _connect(self):
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.config.ray_address, logging_level=logging.WARNING, log_to_driver=False)
        return ray

    def _build(self, collection: Collection) -> ShardSet:
        ray = self._connect()
        n = self.config.shards
        remote = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(VectorShard)
        args = (str(collection.store.path), collection.dim, collection.index_config.model_dump())
        t0 = time.perf_counter()
        for _attempt in range(MAX_BUILD_ATTEMPTS):
            actors = tuple(remote.remote(*args, i, n) for i in range(n))
            infos = ray.get([a.info.remote() for a in actors])
            generations = {g for _, g, _ in infos}
            if len(generations) == 1:
                self.builds += 1
                shard_set = ShardSet(generations.pop(), actors, tuple(size for _, _, size in infos))
                logger.info(
                    "collection %s: %d shard(s) %s at generation %d in %.2f s",
                    collection.name,
                    n,
                    list(shard_set.sizes),
                    shard_set.generation,
                    time.perf_counter() - t0,
                )
                return shard_set
            logger.info(
                "collection %s changed while its shards loaded (%s); loading again", collection.name, generations
            )
            for actor in actors:
                ray.kill(actor)
        raise RetrieverError(
            f"collection {collection.name!r} kept changing while its {n} shards loaded; retry when ingestion pauses"
        )

    def _dense_search(  # type: ignore[override]
        self, collection: Collection, qvec: np.ndarray, n: int, sources: list[str] | None, titles: list[str] | None
    ) -> list[tuple[int, float]]:
        """``(faiss_id, cosine)`` of the ``n`` nearest chunks, over the shards (exact store scan under filters)."""
        if sources or titles:
            return Retriever._dense_search(collection, qvec, n, sources, titles)
        return self.shard_set(collection).search(qvec, n)
