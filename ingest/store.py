"""SQLite document store of a collection: the source of truth.

It holds the files, documents and chunks (text, metadata and the embedding vector of each
chunk), plus the collection's settings. Every change is one transaction that also bumps the
store's ``generation``; the FAISS index file is stamped with the generation it reflects, so a
crash between the two is detected and repaired from this store (see ``collection.py``).

:class:`DocumentStore` is the contract the other packages read a collection's store through
(haystack's ``document_stores/types/protocol.py`` is the model): id-based reads and typed
filters, so no SQL leaves this module. :class:`SQLiteDocumentStore` implements it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ingest.documents import Chunk, Document

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    path         TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    size         INTEGER NOT NULL,
    ingested_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    doc_id     TEXT PRIMARY KEY,
    source     TEXT NOT NULL,
    key        TEXT NOT NULL,
    title      TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    n_chunks   INTEGER NOT NULL,
    n_chars    INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_source ON documents(source);
CREATE TABLE IF NOT EXISTS chunks (
    faiss_id  INTEGER PRIMARY KEY,
    chunk_id  TEXT NOT NULL UNIQUE,
    doc_id    TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    ordinal   INTEGER NOT NULL,
    text      TEXT NOT NULL,
    metadata  TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
"""


@dataclass
class DocumentRow:
    doc_id: str
    source: str
    key: str
    title: str
    metadata: dict[str, Any]
    n_chunks: int
    n_chars: int
    created_at: float


@dataclass
class ChunkRow:
    faiss_id: int
    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    metadata: dict[str, Any]


