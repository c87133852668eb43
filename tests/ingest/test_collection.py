"""Collection = FAISS index + SQLite store: add, replace, delete, reopen, mismatch, index kinds."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.collection import Collection, delete_collection, list_collections
from ingest.config import ChunkingConfig, IndexConfig
from ingest.documents import Chunk, Document, stable_hash
from ingest.errors import CollectionError, CollectionExistsError, CollectionNotFoundError, EmbedderMismatchError

DIM = 16


def unit(rng, n):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_file(source: str, n_docs: int, n_chunks: int, rng, title: str = "T"):
    docs, chunks = [], []
    for d in range(n_docs):
        doc = Document(text=f"doc {d} of {source}", source=source, key=str(d), title=f"{title}{d}")
        docs.append(doc)
        for c in range(n_chunks):
            text = f"{source} doc {d} chunk {c}"
            chunks.append(
                Chunk(
                    stable_hash(doc.doc_id, str(c), text), doc.doc_id, c, text, {"title": doc.title, "source": source}
                )
            )
    return docs, chunks, unit(rng, len(chunks))


def new(tmp_path, kind="flat", name="c"):
    return Collection.create(
        tmp_path, name, embedder_name="emb", dim=DIM, chunking=ChunkingConfig(), index=IndexConfig(kind=kind, nlist=4)
    )


class TestCollection:
    def test_add_search_reopen(self, tmp_path):
        rng = np.random.default_rng(0)
        coll = new(tmp_path)
        docs, chunks, vecs = make_file("/a.txt", 2, 3, rng)
        assert coll.replace_file("/a.txt", "h1", 10, docs, chunks, vecs) == (0, 6)
        hits = coll.search(vecs[4], k=2)
        assert hits[0].chunk_id == chunks[4].chunk_id and hits[0].score == pytest.approx(1.0, abs=1e-5)
        coll.close()
        again = Collection.open(tmp_path, "c", embedder_name="emb")
        assert again.info()["chunks"] == 6 and again.info()["documents"] == 2
        assert again.search(vecs[1], k=1)[0].chunk_id == chunks[1].chunk_id
        assert again.check_consistency() == []
        again.close()

    def test_replace_exactly_its_chunks(self, tmp_path):
        rng = np.random.default_rng(1)
        coll = new(tmp_path)
        a = make_file("/a.txt", 1, 3, rng)
        b = make_file("/b.txt", 1, 2, rng)
        coll.replace_file("/a.txt", "a1", 1, *a)
        coll.replace_file("/b.txt", "b1", 1, *b)
        a2 = make_file("/a.txt", 1, 1, rng, title="New")
        assert coll.replace_file("/a.txt", "a2", 1, *a2) == (3, 1)
        assert coll.index.ntotal == 3
        assert coll.file_hash("/a.txt") == "a2"
        # Old vectors of a.txt are gone; b.txt untouched.
        assert all(h.source != "/a.txt" or h.title == "New0" for h in coll.search(a[2][0], k=10))
        assert coll.search(b[2][1], k=1)[0].chunk_id == b[1][1].chunk_id
        coll.close()

    def test_delete_by_id_and_source(self, tmp_path):
        rng = np.random.default_rng(2)
        coll = new(tmp_path)
        a = make_file("/a.txt", 2, 2, rng)
        b = make_file("/b.txt", 1, 2, rng)
        coll.replace_file("/a.txt", "a", 1, *a)
        coll.replace_file("/b.txt", "b", 1, *b)
        assert coll.delete_documents(doc_ids=[a[0][0].doc_id]) == 1
        assert coll.index.ntotal == 4
        assert coll.delete_documents(sources=["/b.txt"]) == 1
        assert coll.file_hash("/b.txt") is None
        assert {h.doc_id for h in coll.search(b[2][0], k=10)} == {a[0][1].doc_id}
        assert coll.delete_documents(doc_ids=["nope"]) == 0
        coll.close()
        again = Collection.open(tmp_path, "c")
        assert again.index.ntotal == 2 and again.check_consistency() == []
        again.close()

    def test_filters(self, tmp_path):
        rng = np.random.default_rng(3)
        coll = new(tmp_path)
        a = make_file("/a.txt", 1, 3, rng, title="Alpha")
        b = make_file("/b.txt", 1, 3, rng, title="Beta")
        coll.replace_file("/a.txt", "a", 1, *a)
        coll.replace_file("/b.txt", "b", 1, *b)
        hits = coll.search(a[2][0], k=10, sources=["/b.txt"])
        assert len(hits) == 3 and all(h.source == "/b.txt" for h in hits)
        hits = coll.search(a[2][0], k=2, titles=["Alpha0"])
        assert [h.chunk_id for h in hits][0] == a[1][0].chunk_id
        coll.close()

    def test_embedder_mismatch_is_clear(self, tmp_path):
        new(tmp_path).close()
        with pytest.raises(EmbedderMismatchError, match="built with embedder 'emb'"):
            Collection.open(tmp_path, "c", embedder_name="other-model")

    def test_errors(self, tmp_path):
        new(tmp_path).close()
        with pytest.raises(CollectionExistsError):
            new(tmp_path)
        with pytest.raises(CollectionNotFoundError, match="known: c"):
            Collection.open(tmp_path, "missing")
        with pytest.raises(CollectionError, match="invalid collection name"):
            Collection.open(tmp_path, "../etc")
        writer = Collection.open(tmp_path, "c")
        with pytest.raises(CollectionError, match="another process"):
            Collection.open(tmp_path, "c")
        reader = Collection.open(tmp_path, "c", readonly=True)  # readers are never blocked
        reader.close()
        writer.close()

    def test_delete_collection(self, tmp_path):
        new(tmp_path, name="x").close()
        assert list_collections(tmp_path) == ["x"]
        delete_collection(tmp_path, "x")
        assert list_collections(tmp_path) == []
        with pytest.raises(CollectionNotFoundError):
            delete_collection(tmp_path, "x")

    def test_stale_index_is_rebuilt_from_store(self, tmp_path):
        """A crash after the SQLite commit but before the index save is repaired on open."""
        rng = np.random.default_rng(4)
        coll = new(tmp_path)
        a = make_file("/a.txt", 1, 4, rng)
        coll.replace_file("/a.txt", "a", 1, *a)
        coll.flush()
        b = make_file("/b.txt", 1, 4, rng)
        coll.store.replace_file("/b.txt", "b", 1, *b)  # committed, index never saved
        coll.store.close()
        coll._lock_fh.close()
        again = Collection.open(tmp_path, "c")
        assert again.index.ntotal == 8
        assert again.search(b[2][3], k=1)[0].chunk_id == b[1][3].chunk_id
        assert sorted(p.name for p in tmp_path.joinpath("c").glob("index-*.faiss")) == [
            f"index-{again.store.generation}.faiss"
        ]
        again.close()

    def test_corrupt_index_file_is_rebuilt(self, tmp_path):
        rng = np.random.default_rng(5)
        coll = new(tmp_path)
        a = make_file("/a.txt", 1, 4, rng)
        coll.replace_file("/a.txt", "a", 1, *a)
        coll.close()
        (path,) = tmp_path.joinpath("c").glob("index-*.faiss")
        path.write_bytes(b"garbage")
        again = Collection.open(tmp_path, "c")
        assert again.index.ntotal == 4 and again.check_consistency() == []
        again.close()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_index_kinds(tmp_path, kind):
    rng = np.random.default_rng(6)
    coll = Collection.create(
        tmp_path,
        "k",
        embedder_name="emb",
        dim=DIM,
        chunking=ChunkingConfig(),
        index=IndexConfig(kind=kind, nlist=4, pq_m=4),
    )
    files = [make_file(f"/f{i}.txt", 1, 40, rng) for i in range(5)]
    for i, f in enumerate(files):
        coll.replace_file(f"/f{i}.txt", str(i), 1, *f)
    coll.flush()
    info = coll.info()
    assert info["chunks"] == 200 and coll.index.ntotal == 200
    built = info["index_built"]
    assert built == kind if kind != "ivfpq" else built == "flat"  # PQ waits for enough vectors
    probe = files[2][2][7]
    top = coll.search(probe, k=5)
    if kind in ("flat", "hnsw", "ivf"):
        assert top[0].chunk_id == files[2][1][7].chunk_id
    coll.delete_documents(sources=["/f2.txt"])
    assert coll.index.ntotal == 160
    assert all(h.source != "/f2.txt" for h in coll.search(probe, k=20))
    coll.close()
    again = Collection.open(tmp_path, "k")
    assert again.index.ntotal == 160 and again.check_consistency() == []
    again.close()
