"""Read-only collection handles shared by requests, one per collection and store generation.

A request leases a handle (:meth:`ReaderCache.lease`); the handle is reused while the
collection's store generation is unchanged, and replaced once the ingestion worker commits a
file (the old one is closed when its last lease ends). Readers never take the write lock and
only ever see committed files: the FAISS index loaded for a generation, or rebuilt in memory
from the committed vectors when the writer has not saved that generation's index yet.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ingest.collection import Collection, validate_name
from ingest.errors import CollectionNotFoundError

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    coll: Collection
    inode: int
    generation: int
    refs: int = 0
    retired: bool = False


class ReaderCache:
    def __init__(self, workspace, capacity: int = 16) -> None:
        self.workspace = workspace
        self.capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.opens = 0  #: handles opened (for tests)

    @contextmanager
    def lease(self, name: str) -> Iterator[tuple[Collection, int]]:
        """``(collection, generation)`` opened read-only; released at the end of the block."""
        entry = self._acquire(name)
        try:
            yield entry.coll, entry.generation
        finally:
            self._release(entry)

    def _acquire(self, name: str) -> _Entry:
        validate_name(name)
        store = self.workspace.collections_dir / name / "store.sqlite"
        with self._lock:
            try:
                inode = os.stat(store).st_ino
            except FileNotFoundError:
                self._retire(name)
                raise CollectionNotFoundError(f"collection {name!r} not found") from None
            entry = self._entries.get(name)
            if entry is not None and (entry.inode != inode or entry.coll.store.generation != entry.generation):
                self._retire(name)
                entry = None
            if entry is None:
                coll = self.workspace.open(name, readonly=True)
                try:
                    generation = coll.store.generation
                    _ = coll.index  # load (or rebuild) now, once per generation
                except Exception:
                    coll.close()
                    raise
                self.opens += 1
                entry = _Entry(coll, inode, generation)
                self._entries[name] = entry
                while len(self._entries) > self.capacity:
                    self._retire(next(iter(self._entries)))
            self._entries.move_to_end(name)
            entry.refs += 1
            return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.refs -= 1
            if entry.retired and entry.refs == 0:
                entry.coll.close()

    def _retire(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            entry.retired = True
            if entry.refs == 0:
                entry.coll.close()

    def drop(self, name: str) -> None:
        """Forget a collection's handle (it was deleted)."""
        with self._lock:
            self._retire(name)

    def close(self) -> None:
        with self._lock:
            for name in list(self._entries):
                self._retire(name)
