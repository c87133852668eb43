"""The server's own SQLite file (``$RAGQA_HOME/server.sqlite``): jobs, API keys, answers, feedback.

Each store (:mod:`api.jobs`, :mod:`api.auth`, :mod:`api.answers`) opens its own connection in
WAL mode with ``synchronous=FULL`` (a committed row survives a crash) and serialises its use
with a lock, so one store may be shared by the request threads and the ingestion worker. The
CLI (``ragqa keys ...``) opens the same file while the server runs; WAL lets both work.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

SERVER_DB = "server.sqlite"


def server_db_path(home: Path) -> Path:
    return Path(home).expanduser() / SERVER_DB


class SqliteStore:
    """Base of the server's stores: one connection, one lock, a schema created on open."""

    schema = ""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()
        with self._lock:
            self._db.executescript(self.schema)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self):
        return _Tx(self._db, self._lock)


class _Tx:
    """``with store._tx() as db:`` — BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), under the lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()
