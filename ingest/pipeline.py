"""The ingestion pipeline: files -> documents -> chunks -> vectors -> collection.

Each file is loaded, chunked and committed on its own (one transaction per file), so a bad
file fails alone and a crash loses at most the files not yet committed. Vectors are computed
in batches that span files, and chunks whose text is unchanged reuse their stored vectors.

Loading and chunking overlap with embedding: one thread (:class:`Prefetcher`) hashes, loads and
chunks the next files while the caller's thread embeds and commits the current batch. Only the
caller's thread touches the collection, the report and the embedder, in file order, so the
result (chunks, ids, vectors, report) is the one of the sequential loop.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np

from ingest.chunker import Chunker
from ingest.collection import Collection
from ingest.config import LoaderConfig
from ingest.documents import Chunk, Document
from ingest.errors import IngestError, LoaderError, UnsupportedFileError
from ingest.loaders import is_supported, load_file
from ingest.loaders.isolation import LoaderPool

logger = logging.getLogger(__name__)

# Flush the FAISS index to disk at least this often during a long run (seconds).
FLUSH_EVERY_S = 30.0
# Embed this many chunks at a time (across files) before committing their files.
EMBED_BATCH_CHUNKS = 512
# ... or as few as this many when the loader has nothing ready yet (the embedder would wait idle for it).
EARLY_EMBED_CHUNKS = 64
# Files loaded and chunked ahead of the embedder (and chunks, in multiples of the embedding batch).
PREFETCH_FILES = 256
PREFETCH_BATCHES = 2


@dataclass
class FileFailure:
    path: str
    reason: str


@dataclass
class IngestReport:
    collection: str
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[FileFailure] = field(default_factory=list)
    skipped_unsupported: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    documents: int = 0
    chunks: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {
            "collection": self.collection,
            "added": len(self.added),
            "replaced": len(self.replaced),
            "unchanged": len(self.unchanged),
            "failed": [{"path": f.path, "reason": f.reason} for f in self.failed],
            "skipped_unsupported": len(self.skipped_unsupported),
            "removed": len(self.removed),
            "documents": self.documents,
            "chunks": self.chunks,
            "chunks_embedded": self.chunks_embedded,
            "chunks_reused": self.chunks_reused,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
        }


def expand_paths(paths: Sequence[str | Path]) -> tuple[list[Path], list[FileFailure], list[Path]]:
    """Files named by ``paths`` (files, folders searched recursively, glob patterns).

    Returns ``(files, failures, unsupported_in_folders)``. A named file that does not exist or
    has an unsupported type is a failure; unsupported files found inside folders are skipped.
    """
    files: list[Path] = []
    failures: list[FileFailure] = []
    skipped: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path, named: bool) -> None:
        rp = p.resolve()
        if rp in seen:
            return
        if not is_supported(rp):
            if named:
                try:
                    load_file(rp, LoaderConfig())  # raises the loader's own clear UnsupportedFileError
                except LoaderError as exc:
                    failures.append(FileFailure(str(rp), str(exc)))
            else:
                skipped.append(rp)
            return
        seen.add(rp)
        files.append(rp)

    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                if child.is_file() and not any(part.startswith(".") for part in child.relative_to(p).parts):
                    add(child, named=False)
        elif p.is_file():
            add(p, named=True)
        elif any(ch in str(raw) for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            if not matches:
                failures.append(FileFailure(str(raw), "the pattern matched no files"))
            for m in matches:
                if m.is_file():
                    add(m, named=False)
        else:
            failures.append(FileFailure(str(p), "no such file or folder"))
    return files, failures, skipped


def file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


# The errors that fail one file (reported in the file's FileFailure); anything else stops the run.
FILE_ERRORS: tuple[type[Exception], ...] = (
    LoaderError,
    UnsupportedFileError,
    OSError,
    IngestError,
    ValueError,
    UnicodeError,
)


def file_failure(path: str, exc: Exception) -> FileFailure:
    """How the report shows a file that failed with one of :data:`FILE_ERRORS`."""
    if isinstance(exc, (LoaderError, UnsupportedFileError)):
        return FileFailure(path, str(exc))
    logger.warning("failed to ingest %s: %s", path, exc)
    return FileFailure(path, f"{type(exc).__name__}: {exc}")


def load_and_chunk(
    path: Path, loader_config: LoaderConfig, chunker: Chunker, pool: LoaderPool | None = None
) -> tuple[list[Document], list[Chunk]]:
    """One file's documents (read in ``pool``'s loader process when given) and their chunks; raises
    one of :data:`FILE_ERRORS` for a bad file."""
    docs = pool.load(path, loader_config) if pool is not None else load_file(path, loader_config)
    return docs, chunker.chunk_all(docs)


class FileChange(NamedTuple):
    """A file whose content differs from the committed version (or that is new)."""

    digest: str
    size: int
    replaced: bool


@dataclass
class PendingFile:
    """A loaded and chunked file not committed yet; ``vectors[i]`` is None until chunk i is embedded
    (or was found stored for the same text)."""

    path: str
    digest: str
    size: int
    docs: list[Document]
    chunks: list[Chunk]
    vectors: list[np.ndarray | None]
    replaced: bool

    @property
    def n_missing(self) -> int:
        return sum(v is None for v in self.vectors)


def embed_missing(pending: Sequence[PendingFile], embed: Callable[[list[str]], np.ndarray]) -> int:
    """Fill the missing vectors of ``pending`` with one ``embed`` call (across files); returns how many
    chunks were embedded. Raises what ``embed`` raises, leaving every vector as it was."""
    todo = [(p, i) for p in pending for i, v in enumerate(p.vectors) if v is None]
    if not todo:
        return 0
    vecs = embed([p.chunks[i].text for p, i in todo])
    for (p, i), v in zip(todo, vecs):
        p.vectors[i] = v
    return len(todo)


def ingest_paths(
    paths: Sequence[str | Path],
    collection: Collection,
    embed: Callable[[list[str]], np.ndarray],
    chunker: Chunker | Callable[[], Chunker],
    loader_config: LoaderConfig,
    *,
    progress: bool = False,
    embed_batch_chunks: int = EMBED_BATCH_CHUNKS,
    prune: bool = False,
    loader_pool: LoaderPool | None = None,
    overlap: bool = True,
) -> IngestReport:
    """Ingest ``paths`` into ``collection``; never raises for a single bad file.

    ``embed`` maps texts to normalised float32 vectors (n, dim). ``chunker`` may be a factory,
    called only when some file changed (so an unchanged re-ingest loads no model). With ``prune``, files that were
    ingested from one of the named folders but no longer exist there are removed.

    With ``loader_config.isolate`` each file is read in a loader process with a time and a memory limit
    (:class:`~ingest.loaders.isolation.LoaderPool`; one process serves the whole run, or pass ``loader_pool``
    to share one across runs); a file past a limit fails alone.

    With ``overlap`` (and more than one file) the next files are loaded and chunked in a second thread while
    a batch is embedded (:class:`Prefetcher`); the results are the same as with ``overlap=False``. A batch is
    embedded when it reaches ``embed_batch_chunks``, or :data:`EARLY_EMBED_CHUNKS` while the loader has nothing
    ready (so a small corpus does not wait for its last file before embedding its first).
    """
    t0 = time.perf_counter()
    report = IngestReport(collection=collection.name)
    files, failures, skipped = expand_paths(paths)
    report.failed.extend(failures)
    report.skipped_unsupported = [str(p) for p in skipped]
    own_pool = loader_pool is None and loader_config.isolate and bool(files)
    pool = LoaderPool(loader_config) if own_pool else loader_pool
    batch = IngestBatch(collection, embed, chunker, loader_config, report, pool)
    bar = _progress_bar(progress, len(files), collection.name)
    prefetch = None
    try:
        if overlap and len(files) > 1:
            stored = {str(f): collection.file_hash(str(f)) for f in files}
            prefetch = Prefetcher(
                files, lambda f: batch.prepare(f, stored[str(f)]), PREFETCH_BATCHES * embed_batch_chunks
            )
        loaded = iter(prefetch) if prefetch is not None else (batch.prepare(f) for f in files)
        for item in loaded:
            try:
                batch.take(item)
            finally:
                if bar is not None:
                    bar.update(1)
            if batch.n_new >= embed_batch_chunks or (
                prefetch is not None
                and batch.n_new >= min(EARLY_EMBED_CHUNKS, embed_batch_chunks)
                and not prefetch.ready()
            ):
                batch.commit()
        if batch.pending:
            batch.commit()
        if prune:
            report.removed = _prune(collection, paths, {str(f) for f in files})
    finally:
        if prefetch is not None:
            prefetch.close()
        if own_pool and pool is not None:
            pool.close()
        if bar is not None:
            bar.close()
        collection.flush()
    report.seconds = time.perf_counter() - t0
    return report


def _progress_bar(enabled: bool, total: int, name: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"ingest {name}", unit="file")


class _Lookup:
    """The default of :meth:`IngestBatch.prepare`'s ``stored_hash``: look it up in the collection."""


