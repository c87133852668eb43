"""A collection: a FAISS index plus its SQLite document store, in one folder.

Layout of ``<collections_dir>/<name>/``::

    store.sqlite            documents, chunks (text, metadata, vectors), settings, generation
    index-<generation>.faiss  the FAISS index as of that store generation (atomic writes)
    write.lock              held (flock) by the one process that writes

Crash safety: the store is the source of truth and each file's change is one SQLite
transaction (WAL, synchronous=FULL). The index file names the store generation it reflects.
On open, an index older than the store (a crash between the commit and the index save) is
rebuilt from the vectors kept in the store, so index and store always agree and every
committed document is searchable. No pickle anywhere.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ingest.config import ChunkingConfig, IndexConfig
from ingest.documents import Chunk, Document
from ingest.errors import (
    CollectionBusyError,
    CollectionError,
    CollectionExistsError,
    CollectionNotFoundError,
    EmbedderMismatchError,
    InvalidCollectionNameError,
)
from ingest.index import (
    build_index,
    effective_kind,
    fsync_dir,
    index_kind,
    read_index,
    supports_remove,
    to_gpu_if_requested,
    write_index_atomic,
)
from ingest.store import SCHEMA_VERSION, ChunkRow, SQLiteDocumentStore

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_INDEX_RE = re.compile(r"^index-(\d+)\.faiss$")
CALIBRATION_KEY = "calibration"  # meta key of the abstention calibration (rag/calibration.py)


def validate_name(name: str) -> str:
    if not NAME_RE.match(name) or name.endswith((".tmp", ".trash")):
        raise InvalidCollectionNameError(
            f"invalid collection name {name!r}: "
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass
class SearchHit:
    """One retrieved chunk. ``score`` is the cosine similarity to the query."""

    faiss_id: int
    chunk_id: str
    doc_id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.metadata.get("source", "")

    @property
    def title(self) -> str:
        return self.metadata.get("title", "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "score": round(float(self.score), 6),
            "title": self.title,
            "source": self.source,
            "text": self.text,
            "metadata": self.metadata,
        }


class Collection:
    """Open with :meth:`create` or :meth:`open`; close with :meth:`close` (or a ``with`` block)."""

    def __init__(
        self, path: Path, store: SQLiteDocumentStore, *, readonly: bool, index_config: IndexConfig | None = None
    ) -> None:
        self.path = path
        self.name = path.name
        self.store = store
        self.readonly = readonly
        self._lock_fh: TextIO | None = None
        self.embedder_name: str = store.get_meta("embedder")
        self.dim: int = int(store.get_meta("dim"))
        self.chunking = ChunkingConfig(**store.get_meta("chunking"))
        self.index_config = index_config or IndexConfig(**store.get_meta("index"))
        self._index = None
        self._index_generation = -1
        self._needs_rebuild = False

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        collections_dir: Path,
        name: str,
        *,
        embedder_name: str,
        dim: int,
        chunking: ChunkingConfig,
        index: IndexConfig,
    ) -> Collection:
        validate_name(name)
        collections_dir.mkdir(parents=True, exist_ok=True)
        final = collections_dir / name
        if final.exists():
            raise CollectionExistsError(f"collection {name!r} already exists; choose another name or delete it first")
        tmp = collections_dir / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        store = SQLiteDocumentStore(tmp / "store.sqlite")
        store.set_meta(
            {
                "schema_version": SCHEMA_VERSION,
                "name": name,
                "embedder": embedder_name,
                "dim": int(dim),
                "chunking": chunking.model_dump(),
                "index": index.model_dump(),
                "generation": 0,
                "created_at": time.time(),
            }
        )
        store.close()
        try:
            os.rename(tmp, final)  # atomic: the collection appears complete or not at all
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CollectionExistsError(f"collection {name!r} already exists") from exc
        fsync_dir(collections_dir)
        logger.info("created collection %s (%s, dim %d, %s index)", name, embedder_name, dim, index.kind)
        return cls.open(collections_dir, name, embedder_name=embedder_name)

    @classmethod
    def open(
        cls,
        collections_dir: Path,
        name: str,
        *,
        embedder_name: str | None = None,
        readonly: bool = False,
    ) -> Collection:
        validate_name(name)
        path = collections_dir / name
        if not (path / "store.sqlite").exists():
            known = ", ".join(list_collections(collections_dir)) or "none"
            raise CollectionNotFoundError(
                f"collection {name!r} not found (known: {known}); create it with `ragqa ingest PATH -c {name}`"
            )
        lock_fh = None
        if not readonly:
            lock_fh = open(path / "write.lock", "a+")
            try:
                fcntl.flock(lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                lock_fh.close()
                raise CollectionBusyError(
                    f"collection {name!r} is being written by another process; wait for it to finish"
                ) from exc
        store = SQLiteDocumentStore(path / "store.sqlite", readonly=readonly)
        coll = cls(path, store, readonly=readonly)
        coll._lock_fh = lock_fh
        if embedder_name is not None and embedder_name != coll.embedder_name:
            coll.close()
            raise EmbedderMismatchError(
                f"collection {name!r} was built with embedder {coll.embedder_name!r} (dim {coll.dim}) but "
                f"{embedder_name!r} is configured; set RAGQA_INGEST__EMBEDDER__MODEL={coll.embedder_name} "
                "or ingest into a new collection"
            )
        return coll

    def close(self) -> None:
        if not self.readonly and self._index is not None and self._index_generation != self.store.generation:
            self.flush()
        self.store.close()
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- index --------------------------------------------------------------------------
    @property
    def index(self):
        """The FAISS index, loaded (or repaired from the store) on first use."""
        if self._index is None:
            self._load_index()
        return self._index

    def _index_files(self) -> dict[int, Path]:
        out = {}
        for p in self.path.iterdir():
            m = _INDEX_RE.match(p.name)
            if m:
                out[int(m.group(1))] = p
        return out

    def _load_index(self) -> None:
        if not self.readonly:  # temporary files of an interrupted index save
            for tmp in self.path.glob("index-*.faiss.tmp"):
                tmp.unlink(missing_ok=True)
        gen = self.store.generation
        files = self._index_files()
        if gen in files:
            try:
                self._index = to_gpu_if_requested(read_index(files[gen]), self.index_config)
                self._index_generation = gen
                return
            except Exception as exc:  # a damaged file is rebuilt, never trusted
                logger.warning("index file %s unreadable (%s); rebuilding from the store", files[gen], exc)
        elif files:
            logger.warning(
                "collection %s: index is at generation %d but the store at %d (interrupted write); "
                "rebuilding the index from stored vectors",
                self.name,
                max(files),
                gen,
            )
        self._rebuild()
        if not self.readonly:
            self.flush()

    def _rebuild(self) -> None:
        ids, vecs = self.store.all_vectors(self.dim)
        self._index = to_gpu_if_requested(build_index(self.index_config, self.dim, vecs, ids), self.index_config)
        self._index_generation = -1
        self._needs_rebuild = False

    def flush(self) -> None:
        """Persist the index for the current store generation and drop older index files."""
        if self.readonly:
            return
        if self._index is None:
            self._load_index()
            return
        gen = self.store.generation
        if self._needs_rebuild or index_kind(self._index) != effective_kind(
            self.index_config, self.store.count_chunks()
        ):
            self._rebuild()
        if self._index_generation != gen or gen not in self._index_files():
            write_index_atomic(self._index, self.path / f"index-{gen}.faiss")
            self._index_generation = gen
        for g, p in self._index_files().items():
            if g != gen:
                p.unlink(missing_ok=True)

    def _apply(self, removed: list[int], added: list[int], vectors: np.ndarray | None) -> None:
        index = self.index
        if removed:
            if supports_remove(index):
                index.remove_ids(np.asarray(removed, dtype=np.int64))
            else:
                self._needs_rebuild = True
        if added and vectors is not None and not self._needs_rebuild:
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(added, dtype=np.int64))
        elif added:
            self._needs_rebuild = True

    # -- writes -------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.readonly:
            raise CollectionError(f"collection {self.name!r} was opened read-only")

    def file_hash(self, path: str) -> str | None:
        return self.store.file_hash(path)

    def replace_file(
        self, path: str, content_hash: str, size: int, docs: list[Document], chunks: list[Chunk], vectors: np.ndarray
    ) -> tuple[int, int]:
        """Atomically make ``path``'s documents exactly ``docs``/``chunks``; returns (removed, added) chunk counts."""
        self._check_writable()
        _ = self.index  # make sure the index is in sync before applying a delta
        removed, added, _gen = self.store.replace_file(path, content_hash, size, docs, chunks, vectors)
        self._apply(removed, added, vectors)
        return len(removed), len(added)

    def delete_documents(self, doc_ids: list[str] | None = None, sources: list[str] | None = None) -> int:
        """Delete documents by id and/or source path; returns how many documents went."""
        self._check_writable()
        _ = self.index
        removed, n_docs, _gen = self.store.delete_documents(doc_ids or [], sources or [])
        self._apply(removed, [], None)
        self.flush()
        return n_docs

    def set_calibration(self, calibration: dict[str, Any]) -> None:
        """Store the collection's abstention calibration (:mod:`rag.calibration`); not a content change, so
        the generation stays (the calibration records the generation it was computed for)."""
        self._check_writable()
        self.store.set_meta({CALIBRATION_KEY: calibration})

    # -- reads --------------------------------------------------------------------------
    def calibration(self) -> dict[str, Any] | None:
        """The stored abstention calibration (see :mod:`rag.calibration`), or None before the first one."""
        value = self.store.get_meta(CALIBRATION_KEY)
        return value if isinstance(value, dict) else None

    def search(
        self,
        query: np.ndarray,
        k: int = 5,
        *,
        sources: list[str] | None = None,
        titles: list[str] | None = None,
    ) -> list[SearchHit]:
        """Top-``k`` chunks for a normalised ``query`` vector (dim,), optionally filtered.

        With filters the search is exact over the matching chunks' stored vectors.
        """
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise CollectionError(f"query has dimension {query.shape[1]}, the collection {self.dim}")
        if sources or titles:
            ids, vecs = self.store.all_vectors(self.dim, sources=sources or None, titles=titles or None)
            scores = vecs @ query[0]
            order = np.argsort(-scores)[:k]
            pairs = [(int(ids[i]), float(scores[i])) for i in order]
        else:
            index = self.index
            if index.ntotal == 0:
                return []
            scores, ids = index.search(query, min(k, index.ntotal))
            pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        rows = self.store.get_chunks([i for i, _ in pairs])
        return [_hit(rows[i], s) for i, s in pairs if i in rows]

    def info(self) -> dict[str, Any]:
        n_chunks = self.store.count_chunks()
        return {
            "name": self.name,
            "path": str(self.path),
            "embedder": self.embedder_name,
            "dim": self.dim,
            "index": self.index_config.kind,
            "index_built": effective_kind(self.index_config, n_chunks),
            "chunking": self.chunking.model_dump(),
            "files": self.store.count_files(),
            "documents": self.store.count_documents(),
            "chunks": n_chunks,
            "generation": self.store.generation,
            "created_at": self.store.get_meta("created_at"),
            "calibration": self.calibration(),
        }

    def check_consistency(self) -> list[str]:
        """Problems found between index and store (empty when they agree)."""
        problems = []
        if self.store.integrity_check() != "ok":
            problems.append("sqlite integrity check failed")
        index = self.index
        ids, _ = self.store.all_vectors(self.dim)
        if index.ntotal != len(ids):
            problems.append(f"index has {index.ntotal} vectors, store has {len(ids)} chunks")
        return problems


def _hit(row: ChunkRow, score: float) -> SearchHit:
    return SearchHit(row.faiss_id, row.chunk_id, row.doc_id, row.text, score, row.metadata)


def list_collections(collections_dir: Path) -> list[str]:
    if not collections_dir.exists():
        return []
    return sorted(p.name for p in collections_dir.iterdir() if (p / "store.sqlite").exists() and NAME_RE.match(p.name))


def delete_collection(collections_dir: Path, name: str) -> None:
    """Delete a collection: renamed away first (atomic), then removed."""
    validate_name(name)
    path = collections_dir / name
    if not (path / "store.sqlite").exists():
        raise CollectionNotFoundError(f"collection {name!r} not found")
    with open(path / "write.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CollectionBusyError(f"collection {name!r} is being written; try again when it is done") from exc
        trash = collections_dir / f".{name}.{uuid.uuid4().hex[:8]}.trash"
        os.rename(path, trash)
    fsync_dir(collections_dir)
    shutil.rmtree(trash, ignore_errors=True)
