"""Folder sync: keep a collection in step with a folder (``ragqa watch DIR -c NAME``, ``server.watch``).

A :class:`FolderSync` first catches up (one full sync of the folder: new and changed files are ingested,
unchanged ones cost one hash each, files gone since the last run are removed), then follows the file
system's events with ``watchfiles``. Events are debounced: a burst of writes becomes one sync once the
folder has been quiet for ``debounce_ms``. A sync touches only the paths named by its events: a created or
modified file is ingested (skipped when its content hash is unchanged), a deleted or renamed-away file or
folder is removed from the collection (with ``prune``, the semantics of ``ragqa ingest --prune``), a folder
moved in is ingested whole. Hidden files and folders (a name starting with ``.``) are ignored, as by
``ragqa ingest``.

Writes go through the pipeline (:func:`ingest.pipeline.ingest_paths`), one transaction per file, at most
``batch_files`` files per opening of the collection; ``hold(name)`` is taken around each opening (the
server passes its writer gate, so uploads, deletes and the sync interleave). A collection written by another
process (:class:`~ingest.errors.CollectionBusyError`) is retried later with the changes kept. The watcher
stops within about ``debounce_ms`` of ``stop_event`` being set, after the batch in progress; a restart
catches up with whatever changed meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.collection import Collection
from ingest.errors import CollectionBusyError, IngestError, NotFoundError
from ingest.loaders import is_supported
from ingest.pipeline import FileFailure, IngestReport, expand_paths, ingest_paths
from ingest.source_config import WatchedFolder

if TYPE_CHECKING:
    from ingest.loaders.isolation import LoaderPool
    from ingest.workspace import Workspace

logger = logging.getLogger(__name__)

#: Longest idle wait inside watchfiles before the loop looks at its retry timer (milliseconds).
TICK_MS = 250
#: Failures kept for the final summary (the first ones; the count is always exact).
MAX_KEPT_FAILURES = 100


class FolderMissingError(NotFoundError):
    """The watched folder does not exist (or disappeared while watched)."""


@dataclass
class SyncTotals:
    """What a watcher did since it started, for the summary printed when it stops."""

    syncs: int = 0
    added: int = 0
    replaced: int = 0
    removed: int = 0
    failed: int = 0
    chunks_embedded: int = 0
    busy_retries: int = 0
    failures: list[FileFailure] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)

    def add(self, report: IngestReport) -> None:
        self.syncs += 1
        self.added += len(report.added)
        self.replaced += len(report.replaced)
        self.removed += len(report.removed)
        self.failed += len(report.failed)
        self.chunks_embedded += report.chunks_embedded
        room = MAX_KEPT_FAILURES - len(self.failures)
        if room > 0:
            self.failures.extend(report.failed[:room])

    def to_dict(self) -> dict[str, Any]:
        return {
            "syncs": self.syncs,
            "added": self.added,
            "replaced": self.replaced,
            "removed": self.removed,
            "failed": [{"path": f.path, "reason": f.reason} for f in self.failures],
            "n_failed": self.failed,
            "chunks_embedded": self.chunks_embedded,
            "busy_retries": self.busy_retries,
            "seconds": round(time.monotonic() - self.started_at, 3),
        }


def did_something(report: IngestReport) -> bool:
    """True when a sync changed the collection or reported a failure."""
    return bool(report.added or report.replaced or report.removed or report.failed)


def merge_reports(into: IngestReport, part: IngestReport) -> IngestReport:
    """Add ``part``'s files and counts to ``into`` (several pipeline runs reported as one)."""
    into.added.extend(part.added)
    into.replaced.extend(part.replaced)
    into.unchanged.extend(part.unchanged)
    into.failed.extend(part.failed)
    into.skipped_unsupported.extend(part.skipped_unsupported)
    into.removed.extend(part.removed)
    into.documents += part.documents
    into.chunks += part.chunks
    into.chunks_embedded += part.chunks_embedded
    into.chunks_reused += part.chunks_reused
    return into