_LOOKUP = _Lookup()


@dataclass
class LoadedFile:
    """What :meth:`IngestBatch.prepare` found: a changed file's content (``change`` set), an unchanged file
    (``change`` None), or a bad file (``error`` set)."""

    path: Path
    change: FileChange | None
    docs: list[Document] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    error: Exception | None = None


class Prefetcher:
    """Runs ``prepare`` on ``files`` in one background thread, at most ``max_chunks`` chunks (and
    :data:`PREFETCH_FILES` files) ahead of the consumer; iterating yields the results in file order.

    An exception that ``prepare`` raises (beyond the file errors it reports) is raised by the iteration.
    :meth:`close` stops the thread after the file it is on and waits for it.
    """

    def __init__(self, files: Sequence[Path], prepare: Callable[[Path], LoadedFile], max_chunks: int) -> None:
        self._files = list(files)
        self._prepare = prepare
        self._max_chunks = max(1, max_chunks)
        self._ready: deque[LoadedFile] = deque()
        self._chunks = 0
        self._done = False
        self._stopped = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ragqa-ingest-prefetch", daemon=True)
        self._thread.start()

    def _full(self) -> bool:
        return bool(self._ready) and (self._chunks >= self._max_chunks or len(self._ready) >= PREFETCH_FILES)

    def _run(self) -> None:
        try:
            for path in self._files:
                item = self._prepare(path)
                with self._cond:
                    while self._full() and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    self._ready.append(item)
                    self._chunks += len(item.chunks)
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer's thread
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[LoadedFile]:
        while True:
            with self._cond:
                while not self._ready and not self._done:
                    self._cond.wait()
                if not self._ready:
                    if self._error is not None:
                        raise self._error
                    return
                item = self._ready.popleft()
                self._chunks -= len(item.chunks)
                self._cond.notify_all()
            yield item

    def ready(self) -> bool:
        """Whether the next item can be taken without waiting (one is loaded, or loading has ended)."""
        with self._cond:
            return bool(self._ready) or self._done

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._ready.clear()
            self._cond.notify_all()
        self._thread.join()


