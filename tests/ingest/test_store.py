"""The SQLite document store's typed reads: vectors filtered by chunk id, document id, source and title."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.documents import Chunk, Document, stable_hash
from ingest.store import DocumentStore, SQLiteDocumentStore

DIM = 4


def add_file(store: SQLiteDocumentStore, source: str, titles: list[str], n_chunks: int = 2) -> dict[str, list[int]]:
    """Write ``source`` with one document per title; returns doc_id -> the faiss ids of its chunks."""
    docs, chunks = [], []
    for d, title in enumerate(titles):
        doc = Document(text=f"{source} {title}", source=source, key=str(d), title=title)
        docs.append(doc)
        for c in range(n_chunks):
            text = f"{source} {title} {c}"
            chunks.append(Chunk(stable_hash(doc.doc_id, str(c), text), doc.doc_id, c, text, {"title": title}))
    # Vector i of the file is (faiss_id mod 7, 1, 0, 0): checkable after any filter.
    vectors = np.array([[c.faiss_id % 7, 1.0, 0.0, 0.0] for c in chunks], dtype=np.float32)
    store.replace_file(source, stable_hash(source), 1, docs, chunks, vectors)
    out: dict[str, list[int]] = {}
    for c in chunks:
        out.setdefault(c.doc_id, []).append(c.faiss_id)
    return out


@pytest.fixture()
def store(tmp_path):
    s = SQLiteDocumentStore(tmp_path / "store.sqlite")
    yield s
    s.close()


@pytest.fixture()
def filled(store):
    a = add_file(store, "a.txt", ["Alpha", "Beta"])
    b = add_file(store, "b.txt", ["Alpha"])
    c = add_file(store, "it's; DROP TABLE chunks; --", ["Gamma"])  # a source that reads like SQL
    return store, {"a.txt": a, "b.txt": b, "sql": c}


def ids_of(*docs: dict[str, list[int]]) -> list[int]:
    return sorted(i for d in docs for ids in d.values() for i in ids)


class TestVectorFilters:
    def test_no_filter_is_every_chunk_in_id_order(self, filled) -> None:
        store, files = filled
        ids, vecs = store.all_vectors(DIM)
        assert ids.dtype == np.int64 and vecs.dtype == np.float32 and vecs.shape == (8, DIM)
        assert ids.tolist() == ids_of(*files.values())
        assert np.allclose(vecs[:, 0], ids % 7)

    def test_by_faiss_id(self, filled) -> None:
        store, files = filled
        want = ids_of(files["b.txt"])[:1] + ids_of(files["a.txt"])[-1:]
        ids, vecs = store.all_vectors(DIM, faiss_ids=[*want, 12345])  # unknown ids are absent
        assert ids.tolist() == sorted(want)
        assert np.allclose(vecs[:, 0], ids % 7)

    def test_by_doc_id(self, filled) -> None:
        store, files = filled
        doc_id, fids = next(iter(files["a.txt"].items()))
        ids, _ = store.all_vectors(DIM, doc_ids=[doc_id])
        assert ids.tolist() == sorted(fids)

    def test_by_source_and_title(self, filled) -> None:
        store, files = filled
        assert store.all_vectors(DIM, sources=["a.txt"])[0].tolist() == ids_of(files["a.txt"])
        alpha = files["a.txt"][stable_hash("a.txt", "0")] + files["b.txt"][stable_hash("b.txt", "0")]
        assert store.all_vectors(DIM, titles=["Alpha"])[0].tolist() == sorted(alpha)
        both = store.all_vectors(DIM, sources=["b.txt"], titles=["Alpha", "Beta"])[0].tolist()
        assert both == ids_of(files["b.txt"])  # filters must all hold

    def test_sql_in_values_is_data(self, filled) -> None:
        store, files = filled
        assert store.all_vectors(DIM, sources=["it's; DROP TABLE chunks; --"])[0].tolist() == ids_of(files["sql"])
        assert store.all_vectors(DIM, sources=["x' OR '1'='1"])[0].tolist() == []
        assert store.count_chunks() == 8

    def test_empty_filter_matches_nothing(self, filled) -> None:
        store, _ = filled
        for kw in ("faiss_ids", "doc_ids", "sources", "titles"):
            ids, vecs = store.all_vectors(DIM, **{kw: []})
            assert ids.shape == (0,) and vecs.shape == (0, DIM)

    def test_many_ids_in_one_call(self, store) -> None:
        files = add_file(store, "big.txt", [f"T{i}" for i in range(600)], n_chunks=2)  # 1200 ids > old 999 limit
        want = ids_of(files)
        assert store.all_vectors(DIM, faiss_ids=want)[0].tolist() == want


def test_store_satisfies_the_protocol(store) -> None:
    assert isinstance(store, DocumentStore)
    assert not isinstance(object(), DocumentStore)
