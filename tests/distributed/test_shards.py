"""rag.sharded_retriever on a real 2-node local Ray cluster: the same top-k as the single index, and
readers that move to a new store generation whole.

The collection is ingested with the tiny random sentence-transformers model (tests/conftest.py); the
single-index :class:`rag.retriever.Retriever` over the same collection is the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ingest.config import EmbedderConfig, IngestConfig
from rag.config import RetrieverConfig
from rag.retriever import Retriever
from rag.sharded_retriever import ShardedRetriever, merge_topk, shard_of

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration

TOPICS = [
    "The Danube flows through Vienna, Bratislava and Budapest before reaching the Black Sea.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Volcanoes erupt molten rock called lava when pressure builds under the crust.",
    "The Norman conquest of England began with the battle of Hastings in 1066.",
    "Mitochondria produce most of the chemical energy that powers a cell.",
    "Jazz grew out of blues and ragtime in New Orleans early in the twentieth century.",
    "The Great Barrier Reef is the largest coral reef system in the world.",
    "Tectonic plates drift a few centimetres a year over the mantle.",
    "Beethoven wrote nine symphonies, the last with a choral finale.",
    "The speed of light in vacuum is about 299,792 kilometres per second.",
    "Honey bees communicate the direction of flowers with a waggle dance.",
    "The printing press of Gutenberg spread books across Europe after 1450.",
    "Glaciers carve U-shaped valleys as they move down mountains.",
    "Python dictionaries map hashable keys to values with average constant-time lookup.",
    "The Amazon rainforest produces a large share of the world's oxygen and rain.",
    "Antibiotics kill bacteria but have no effect on viruses.",
    "The Silk Road linked China with the Mediterranean for trade in silk and spices.",
    "Saturn's rings are made mostly of ice particles with some rock.",
]
QUERIES = [
    "Which river flows through Vienna?",
    "How do plants make sugar from light?",
    "When was the battle of Hastings?",
    "What powers a cell?",
    "How fast is light?",
    "What are Saturn's rings made of?",
    "trade route between China and the Mediterranean",
]


@pytest.fixture()
def tiny_ws(tmp_path, tiny_st_model):
    from ingest.workspace import Workspace

    return Workspace(tmp_path / "home", IngestConfig(embedder=EmbedderConfig(model=str(tiny_st_model))))


@pytest.fixture(scope="module")
def ray_address(ray_cluster: str) -> Iterator[str]:
    """The cluster's address; this test process's Ray driver is shut down after the module."""
    yield ray_cluster
    if ray.is_initialized():
        ray.shutdown()


def _ingest(ws, root: Path, texts: list[str], start: int = 0) -> list[Path]:
    paths = []
    for i, text in enumerate(texts, start=start):
        path = root / f"doc{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    ws.ingest(paths, "c")
    return paths


def _same(single, sharded) -> None:
    assert [c.chunk_id for c in sharded.chunks] == [c.chunk_id for c in single.chunks]
    for a, b in zip(single.chunks, sharded.chunks):
        assert b.score == pytest.approx(a.score, abs=1e-6)
        assert b.dense_score == pytest.approx(a.dense_score, abs=1e-6)
        assert (b.bm25_score is None) == (a.bm25_score is None)
        if a.bm25_score is not None:
            assert b.bm25_score == pytest.approx(a.bm25_score, abs=1e-6)
        assert b.rrf_score == a.rrf_score if a.rrf_score is None else b.rrf_score == pytest.approx(a.rrf_score)
        assert (b.dense_rank, b.bm25_rank) == (a.dense_rank, a.bm25_rank)
    assert np.allclose(sharded.log_posterior, single.log_posterior, atol=1e-6)


def test_merge_topk_and_shard_of() -> None:
    assert merge_topk([[(1, 0.9), (3, 0.2)], [(2, 0.5), (4, 0.4)], []], 3) == [(1, 0.9), (2, 0.5), (4, 0.4)]
    assert merge_topk([], 3) == []
    ids = np.array([0, 5, 6, 7, 2**62 + 3], dtype=np.int64)
    assert shard_of(ids, 2).tolist() == [0, 1, 0, 1, 1]


@pytest.mark.parametrize("shards", [1, 2])
def test_same_top_k_as_the_single_index(tiny_ws, tmp_path, ray_address, shards) -> None:
    _ingest(tiny_ws, tmp_path / "docs", TOPICS)
    # candidates < chunks: each part's top list is a real selection, not the whole collection
    cfg = dict(k=4, candidates=6)
    single = Retriever(tiny_ws.embedder, RetrieverConfig(**cfg))
    sharded = ShardedRetriever(
        tiny_ws.embedder, RetrieverConfig(**cfg, backend="ray", shards=shards, ray_address=ray_address)
    )
    with tiny_ws.open("c", readonly=True) as coll:
        shard_set = sharded.shard_set(coll)
        assert len(shard_set.actors) == shards
        assert sum(shard_set.sizes) == coll.store.count_chunks()
        assert shard_set.generation == coll.store.generation
        for q in QUERIES:
            for mode in ("dense", "hybrid"):
                _same(single.retrieve(coll, q, mode=mode), sharded.retrieve(coll, q, mode=mode))
        # a filtered search is the same exact scan of the stored vectors in both
        src = [str(tmp_path / "docs" / "doc00.txt"), str(tmp_path / "docs" / "doc03.txt")]
        _same(single.retrieve(coll, QUERIES[0], sources=src), sharded.retrieve(coll, QUERIES[0], sources=src))
    assert sharded.builds == 1  # one shard set for the generation, reused by every query


def test_a_query_after_an_ingest_sees_the_new_generation(tiny_ws, tmp_path, ray_address) -> None:
    _ingest(tiny_ws, tmp_path / "docs", TOPICS[:8])
    sharded = ShardedRetriever(tiny_ws.embedder, RetrieverConfig(k=3, backend="ray", shards=2, ray_address=ray_address))
    new_text = "The quokka is a small marsupial that lives on Rottnest Island near Perth."
    with tiny_ws.open("c", readonly=True) as coll:
        old = sharded.shard_set(coll)
        before = sharded.retrieve(coll, new_text, mode="dense")
        assert all("quokka" not in c.text for c in before.chunks)

        _ingest(tiny_ws, tmp_path / "more", [new_text], start=50)  # another writer commits one file
        assert coll.store.generation > old.generation

        after = sharded.retrieve(coll, new_text, mode="dense")
        assert "quokka" in after.chunks[0].text
        assert after.chunks[0].dense_score == pytest.approx(1.0, abs=1e-5)
        new = sharded.shard_set(coll)
        assert new is not old and new.generation == coll.store.generation
        assert sum(new.sizes) == sum(old.sizes) + 1 == coll.store.count_chunks()
        # a query that still holds the old set reads a whole old generation, never a mix
        new_id = after.chunks[0].faiss_id
        assert new_id not in {i for i, _ in old.search(_qvec(tiny_ws, new_text), 50)}
        hybrid = sharded.retrieve(coll, "quokka marsupial Rottnest", mode="hybrid")
        assert hybrid.chunks[0].faiss_id == new_id
    assert sharded.builds == 2


def _qvec(ws, text: str) -> np.ndarray:
    return np.asarray(ws.embedder.embed_query(text), dtype=np.float32)