def _no_hold(name: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


class FolderSync:
    """Keeps collection ``folder.collection`` of ``workspace`` in sync with ``folder.dir``.

    ``hold(name)`` is entered around every write (the server's writer gate; nothing by default).
    ``on_sync(report)`` is called after every sync that changed something or failed a file (the CLI prints
    a line and recalibrates; the server recalibrates). Use :meth:`sync_once` for one full sync, :meth:`run`
    to catch up and then follow changes until ``stop_event`` is set, or :meth:`start`/:meth:`stop` to run it
    in a thread.
    """

    def __init__(
        self,
        workspace: Workspace,
        folder: WatchedFolder,
        *,
        hold: Callable[[str], AbstractContextManager[Any]] | None = None,
        on_sync: Callable[[IngestReport], None] | None = None,
        batch_files: int = 64,
        retry_s: float = 2.0,
        force_polling: bool | None = None,
    ) -> None:
        self.workspace = workspace
        self.folder = folder
        self.name = folder.collection
        self.root = folder.dir.expanduser().resolve()
        self.hold = hold or _no_hold
        self.on_sync = on_sync
        self.batch_files = max(1, batch_files)
        self.retry_s = retry_s
        self.force_polling = force_polling
        self.totals = SyncTotals()
        self._pool: LoaderPool | None = None
        self.ready = threading.Event()  # set once run() has caught up and is following the folder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what ended a thread started with start(), if anything

    # -- one sync ---------------------------------------------------------------------------
    def sync_once(
        self, changed: Iterable[str | Path] | None = None, stop_event: threading.Event | None = None
    ) -> IngestReport:
        """Sync the whole folder (``changed`` None: the catch-up) or only the ``changed`` paths.

        Never raises for a single bad file (it is in ``report.failed``); raises :class:`FolderMissingError`
        when the folder is gone (the collection is left as it is) and
        :class:`~ingest.errors.CollectionBusyError` when another process writes the collection.
        """
        t0 = time.perf_counter()
        if not self.root.is_dir():
            raise FolderMissingError(
                f"the watched folder {self.root} does not exist (any more); create it or fix the path. "
                f"Collection {self.name!r} is left as it is"
            )
        report = IngestReport(collection=self.name)
        if changed is None:
            files, failures, skipped = expand_paths([self.root])
            gone: list[Path] = [self.root]
        else:
            paths = sorted({Path(p) for p in changed})
            present = [p for p in paths if p.is_dir() or (p.is_file() and is_supported(p))]
            files, failures, skipped = expand_paths(present) if present else ([], [], [])
            gone = [p for p in paths if not p.exists()]
        report.failed.extend(failures)
        report.skipped_unsupported.extend(str(p) for p in skipped)
        stopped = False
        for start in range(0, len(files), self.batch_files):
            if stop_event is not None and stop_event.is_set():
                stopped = True  # the rest is caught up at the next start
                break
            part = files[start : start + self.batch_files]
            with self.hold(self.name), self.workspace.open_or_create(self.name) as coll:
                merge_reports(report, self._ingest(part, coll))
        if self.folder.prune and gone and not stopped:
            with self.hold(self.name), self.workspace.open_or_create(self.name) as coll:
                report.removed.extend(self._remove(coll, gone))
        report.seconds = time.perf_counter() - t0
        if did_something(report):
            self.totals.add(report)
            logger.info(
                "sync %s -> %s: %d added, %d replaced, %d removed, %d failed (%.1f s)",
                self.root,
                self.name,
                len(report.added),
                len(report.replaced),
                len(report.removed),
                len(report.failed),
                report.seconds,
            )
            if self.on_sync is not None:
                self.on_sync(report)
        return report

    def _ingest(self, files: list[Path], coll: Collection) -> IngestReport:
        ws = self.workspace
        return ingest_paths(
            files,
            coll,
            lambda texts: ws.embedder.embed_documents(texts),
            lambda: ws.chunker_for(coll),
            ws.config.loader,
            embed_batch_chunks=max(64, 8 * ws.config.embedder.batch_size),
            loader_pool=self._loader_pool(),
        )

    def _loader_pool(self) -> LoaderPool | None:
        """One loader process for the watcher's whole life (started on the first file it reads)."""
        cfg = self.workspace.config.loader
        if not cfg.isolate:
            return None
        if self._pool is None:
            from ingest.loaders.isolation import LoaderPool

            self._pool = LoaderPool(cfg)
        return self._pool

    def _remove(self, coll: Collection, gone: list[Path]) -> list[str]:
        """Remove the files ingested from the ``gone`` paths (files or folders) that no longer exist."""
        prefixes = [str(p) for p in gone]
        doomed = [
            source
            for source in coll.store.file_paths()
            if any(source == p or source.startswith(p.rstrip("/") + "/") for p in prefixes)
            and not Path(source).exists()
        ]
        if doomed:
            coll.delete_documents(sources=doomed)
            logger.info("removed %d file(s) gone from %s", len(doomed), self.root)
        return doomed

    # -- watching ---------------------------------------------------------------------------
    def wanted(self, change: Any, path: str) -> bool:
        """The watchfiles filter: supported files and folders under the root, no hidden ones; every path that is
        gone (it may have been a folder). A sync looks at what is on disk, not at the kind of event."""
        from watchfiles import Change

        p = Path(path)
        try:
            rel = p.relative_to(self.root)
        except ValueError:
            return False
        if any(part.startswith(".") for part in rel.parts):
            return False
        if change == Change.deleted or not p.exists():  # a move out may be reported as an addition
            return True
        return p.is_dir() or is_supported(p)

    def run(self, stop_event: threading.Event) -> SyncTotals:
        """Catch up with the folder, then sync its changes until ``stop_event`` is set; returns the totals.

        Raises :class:`FolderMissingError` when the folder is missing or disappears, and other
        :class:`~ingest.errors.IngestError` s that no retry can fix (e.g. the collection was built with another
        embedder). A busy collection is retried every ``retry_s`` seconds with the changes kept.
        """
        from watchfiles import watch

        if not self.root.is_dir():
            raise FolderMissingError(f"{self.root} is not a folder; pass an existing folder to watch")
        pending: set[str] = set()
        caught_up = False
        retry_at = 0.0
        try:
            # The watcher is running from the first iteration on, so nothing that changes during the catch-up
            # is missed: its events come with the next iteration.
            for changes in watch(
                self.root,
                watch_filter=self.wanted,
                debounce=self.folder.max_batch_ms,
                step=self.folder.debounce_ms,
                stop_event=stop_event,
                rust_timeout=TICK_MS,
                yield_on_timeout=True,
                raise_interrupt=False,
                force_polling=self.force_polling,
            ):
                pending.update(path for _change, path in changes)
                if stop_event.is_set():
                    break
                if time.monotonic() < retry_at or (caught_up and not pending):
                    continue
                batch, pending = pending, set()
                try:
                    self.sync_once(batch if caught_up else None, stop_event)
                    if not caught_up:
                        caught_up = True
                        self.ready.set()
                        logger.info("caught up with %s; following its changes", self.root)
                except CollectionBusyError as exc:
                    pending |= batch
                    self.totals.busy_retries += 1
                    retry_at = time.monotonic() + self.retry_s
                    logger.info("collection %s is busy (%s); retrying in %.0f s", self.name, exc, self.retry_s)
        finally:
            self.close()
        return self.totals

    # -- in a thread (the server) -------------------------------------------------------------
    def start(self) -> FolderSync:
        """Run :meth:`run` in a daemon thread until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_logged, name=f"ragqa-watch-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run_logged(self) -> None:
        try:
            self.run(self._stop)
        except IngestError as exc:
            self.error = exc
            logger.error("folder sync %s -> %s stopped: %s", self.root, self.name, exc)
        except Exception as exc:  # never die silently in the server
            self.error = exc
            logger.exception("folder sync %s -> %s stopped", self.root, self.name)

    def request_stop(self) -> None:
        """Ask the thread to stop after the batch in progress (returns at once)."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop (after the batch in progress) and wait up to ``timeout`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning(
                    "folder sync of %s still busy after %.0f s; it catches up at the next start", self.root, timeout
                )

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the loader process (a later sync starts a new one)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
