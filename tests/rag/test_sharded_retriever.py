"""rag.sharded_retriever without a cluster: the shards of a real collection partition its chunks, and their
merged top-n is the single FAISS index's top-n (the Ray fan-out itself is tested in tests/distributed)."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.collection import Collection
from ingest.config import ChunkingConfig, IndexConfig
from ingest.documents import Chunk, Document, stable_hash
from rag.sharded_retriever import VectorShard, merge_topk, shard_of

DIM = 16


@pytest.fixture()
def coll(tmp_path):
    rng = np.random.default_rng(0)
    c = Collection.create(
        tmp_path / "collections", "c", embedder_name="random", dim=DIM, chunking=ChunkingConfig(), index=IndexConfig()
    )
    for f in range(6):  # six files of 50 chunks: six store generations
        source = f"/docs/{f}.txt"
        docs = [Document(text=f"doc {f}-{i}", source=source, key=str(i)) for i in range(50)]
        chunks = [Chunk(stable_hash(d.doc_id, "0"), d.doc_id, 0, d.text, {"source": source}) for d in docs]
        vecs = rng.standard_normal((50, DIM)).astype(np.float32)
        c.replace_file(source, stable_hash(source), 1, docs, chunks, vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    c.flush()
    yield c
    c.close()


@pytest.mark.parametrize("n_shards", [1, 2, 5])
def test_shards_partition_the_collection_and_merge_to_the_single_index(coll, n_shards) -> None:
    args = (str(coll.store.path), DIM, coll.index_config.model_dump())
    shards = [VectorShard(*args, i, n_shards) for i in range(n_shards)]
    infos = [s.info() for s in shards]
    assert [i[0] for i in infos] == list(range(n_shards))
    assert {i[1] for i in infos} == {coll.store.generation}  # each loaded the committed generation
    assert sum(i[2] for i in infos) == coll.store.count_chunks() == 300
    rng = np.random.default_rng(1)
    for _ in range(10):
        q = rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        parts = [s.search(q, 20) for s in shards]
        for i, part in enumerate(parts):  # each shard returns only its own chunks
            assert all(int(shard_of(np.array([fid]), n_shards)[0]) == i for fid, _ in part)
        merged = merge_topk(parts, 20)
        single = coll.search(q, 20)
        assert [fid for fid, _ in merged] == [h.faiss_id for h in single]
        assert np.allclose([s for _, s in merged], [h.score for h in single], atol=1e-6)


def test_an_empty_shard_answers_nothing(tmp_path) -> None:
    c = Collection.create(
        tmp_path / "collections", "e", embedder_name="random", dim=DIM, chunking=ChunkingConfig(), index=IndexConfig()
    )
    c.close()
    shard = VectorShard(str(tmp_path / "collections" / "e" / "store.sqlite"), DIM, IndexConfig().model_dump(), 0, 2)
    assert shard.info() == (0, 0, 0)
    assert shard.search(np.ones(DIM, dtype=np.float32) / 4, 5) == []