@runtime_checkable
class DocumentStore(Protocol):
    """What :mod:`rag`, :mod:`finetune` and :mod:`api` need from a collection's document store.

    Chunks are addressed by their ``faiss_id`` (the id in the vector index) or their ``chunk_id``;
    documents by ``doc_id`` or ``source`` (the file they came from). Filters are typed arguments:
    ``None`` means "no filter", a sequence means "one of these" (an empty one matches nothing), and
    several filters must all hold.
    """

    @property
    def generation(self) -> int:
        """Bumped by every committed change (caches key on it)."""
        ...

    def count_documents(self) -> int: ...

    def count_chunks(self) -> int: ...

    def list_documents(self, source: str | None = None, limit: int | None = None, offset: int = 0) -> list[DocumentRow]:
        """Documents (of one ``source``), ordered by source then key."""
        ...

    def get_documents(self, doc_ids: Sequence[str]) -> list[DocumentRow]:
        """Documents by ``doc_id`` (ids not in the store are left out)."""
        ...

    def get_chunks(self, faiss_ids: Sequence[int]) -> dict[int, ChunkRow]:
        """Chunks by ``faiss_id`` (ids not in the store are absent from the result)."""
        ...

    def get_chunks_by_chunk_id(self, chunk_ids: Sequence[str]) -> dict[str, ChunkRow]:
        """Chunks by ``chunk_id`` (ids not in the store are absent from the result)."""
        ...

    def faiss_ids(self) -> list[int]:
        """The ``faiss_id`` of every chunk, ascending."""
        ...

    def iter_chunks(self, batch: int = 1000) -> Iterator[ChunkRow]:
        """Every chunk, in ``faiss_id`` order."""
        ...

    def all_vectors(
        self,
        dim: int,
        *,
        faiss_ids: Sequence[int] | None = None,
        doc_ids: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        titles: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stored chunk vectors matching every given filter: ``(ids (n,) int64, vectors (n, dim) float32)``,
        in ``faiss_id`` order."""
        ...


# Typed filter -> the column it constrains. Only these fixed names ever reach the SQL text;
# the values travel as one JSON array parameter each.
_VECTOR_FILTERS: dict[str, str] = {
    "faiss_ids": "c.faiss_id",
    "doc_ids": "c.doc_id",
    "sources": "d.source",
    "titles": "d.title",
}


class SQLiteDocumentStore:
    """A SQLite file in WAL mode with synchronous=FULL: a committed write survives kill -9."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            uri = f"file:{path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
        else:
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        if not readonly:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, values: dict[str, Any]) -> None:
        with self.transaction():
            self._set_meta(values)

    def _set_meta(self, values: dict[str, Any]) -> None:
        self._db.executemany(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    # -- transactions -------------------------------------------------------------------
    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def transaction(self) -> SQLiteDocumentStore._Tx:
        return SQLiteDocumentStore._Tx(self._db)

    def _bump(self) -> int:
        gen = self.generation + 1
        self._set_meta({"generation": gen})
        return gen

    # -- files --------------------------------------------------------------------------
    def file_hash(self, path: str) -> str | None:
        row = self._db.execute("SELECT content_hash FROM files WHERE path=?", (path,)).fetchone()
        return row[0] if row else None

    def file_paths(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT path FROM files ORDER BY path")]

    def embeddings_by_text(self, source: str) -> dict[str, np.ndarray]:
        """Existing chunk vectors of ``source``'s documents, keyed by chunk text (for reuse)."""
        rows = self._db.execute(
            "SELECT c.text, c.embedding FROM chunks c JOIN documents d ON c.doc_id=d.doc_id WHERE d.source=?",
            (source,),
        )
        return {text: np.frombuffer(blob, dtype=np.float32) for text, blob in rows}

    def replace_file(
        self,
        path: str,
        content_hash: str,
        size: int,
        docs: Sequence[Document],
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
    ) -> tuple[list[int], list[int], int]:
        """Atomically replace everything from file ``path``.

        Returns ``(removed_faiss_ids, added_faiss_ids, generation)``.
        """
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        counts: dict[str, int] = {}
        chars: dict[str, int] = {}
        for c in chunks:
            counts[c.doc_id] = counts.get(c.doc_id, 0) + 1
        for d in docs:
            chars[d.doc_id] = len(d.text)
        now = time.time()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.transaction() as db:
            removed = self._delete_where(db, "d.source=?", (path,))
            db.executemany(
                "INSERT OR REPLACE INTO documents VALUES(?,?,?,?,?,?,?,?)",
                [
                    (
                        d.doc_id,
                        d.source,
                        d.key,
                        d.title,
                        json.dumps(d.metadata, ensure_ascii=False),
                        counts.get(d.doc_id, 0),
                        chars.get(d.doc_id, 0),
                        now,
                    )
                    for d in docs
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO chunks VALUES(?,?,?,?,?,?,?)",
                [
                    (
                        c.faiss_id,
                        c.chunk_id,
                        c.doc_id,
                        c.ordinal,
                        c.text,
                        json.dumps(c.metadata, ensure_ascii=False),
                        vectors[i].tobytes(),
                    )
                    for i, c in enumerate(chunks)
                ],
            )
            db.execute("INSERT OR REPLACE INTO files VALUES(?,?,?,?)", (path, content_hash, size, now))
            gen = self._bump()
        return removed, [c.faiss_id for c in chunks], gen

    def delete_documents(self, doc_ids: Iterable[str] = (), sources: Iterable[str] = ()) -> tuple[list[int], int, int]:
        """Delete documents by id and/or by source; returns (removed faiss ids, docs removed, generation)."""
        doc_ids, sources = list(doc_ids), list(sources)
        with self.transaction() as db:
            removed: list[int] = []
            n_docs = 0
            for doc_id in doc_ids:
                n_docs += db.execute("SELECT COUNT(*) FROM documents WHERE doc_id=?", (doc_id,)).fetchone()[0]
                removed += self._delete_where(db, "d.doc_id=?", (doc_id,))
            for source in sources:
                n_docs += db.execute("SELECT COUNT(*) FROM documents WHERE source=?", (source,)).fetchone()[0]
                removed += self._delete_where(db, "d.source=?", (source,))
                db.execute("DELETE FROM files WHERE path=?", (source,))
            # A file whose documents are all gone is forgotten, so re-ingesting it adds it again.
            db.execute("DELETE FROM files WHERE path NOT IN (SELECT DISTINCT source FROM documents)")
            gen = self._bump() if n_docs else self.generation
        return removed, n_docs, gen

    def _delete_where(self, db: sqlite3.Connection, where: str, args: tuple) -> list[int]:
        ids = [
            r[0]
            for r in db.execute(
                f"SELECT c.faiss_id FROM chunks c JOIN documents d ON c.doc_id=d.doc_id WHERE {where}", args
            )
        ]
        db.execute(f"DELETE FROM documents WHERE doc_id IN (SELECT d.doc_id FROM documents d WHERE {where})", args)
        return ids

    # -- reads --------------------------------------------------------------------------
    def count_documents(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def count_chunks(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def count_files(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0]

    def list_documents(self, source: str | None = None, limit: int | None = None, offset: int = 0) -> list[DocumentRow]:
        sql = "SELECT doc_id, source, key, title, metadata, n_chunks, n_chars, created_at FROM documents"
        args: list[Any] = []
        if source is not None:
            sql += " WHERE source=?"
            args.append(source)
        sql += " ORDER BY source, key"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        return [
            DocumentRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7]) for r in self._db.execute(sql, args)
        ]

    def get_documents(self, doc_ids: Sequence[str]) -> list[DocumentRow]:
        sql = "SELECT doc_id, source, key, title, metadata, n_chunks, n_chars, created_at FROM documents WHERE doc_id=?"
        rows = [r for doc_id in dict.fromkeys(doc_ids) for r in self._db.execute(sql, (doc_id,))]
        return [DocumentRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7]) for r in rows]

    def get_chunks(self, faiss_ids: Sequence[int]) -> dict[int, ChunkRow]:
        out: dict[int, ChunkRow] = {}
        ids = [int(i) for i in faiss_ids]
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in self._db.execute(
                f"SELECT faiss_id, chunk_id, doc_id, ordinal, text, metadata FROM chunks WHERE faiss_id IN ({marks})",
                part,
            ):
                out[r[0]] = ChunkRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))
        return out

    def get_chunks_by_chunk_id(self, chunk_ids: Sequence[str]) -> dict[str, ChunkRow]:
        """Chunks by their ``chunk_id`` (ids not in the store are absent from the result)."""
        out: dict[str, ChunkRow] = {}
        ids = [str(i) for i in chunk_ids]
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in self._db.execute(
                f"SELECT faiss_id, chunk_id, doc_id, ordinal, text, metadata FROM chunks WHERE chunk_id IN ({marks})",
                part,
            ):
                out[r[1]] = ChunkRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))
        return out

    def faiss_ids(self) -> list[int]:
        """The ``faiss_id`` of every chunk, ascending (cheap: no text, no vectors)."""
        return [r[0] for r in self._db.execute("SELECT faiss_id FROM chunks ORDER BY faiss_id")]

    def iter_chunks(self, batch: int = 1000) -> Iterator[ChunkRow]:
        cur = self._db.execute(
            "SELECT faiss_id, chunk_id, doc_id, ordinal, text, metadata FROM chunks ORDER BY faiss_id"
        )
        while rows := cur.fetchmany(batch):
            for r in rows:
                yield ChunkRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))

    def all_vectors(
        self,
        dim: int,
        *,
        faiss_ids: Sequence[int] | None = None,
        doc_ids: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        titles: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stored chunk vectors matching every given filter (all without one):
        ``(ids (n,) int64, vectors (n, dim) float32)`` in ``faiss_id`` order.

        ``None`` leaves a field unfiltered; a sequence keeps the chunks whose field is one of its
        values (an empty sequence keeps none).
        """
        given = {
            "faiss_ids": None if faiss_ids is None else [int(i) for i in faiss_ids],
            "doc_ids": None if doc_ids is None else [str(d) for d in doc_ids],
            "sources": None if sources is None else [str(s) for s in sources],
            "titles": None if titles is None else [str(t) for t in titles],
        }
        where, args = [], []
        for name, values in given.items():
            if values is not None:
                where.append(f"{_VECTOR_FILTERS[name]} IN (SELECT value FROM json_each(?))")
                args.append(json.dumps(values))
        sql = "SELECT c.faiss_id, c.embedding FROM chunks c"
        if given["sources"] is not None or given["titles"] is not None:
            sql += " JOIN documents d ON c.doc_id=d.doc_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY c.faiss_id"
        rows = self._db.execute(sql, args).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, dim), dtype=np.float32)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vecs.copy()

    def integrity_check(self) -> str:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]