class IngestBatch:
    """Files loaded and chunked but not committed yet, embedded together (across files) and then
    committed one transaction per file; failures go to ``report``, never raise."""

    def __init__(
        self,
        collection: Collection,
        embed: Callable[[list[str]], np.ndarray],
        chunker: Chunker | Callable[[], Chunker],
        loader_config: LoaderConfig,
        report: IngestReport,
        pool: LoaderPool | None = None,
    ) -> None:
        self.collection = collection
        self.pool = pool
        self.embed = embed
        self._chunker = chunker if isinstance(chunker, Chunker) else None
        self._chunker_factory = None if isinstance(chunker, Chunker) else chunker
        self.loader_config = loader_config
        self.report = report
        self.pending: list[PendingFile] = []
        self.n_new = 0  # pending chunks without a stored vector
        self.last_flush = time.monotonic()

    def chunker(self) -> Chunker:
        """The chunker, built on first use (an unchanged re-ingest loads no model)."""
        if self._chunker is None:
            self._chunker = self._chunker_factory()  # type: ignore[misc]
        return self._chunker

    def stage(self, path: Path) -> None:
        """Load and chunk ``path`` unless its content is unchanged; a bad file is reported, not raised."""
        self.take(self.prepare(path))

    def prepare(self, path: Path, stored_hash: str | None | _Lookup = _LOOKUP) -> LoadedFile:
        """Hash, load and chunk ``path`` (unless its content is ``stored_hash``, the committed one); never raises
        for a bad file. Touches neither the collection (when ``stored_hash`` is given) nor the report, so it may
        run in another thread than :meth:`take`."""
        try:
            digest, size = file_digest(path)
            old = self.collection.file_hash(str(path)) if isinstance(stored_hash, _Lookup) else stored_hash
            if old == digest:
                return LoadedFile(path, None)
            change = FileChange(digest, size, replaced=old is not None)
            docs, chunks = load_and_chunk(path, self.loader_config, self.chunker(), self.pool)
            return LoadedFile(path, change, docs, chunks)
        except FILE_ERRORS as exc:
            return LoadedFile(path, None, error=exc)

    def take(self, loaded: LoadedFile) -> None:
        """Report a file :meth:`prepare` found unchanged or bad, or queue it (with the stored vectors it can reuse)
        for the next :meth:`commit`."""
        spath = str(loaded.path)
        if loaded.error is not None:
            self.report.failed.append(file_failure(spath, loaded.error))
            return
        change = loaded.change
        if change is None:
            self.report.unchanged.append(spath)
            return
        try:
            reuse = self.stored_vectors(spath, change)
        except FILE_ERRORS as exc:
            self.report.failed.append(file_failure(spath, exc))
            return
        vectors = [reuse.get(c.text) for c in loaded.chunks]
        self.add(
            PendingFile(
                spath, change.digest, change.size, loaded.docs, loaded.chunks, vectors, replaced=change.replaced
            )
        )

    def change(self, path: Path) -> FileChange | None:
        """``path``'s content hash and size against the stored hash; None (and reported unchanged) when the
        content is the one committed. Raises OSError for a file that cannot be read."""
        digest, size = file_digest(path)
        old = self.collection.file_hash(str(path))
        if old == digest:
            self.report.unchanged.append(str(path))
            return None
        return FileChange(digest, size, replaced=old is not None)

    def stored_vectors(self, spath: str, change: FileChange) -> dict[str, np.ndarray]:
        """The vectors stored for the chunk texts of a replaced file's committed version (reused as they are)."""
        return self.collection.store.embeddings_by_text(spath) if change.replaced else {}

    def add(self, pending: PendingFile) -> None:
        """Queue a loaded and chunked file for the next :meth:`commit`."""
        self.report.chunks_reused += sum(v is not None for v in pending.vectors)
        self.pending.append(pending)
        self.n_new += pending.n_missing

    def commit(self) -> None:
        """Embed the pending chunks that need it, store each pending file, and flush now and then."""
        if not self._embed_pending():
            self.pending, self.n_new = [], 0
            return
        self._store_pending()
        self.pending, self.n_new = [], 0
        if time.monotonic() - self.last_flush > FLUSH_EVERY_S:
            self.collection.flush()
            self.last_flush = time.monotonic()

    def _embed_pending(self) -> bool:
        """Fill the missing vectors; False (every pending file failed) when embedding raised."""
        try:
            self.report.chunks_embedded += embed_missing(self.pending, self.embed)
        except Exception as exc:  # e.g. out of memory: these files fail, the run goes on
            logger.exception("embedding failed")
            self.report.failed.extend(embedding_failure(p.path, exc) for p in self.pending)
            return False
        return True

    def _store_pending(self) -> None:
        report = self.report
        for p in self.pending:
            try:
                if p.vectors:  # every vector is filled in by now
                    matrix = np.stack(cast("list[np.ndarray]", p.vectors))
                else:
                    matrix = np.zeros((0, self.collection.dim), np.float32)
                self.collection.replace_file(p.path, p.digest, p.size, p.docs, p.chunks, matrix)
            except Exception as exc:  # one file's failure must not sink the batch
                logger.exception("could not store %s", p.path)
                report.failed.append(FileFailure(p.path, f"could not store: {exc}"))
                continue
            (report.replaced if p.replaced else report.added).append(p.path)
            report.documents += len(p.docs)
            report.chunks += len(p.chunks)


def embedding_failure(path: str, exc: Exception) -> FileFailure:
    """How the report shows a file whose chunks could not be embedded."""
    return FileFailure(path, f"embedding failed: {exc}")


def _prune(collection: Collection, paths: Sequence[str | Path], present: set[str]) -> list[str]:
    """Remove files ingested from the named folders that are gone from them."""
    folders = [str(Path(p).expanduser().resolve()) for p in paths if Path(p).expanduser().is_dir()]
    gone = [
        path
        for path in collection.store.file_paths()
        if path not in present
        and any(path.startswith(f.rstrip("/") + "/") for f in folders)
        and not Path(path).exists()
    ]
    if gone:
        collection.delete_documents(sources=gone)
        logger.info("pruned %d file(s) no longer present", len(gone))
    return gone
