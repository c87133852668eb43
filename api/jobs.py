"""Upload jobs: a persistent queue in the server's SQLite file and the workers that run it.

Life of an upload:

1. The request's files are streamed to ``uploads/<collection>/.jobs/<job_id>/<name>`` (names
   sanitised by :func:`sanitize_filename`; size and type checked on the way), then one job row and
   one row per file are committed (status ``queued``) and the request answers 202 at once.
2. The :class:`IngestWorker` threads (``server.ingest_workers``) take one file at a time, from the job that
   the :class:`FairQueue` picks: round-robin over the keys, then the collections, with unfinished jobs, so one
   tenant's big upload does not hold everyone else's. A collection is written by one worker at a time;
   different collections are ingested in parallel. For each file a worker moves the upload to its stable place
   ``uploads/<collection>/<name>`` and ingests that path, so the document's source is the same on
   every re-upload of a file name and an unchanged re-upload is skipped by the pipeline's
   content hash. Each file is one transaction in the collection; readers see it once committed.
   The collection's write lock is taken per file and released in between (and while idle), so
   deletes from the API interleave with a long job.
3. A file that fails (corrupt, empty, unsupported) fails its own entry only; the previous
   version of the file, if any, is put back.
4. After the last file the collection's abstention threshold is recalibrated (:mod:`rag.calibration`)
   when the job changed the collection.

Replicas: several ``ragqa serve`` processes may share one ``RAGQA_HOME`` (one ``server.sqlite``). A job is
worked under a lease in the jobs table (``lease_owner`` = ``host:pid:nonce`` of the :class:`JobStore`,
``lease_expires``): a worker claims a job with one conditional ``UPDATE`` (free, its own, or expired), renews
the lease every ``lease_s / 3`` while it holds the job, and gives it back after each turn and at stop. So two
replicas never ingest the same job at once; the job of a replica that died is taken over once its lease
expires (at once when the dead process ran on this host: its pid is gone).

Restart: jobs found ``running`` (without a live lease) are queued again and resume at their first unfinished file;
a file whose upload is gone fails with a message; a job of a deleted collection fails. No job
is ever dropped. Staging folders of jobs that no longer run (left by a crash) are removed at start.

Full disk: the worker never dies of it. A disk-full error (``ENOSPC``, SQLite's "disk is full")
while a job runs pauses that job (its files stay pending, the attempt is not counted as a poison
pill); the worker waits until the free space is above the floor (``server.min_free_mb``), then
resumes it. The worker reads every file in one loader process (:class:`~ingest.loaders.isolation.LoaderPool`)
for its whole life, closed when it stops.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from api.db import SqliteStore
from api.errors import is_disk_full
from ingest.errors import CollectionBusyError, CollectionError, CollectionNotFoundError

logger = logging.getLogger(__name__)

STAGING = ".jobs"
MAX_NAME = 120  # characters
MAX_SUFFIX = 16  # a longer "suffix" is part of the name
MAX_NAME_BYTES = 200  # UTF-8 bytes: with the ".<name>.prev" backup still under the usual 255-byte file-name limit
_SEPARATORS = re.compile(r"[/\\]")
_PORTABLE = re.compile(r'[<>:"|?*]')  # legal on Linux, not on Windows (backups, zip exports)
_DROPPED_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")  # controls, bidi/format marks, surrogates, ...

JOB_STATUSES = ("queued", "running", "done", "failed")
FILE_STATUSES = ("pending", "added", "replaced", "unchanged", "failed")


def sanitize_filename(name: str) -> str:
    """A safe file name for an upload, as close to the client's name as possible.

    Unicode is kept, NFC-normalised (``отчёт.txt``, ``報告.pdf``, ``q3 report.txt`` stay as they are); folders
    are dropped (``../../etc/passwd`` -> ``passwd``); control and format characters (bidi overrides, zero-width
    marks) are removed; ``<>:"|?*`` become ``_``; leading dots, dashes and spaces and trailing dots and spaces
    go; the suffix is lower-cased; the name is cut to :data:`MAX_NAME` characters and :data:`MAX_NAME_BYTES`
    UTF-8 bytes, keeping the suffix. Never empty, never ``.``/``..``, never hidden.
    """
    base = _SEPARATORS.split(name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    base = _PORTABLE.sub("_", base).lstrip(" .-").rstrip(" .") or "upload"
    stem, dot, suffix = base.rpartition(".")
    if dot and stem.rstrip(" ") and 0 < len(suffix) <= MAX_SUFFIX and " " not in suffix:
        stem, suffix = stem.rstrip(" "), "." + suffix.lower()
    else:
        stem, suffix = base, ""
    stem = stem[: MAX_NAME - len(suffix)]
    while stem and len((stem + suffix).encode("utf-8")) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return (stem.rstrip(" .") or "upload") + suffix


def name_key(name: str) -> str:
    """How two client file names are compared: the last path part, NFC, suffix lower-cased (exact otherwise)."""
    base = unicodedata.normalize("NFC", _SEPARATORS.split(name or "")[-1])
    stem, dot, suffix = base.rpartition(".")
    return f"{stem}.{suffix.lower()}" if dot and stem else base


class UploadStorage:
    """Where uploads live: ``<home>/uploads/<collection>/``; staging under ``.jobs/<job_id>/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def collection_dir(self, collection: str) -> Path:
        return self.root / collection

    def staging_dir(self, collection: str, job_id: str) -> Path:
        return self.collection_dir(collection) / STAGING / job_id

    def stable_path(self, collection: str, filename: str) -> Path:
        path = (self.collection_dir(collection) / filename).resolve()
        base = self.collection_dir(collection).resolve()
        if path.parent != base:  # defence in depth: sanitize_filename already makes this impossible
            raise ValueError(f"refusing to write outside {base}: {filename!r}")
        return path

    def remove_collection(self, collection: str) -> None:
        shutil.rmtree(self.collection_dir(collection), ignore_errors=True)

    def staging_dirs(self) -> builtins.list[tuple[str, Path]]:
        """Every staging folder on disk: ``(job_id, folder)`` pairs."""
        if not self.root.is_dir():
            return []
        return [
            (job.name, job)
            for coll in self.root.iterdir()
            if (coll / STAGING).is_dir()
            for job in (coll / STAGING).iterdir()
            if job.is_dir()
        ]

    def remove_orphans(self, active: set[str]) -> builtins.list[str]:
        """Remove the staging folders of jobs not in ``active`` (left by a crash mid-upload or mid-job);
        return their job ids."""
        removed = []
        for job_id, folder in self.staging_dirs():
            if job_id not in active:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(job_id)
        return removed


def free_bytes(path: Path) -> int | None:
    """Free bytes of the file system holding ``path`` (its nearest existing parent); None when unknown."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return None


class JobStore(SqliteStore):
    schema = """
    CREATE TABLE IF NOT EXISTS jobs (
        job_id      TEXT PRIMARY KEY,
        collection  TEXT NOT NULL,
        key_id      TEXT,
        status      TEXT NOT NULL,
        created_at  REAL NOT NULL,
        started_at  REAL,
        finished_at REAL,
        error       TEXT,
        attempts    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
    CREATE TABLE IF NOT EXISTS job_files (
        job_id      TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
        ordinal     INTEGER NOT NULL,
        filename    TEXT NOT NULL,      -- sanitised
        original    TEXT NOT NULL,      -- as sent by the client
        size        INTEGER NOT NULL,
        status      TEXT NOT NULL,
        error       TEXT,
        documents   INTEGER NOT NULL DEFAULT 0,
        chunks      INTEGER NOT NULL DEFAULT 0,
        attempts    INTEGER NOT NULL DEFAULT 0,  -- times reading this file started (poison-pill count)
        PRIMARY KEY (job_id, ordinal)
    );
    """

    def __init__(self, path: Path, *, lease_s: float = 30.0, owner: str | None = None) -> None:
        super().__init__(path)
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        self.lease_s = float(lease_s)
        #: who holds this store's leases: host:pid:nonce (one per JobStore, so one per server process)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._last_counts: dict[str, int] | None = None
        with self._lock:  # a server.sqlite from before per-file attempts / job leases
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(job_files)")}
            if "attempts" not in columns:
                self._db.execute("ALTER TABLE job_files ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            if "lease_owner" not in columns:
                self._db.execute("ALTER TABLE jobs ADD COLUMN lease_owner TEXT")
            if "lease_expires" not in columns:
                self._db.execute("ALTER TABLE jobs ADD COLUMN lease_expires REAL")

    def close(self) -> None:
        """Give back this store's leases (a clean stop), then close the connection."""
        try:
            self.release_leases()
        except sqlite3.Error as exc:  # closing must not fail (e.g. the disk is full)
            logger.warning("could not give back the job leases of %s: %s", self.owner, exc)
        super().close()

    # -- leases (several server processes over one server.sqlite) -----------------------------
    def claim(self, job_id: str) -> dict[str, Any] | None:
        """Take the lease of ``job_id`` and mark it running, atomically: only when the job is unfinished and its
        lease is free, ours or expired. Returns the job, or None when another live owner holds it (or it ended)."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status='running', started_at=COALESCE(started_at, ?), "
                "attempts=attempts + (status='queued'), lease_owner=?, lease_expires=? "
                "WHERE job_id=? AND status IN ('queued','running') "
                "AND (lease_owner IS NULL OR lease_owner=? OR lease_expires < ?)",
                (now, self.owner, now + self.lease_s, job_id, self.owner, now),
            )
            claimed = cur.rowcount == 1
        return self.get(job_id) if claimed else None

    def renew(self, job_ids: builtins.list[str]) -> set[str]:
        """Push the expiry of our leases of ``job_ids`` to now + ``lease_s``; returns the ids still ours."""
        if not job_ids:
            return set()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET lease_expires=? WHERE lease_owner=? AND job_id IN (SELECT value FROM json_each(?))",
                (time.time() + self.lease_s, self.owner, json.dumps(job_ids)),
            )
            rows = db.execute(
                "SELECT job_id FROM jobs WHERE lease_owner=? AND job_id IN (SELECT value FROM json_each(?))",
                (self.owner, json.dumps(job_ids)),
            ).fetchall()
        return {r[0] for r in rows}

    def holds(self, job_id: str) -> bool:
        """Whether ``job_id`` is running under our lease (checked before each file)."""
        with self._lock:
            row = self._db.execute("SELECT status, lease_owner FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return row is not None and row["status"] == "running" and row["lease_owner"] == self.owner

    def release_lease(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET lease_owner=NULL, lease_expires=NULL WHERE job_id=? AND lease_owner=?",
                (job_id, self.owner),
            )

    def release_leases(self) -> None:
        """Give back every lease this store holds (at stop)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET lease_owner=NULL, lease_expires=NULL WHERE lease_owner=?", (self.owner,))

    def reap_dead_owners(self) -> builtins.list[str]:
        """Free the leases of owners on this host whose process is gone (no need to wait for the expiry);
        returns the job ids freed."""
        host = socket.gethostname()
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, lease_owner FROM jobs WHERE lease_owner IS NOT NULL AND lease_owner != ?",
                (self.owner,),
            ).fetchall()
        dead = [r["job_id"] for r in rows if _owner_dead(r["lease_owner"], host)]
        if dead:
            with self._tx() as db:
                for job_id in dead:
                    db.execute("UPDATE jobs SET lease_owner=NULL, lease_expires=NULL WHERE job_id=?", (job_id,))
            logger.warning("freed the job lease(s) of %s: their server process is gone", ", ".join(dead))
        return dead

    def create(self, job_id: str, collection: str, files: list[dict[str, Any]], key_id: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs(job_id, collection, key_id, status, created_at) VALUES(?,?,?,?,?)",
                (job_id, collection, key_id, "queued", time.time()),
            )
            db.executemany(
                "INSERT INTO job_files(job_id, ordinal, filename, original, size, status) VALUES(?,?,?,?,?,?)",
                [(job_id, i, f["filename"], f["original"], f["size"], "pending") for i, f in enumerate(files)],
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if job is None:
                return None
            files = self._db.execute("SELECT * FROM job_files WHERE job_id=? ORDER BY ordinal", (job_id,)).fetchall()
        return _job_dict(job, files)

    def list(
        self, collections: set[str] | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT job_id, collection FROM jobs", []
        if status is not None:
            sql += " WHERE status=?"
            args.append(status)
        sql += " ORDER BY created_at DESC"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for r in rows:
            if collections is None or r["collection"] in collections:
                job = self.get(r["job_id"])
                if job is not None:
                    out.append(job)
            if len(out) >= limit:
                break
        return out

    def claim_next(self) -> dict[str, Any] | None:
        """The oldest queued job that is free to take, now running under our lease (None when there is none)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id FROM jobs WHERE status='queued' AND (lease_owner IS NULL OR lease_expires < ?) "
                "ORDER BY created_at",
                (time.time(),),
            ).fetchall()
        for row in rows:
            job = self.claim(row["job_id"])
            if job is not None:
                return job
        return None

    def status(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT status FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return row["status"] if row else None

    def active_ids(self) -> set[str]:
        """Ids of the jobs still queued or running (their staging folders are in use)."""
        with self._lock:
            rows = self._db.execute("SELECT job_id FROM jobs WHERE status IN ('queued','running')").fetchall()
        return {r[0] for r in rows}

    def uncount_file(self, job_id: str, ordinal: int) -> None:
        """Take back the attempt counted by :meth:`begin_file` (the file was not read: the disk was full)."""
        with self._tx() as db:
            db.execute(
                "UPDATE job_files SET attempts=MAX(0, attempts-1) WHERE job_id=? AND ordinal=?", (job_id, ordinal)
            )

    def requeue(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET status='queued' WHERE job_id=? AND status='running'", (job_id,))

    def begin_file(self, job_id: str, ordinal: int) -> int:
        """Count one more attempt at a file (committed before it is read); return the count."""
        with self._tx() as db:
            db.execute("UPDATE job_files SET attempts=attempts+1 WHERE job_id=? AND ordinal=?", (job_id, ordinal))
            row = db.execute(
                "SELECT attempts FROM job_files WHERE job_id=? AND ordinal=?", (job_id, ordinal)
            ).fetchone()
        return int(row["attempts"]) if row else 0

    def set_file(
        self, job_id: str, ordinal: int, status: str, error: str | None = None, documents: int = 0, chunks: int = 0
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE job_files SET status=?, error=?, documents=?, chunks=? WHERE job_id=? AND ordinal=?",
                (status, error, documents, chunks, job_id, ordinal),
            )

    def finish(self, job_id: str, status: str | None = None, error: str | None = None) -> str:
        """Close a job: ``failed`` when told or when every file failed, else ``done``."""
        with self._tx() as db:
            if status is None:
                counts = {
                    r[0]: r[1]
                    for r in db.execute(
                        "SELECT status, COUNT(*) FROM job_files WHERE job_id=? GROUP BY status", (job_id,)
                    )
                }
                total = sum(counts.values())
                status = "failed" if total and counts.get("failed", 0) == total else "done"
                if status == "failed" and error is None:
                    error = "every file failed; see the per-file errors"
            if status == "failed":  # files never reached fail with the job
                db.execute(
                    "UPDATE job_files SET status='failed', error=? WHERE job_id=? AND status='pending'",
                    (error or "the job failed before this file was processed", job_id),
                )
            db.execute(
                "UPDATE jobs SET status=?, error=?, finished_at=?, lease_owner=NULL, lease_expires=NULL "
                "WHERE job_id=? AND status IN ('queued','running')",
                (status, error, time.time(), job_id),
            )
        return status

    def fail_collection(self, collection: str, reason: str) -> builtins.list[str]:
        """Fail every unfinished job of ``collection`` (e.g. it was deleted)."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT job_id FROM jobs WHERE collection=? AND status IN ('queued','running')", (collection,)
                )
            ]
        for job_id in ids:
            self.finish(job_id, "failed", reason)
        return ids

    def recover(self) -> builtins.list[str]:
        """At start-up: jobs left ``running`` by a stopped or crashed server are queued again (not those a live
        replica holds under an unexpired lease)."""
        self.reap_dead_owners()
        free = "status='running' AND (lease_owner IS NULL OR lease_owner=? OR lease_expires < ?)"
        args = (self.owner, time.time())
        with self._tx() as db:
            ids = [r[0] for r in db.execute(f"SELECT job_id FROM jobs WHERE {free}", args)]
            db.execute(f"UPDATE jobs SET status='queued', lease_owner=NULL, lease_expires=NULL WHERE {free}", args)
        return ids

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = {s: 0 for s in JOB_STATUSES}
        out.update({r[0]: r[1] for r in rows})
        return out

    def counts_nowait(self) -> dict[str, int]:
        """:meth:`counts` for the event loop (``/healthz``, ``/metrics``): never waits for the store's lock, which
        a writer may hold while SQLite waits for the file's write lock; then the last counts read are returned."""
        if not self._lock.acquire(blocking=False):
            return dict(self._last_counts or {s: 0 for s in JOB_STATUSES})
        try:
            counts = self._last_counts = self.counts()
        finally:
            self._lock.release()
        return dict(counts)

    # -- fair scheduling (see FairQueue) -----------------------------------------------------
    def runnable(self) -> builtins.list[dict[str, Any]]:
        """Unfinished jobs free for us to take (no live lease of another owner), oldest first:
        ``{job_id, collection, key_id, created_at}``."""
        self.reap_dead_owners()
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, collection, key_id, created_at FROM jobs WHERE status IN ('queued','running') "
                "AND (lease_owner IS NULL OR lease_owner=? OR lease_expires < ?) ORDER BY created_at",
                (self.owner, time.time()),
            ).fetchall()
        return [dict(r) for r in rows]

    def start(self, job_id: str) -> dict[str, Any] | None:
        """The job, running under our lease (a running job between two turns stays as it is); None when another
        live owner holds its lease or it has ended."""
        return self.claim(job_id)

    # -- upload names -------------------------------------------------------------------------
    def names_in_use(self, collection: str, filename: str, stored: bool = True) -> set[str]:
        """The client names (as :func:`name_key`) that the file ``filename`` of ``collection`` comes from: its
        last successful upload (when ``stored``: the file is still there) and any upload of it waiting in a job."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.original, f.status, j.status AS job_status FROM job_files f JOIN jobs j "
                "ON j.job_id=f.job_id WHERE j.collection=? AND f.filename=? ORDER BY j.created_at DESC",
                (collection, filename),
            ).fetchall()
        names: set[str] = set()
        last_done = False
        for r in rows:
            if r["status"] == "pending" and r["job_status"] in ("queued", "running"):
                names.add(name_key(r["original"]))
            elif stored and r["status"] in ("added", "replaced", "unchanged") and not last_done:
                names.add(name_key(r["original"]))
                last_done = True
        return names


def _owner_dead(owner: str, host: str) -> bool:
    """Whether lease owner ``host:pid:nonce`` is a process of this host that no longer runs."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False  # another JobStore of this process: it gives its leases back when closed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _job_dict(job, files) -> dict[str, Any]:
    counts = {s: 0 for s in FILE_STATUSES}
    for f in files:
        counts[f["status"]] = counts.get(f["status"], 0) + 1
    total = len(files)
    processed = total - counts["pending"]
    return {
        "job_id": job["job_id"],
        "collection": job["collection"],
        "key_id": job["key_id"],
        "status": job["status"],
        "created_at": job["created_at"],
        "started_at": job["started_at"],
        "finished_at": job["finished_at"],
        "error": job["error"],
        "progress": {
            "total": total,
            "processed": processed,
            "fraction": round(processed / total, 4) if total else 1.0,
            **{s: counts[s] for s in FILE_STATUSES if s != "pending"},
        },
        "files": [
            {
                "filename": f["filename"],
                "original": f["original"],
                "size": f["size"],
                "status": f["status"],
                "error": f["error"],
                "documents": f["documents"],
                "chunks": f["chunks"],
            }
            for f in files
        ],
        "errors": [{"filename": f["filename"], "error": f["error"]} for f in files if f["status"] == "failed"],
    }


class WriterGate:
    """In-process writer locks, one per collection: the worker holds one per file, deletes wait on it."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, collection: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(collection, threading.Lock())

    @contextmanager
    def hold(self, collection: str, timeout: float = -1) -> Iterator[None]:
        lock = self._lock(collection)
        if not lock.acquire(timeout=timeout):
            raise CollectionBusyError(
                f"collection {collection!r} is being written by the ingestion worker; try again shortly"
            )
        try:
            yield
        finally:
            lock.release()


class FairQueue:
    """Which unfinished job a free worker takes next, one file per turn.

    Round-robin over owners: the key that was served longest ago goes first, then, among that key's
    collections, the one served longest ago, then its oldest job. So a 50-file upload of one tenant
    interleaves file by file with everyone else's jobs instead of holding them. A job is taken by one worker
    at a time, and a collection by one worker at a time (one writer per collection), so two workers ingest
    two different collections in parallel.
    """

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}  # job_id -> collection, for the jobs workers are on now
        self._served: dict[Any, int] = {}  # key or (key, collection) -> tick of its last turn
        self._tick = 0

    def take(self) -> dict[str, Any] | None:
        """The next job to work a file of (marked running under this process's lease), held until
        :meth:`release`; None when none is free. A job another replica claimed meanwhile is passed over."""
        lost: set[str] = set()
        while True:
            row = self._pick(lost)
            if row is None:
                return None
            try:
                job = self.jobs.start(row["job_id"])
            except BaseException:
                self.release(row["job_id"])
                raise
            if job is not None:
                return job
            self.release(row["job_id"])  # another replica took it first
            lost.add(row["job_id"])

    def _pick(self, skip: set[str]) -> dict[str, Any] | None:
        """The fairest free job (its turn counted, held in-process), or None."""
        with self._lock:
            busy = set(self._held.values())
            best: tuple[tuple[int, int, float], dict[str, Any]] | None = None
            for row in self.jobs.runnable():
                if row["job_id"] in self._held or row["job_id"] in skip or row["collection"] in busy:
                    continue
                key = row["key_id"] or ""
                rank = (self._served.get(key, 0), self._served.get((key, row["collection"]), 0), row["created_at"])
                if best is None or rank < best[0]:
                    best = (rank, row)
            if best is None:
                return None
            row = best[1]
            key = row["key_id"] or ""
            self._tick += 1
            self._served[key] = self._served[(key, row["collection"])] = self._tick
            self._held[row["job_id"]] = row["collection"]
            return row

    def release(self, job_id: str) -> None:
        """End this process's turn on ``job_id``: forget it and give back its lease."""
        with self._lock:
            self._held.pop(job_id, None)
        self.jobs.release_lease(job_id)

    def held(self) -> builtins.list[str]:
        """The jobs this process's workers are on now (their leases are renewed)."""
        with self._lock:
            return builtins.list(self._held)

    def busy(self) -> bool:
        """Whether a worker is on a job now."""
        with self._lock:
            return bool(self._held)


def auto_workers(cpus: int | None = None) -> int:
    """Ingestion workers for ``server.ingest_workers: null``: 2 on a machine with 4 or more cores, else 1
    (embedding is CPU-bound; the question path needs cores too)."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return 2 if cpus >= 4 else 1


class IngestWorker:
    """The ingestion threads (``workers``, default 1), fed by a :class:`FairQueue`. ``submit()`` wakes them;
    ``stop()`` ends them after their current file."""

    def __init__(
        self,
        workspace,
        jobs: JobStore,
        storage: UploadStorage,
        gate: WriterGate,
        on_file: Callable[[str, int], None] | None = None,
        on_job: Callable[[str], None] | None = None,
        busy_retry_s: float = 2.0,
        max_attempts: int | None = None,
        workers: int = 1,
        min_free_bytes: int = 0,
        disk_retry_s: float = 30.0,
    ) -> None:
        self.workspace = workspace
        self.jobs = jobs
        self.storage = storage
        self.gate = gate
        self.on_file = on_file or (lambda result, chunks: None)
        self.on_job = on_job or (lambda status: None)
        self.busy_retry_s = busy_retry_s
        # A file whose reading was started this many times without finishing (the server crashed, was killed or
        # ran out of memory each time) fails, so that the job goes on with its other files.
        self.max_attempts = max_attempts if max_attempts is not None else workspace.config.loader.max_attempts
        # a disk-full error pauses the job; the worker polls the free space every disk_retry_s until it is
        # above min_free_bytes (server.min_free_mb), then resumes the job
        self.min_free_bytes = min_free_bytes
        self.disk_retry_s = disk_retry_s
        self.disk_full = False  # True while a job waits for disk space (health, tests)
        self._loader_pool: Any = None  # one loader process for the worker's life (ingest.loader.isolate)
        self._pool_lock = threading.Lock()  # the worker threads share the pool (it reads one file at a time)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self.workers = max(1, int(workers))
        self.queue = FairQueue(jobs)
        self._threads: list[threading.Thread] = []
        self._wakes: list[threading.Event] = [self._wake]
        self._current = threading.local()  # the job this worker thread holds in the queue
        self._renewer: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        resumed = self.jobs.recover()
        if resumed:
            logger.warning("resuming %d upload job(s) interrupted by a restart: %s", len(resumed), ", ".join(resumed))
        orphans = self.storage.remove_orphans(self.jobs.active_ids())
        if orphans:
            logger.warning("removed %d orphaned staging folder(s) of finished or unknown jobs", len(orphans))
        self._start_threads()
        self._renewer = threading.Thread(target=self._renew_leases, name="ragqa-job-leases", daemon=True)
        self._renewer.start()
        self.submit()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for wake in self._wakes:
            wake.set()
        self._join_threads(timeout)
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            self.jobs.release_leases()  # another replica may take the unfinished jobs at once
        except Exception as exc:
            logger.warning("could not give back the job leases at stop: %s", exc)
        with self._pool_lock:
            if self._loader_pool is not None:
                self._loader_pool.close()
                self._loader_pool = None

    def submit(self) -> None:
        self._idle.clear()
        for wake in self._wakes:
            wake.set()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the queue is empty (for tests and benchmarks)."""
        return self._idle.wait(timeout)

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _renew_leases(self) -> None:
        """Renew the leases of the jobs being worked every ``lease_s / 3`` until the worker stops."""
        while not self._stop.wait(self.jobs.lease_s / 3):
            held = self.queue.held()
            try:
                kept = self.jobs.renew(held)
            except Exception as exc:  # a busy or full disk: try again next round, the lease still runs
                logger.warning("could not renew the job leases: %s", exc)
                continue
            for job_id in set(held) - kept:
                logger.error("job %s: its lease was taken over by another server; this one stops working it", job_id)

    # -- threads and turns (fairness) ---------------------------------------------------------
    def _start_threads(self) -> None:
        self._wakes = [self._wake] + [threading.Event() for _ in range(self.workers - 1)]
        self._threads = [
            threading.Thread(
                target=self._run, args=(wake,), name=f"ragqa-ingest-worker-{i}" if i else "ragqa-ingest-worker"
            )
            for i, wake in enumerate(self._wakes)
        ]
        for t in self._threads:
            t.daemon = True
            t.start()
        self._thread = self._threads[0]

    def _join_threads(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                logger.warning("ingestion worker still busy after %.0f s; its job resumes at the next start", timeout)

    def _claim(self) -> dict[str, Any] | None:
        """Give back this thread's previous job and take the next one from the fair queue."""
        previous = getattr(self._current, "job_id", None)
        if previous is not None:
            self.queue.release(previous)
            self._current.job_id = None
        job = self.queue.take()
        if job is not None:
            self._current.job_id = job["job_id"]
        return job

    @staticmethod
    def _turn_over(job: dict[str, Any], ordinal: int) -> bool:
        """True once this turn has worked one file of ``job`` (the job snapshot's first pending file): the
        job goes back to the fair queue so that other owners' jobs get their turn."""
        first = next((i for i, f in enumerate(job["files"]) if f["status"] == "pending"), ordinal)
        return ordinal > first

    # -- loop ---------------------------------------------------------------------------
    def _run(self, wake: threading.Event | None = None) -> None:
        wake = wake if wake is not None else self._wake
        while not self._stop.is_set():
            try:
                self._step(wake)
            except Exception:  # never lose the worker: log, breathe, go on
                logger.exception("ingestion worker: unexpected error; retrying")
                self._stop.wait(self.busy_retry_s)

    def _step(self, wake: threading.Event) -> None:
        """Claim and run one turn of a job from the fair queue (or wait to be woken)."""
        wake.clear()
        if self.space_low():
            self._wait_for_space()
            return
        try:
            job = self._claim()
        except Exception as exc:
            if is_disk_full(exc):
                self._wait_for_space(exc)
            else:
                logger.exception("could not read the job queue")
                self._stop.wait(self.busy_retry_s)
            return
        if job is None:
            if not self.queue.busy():
                self._idle.set()
            wake.wait(timeout=5.0)
            return
        job_id = job["job_id"]
        while True:
            try:
                self._process(job)
                return
            except CollectionBusyError as exc:  # another process (e.g. `ragqa ingest`) holds the lock
                logger.info("job %s waits: %s", job_id, exc)
                self.jobs.requeue(job_id)
                self._stop.wait(self.busy_retry_s)
                return
            except CollectionError as exc:
                self._finish(job_id, "failed", str(exc))
                return
            except Exception as exc:
                if not is_disk_full(exc):  # one bad job fails alone
                    logger.exception("job %s failed", job_id)
                    self._finish(job_id, "failed", f"{type(exc).__name__}: {exc}")
                    return
                # disk full: the job stays 'running' with its files pending, and resumes when space returns
                # (a stop meanwhile leaves it 'running': queued again at the next start)
                self._wait_for_space(exc)
                if self._stop.is_set():
                    return
                fresh = self.jobs.get(job_id)
                if fresh is None or fresh["status"] != "running":
                    return
                job = fresh

    def space_low(self) -> bool:
        """Whether the uploads' file system has less free space than ``min_free_bytes``."""
        if self.min_free_bytes <= 0:
            return False
        free = free_bytes(self.storage.root)
        return free is not None and free < self.min_free_bytes

    def _wait_for_space(self, exc: BaseException | None = None) -> None:
        """Wait (polling every ``disk_retry_s``) until the disk has room again, or the worker stops."""
        if exc is not None:
            logger.error("ingestion paused: the disk is full (%s); retrying every %g s", exc, self.disk_retry_s)
        else:
            logger.error(
                "ingestion paused: less than %d MB free under %s; retrying every %g s",
                self.min_free_bytes >> 20,
                self.storage.root,
                self.disk_retry_s,
            )
        self.disk_full = True
        try:
            while not self._stop.wait(self.disk_retry_s):
                if not self.space_low():
                    logger.warning("ingestion resumes: disk space is back")
                    return
        finally:
            self.disk_full = False

    def _pool(self):
        """The worker's loader process pool (None when loaders are not isolated), started on first use."""
        with self._pool_lock:
            if self._loader_pool is None and self.workspace.config.loader.isolate and not self._stop.is_set():
                from ingest.loaders.isolation import LoaderPool

                self._loader_pool = LoaderPool(self.workspace.config.loader)
            return self._loader_pool

    def _finish(self, job_id: str, status: str | None = None, error: str | None = None) -> None:
        final = self.jobs.finish(job_id, status, error)
        self.on_job(final)
        job = self.jobs.get(job_id)
        if job is not None:
            shutil.rmtree(self.storage.staging_dir(job["collection"], job_id), ignore_errors=True)
        logger.info("job %s %s", job_id, final)

    def _process(self, job: dict[str, Any]) -> None:
        from ingest.pipeline import ingest_paths

        job_id, name = job["job_id"], job["collection"]
        ws = self.workspace
        for ordinal, f in enumerate(job["files"]):
            if f["status"] != "pending":
                continue  # done before a restart
            if self._turn_over(job, ordinal):
                return  # one file per turn; the job stays 'running' and goes back to the fair queue
            if self._stop.is_set():
                return  # stays 'running' -> queued again at the next start
            if not self.jobs.holds(job_id):
                return  # failed meanwhile (collection deleted), or its lease lapsed and another server took it
            staged = self.storage.staging_dir(name, job_id) / f["filename"]
            stable = self.storage.stable_path(name, f["filename"])
            with self.gate.hold(name):
                try:
                    coll = ws.open(name)
                except CollectionNotFoundError:
                    self._finish(job_id, "failed", f"collection {name!r} no longer exists")
                    return
                backup = stable.with_name(f".{stable.name}.prev")
                try:
                    if staged.exists():
                        if stable.exists():
                            os.replace(stable, backup)
                        os.replace(staged, stable)
                    elif not stable.exists():
                        self.jobs.set_file(
                            job_id,
                            ordinal,
                            "failed",
                            "the uploaded file was lost (server restarted while it was staged); upload it again",
                        )
                        self.on_file("failed", 0)
                        continue
                    existed = coll.file_hash(str(stable)) is not None
                    attempt = self.jobs.begin_file(job_id, ordinal)
                    if attempt > self.max_attempts:
                        report = None
                        reason = (
                            f"the server stopped {attempt - 1} times while reading this file (a crash, a kill or "
                            f"running out of memory), so it failed after {self.max_attempts} attempts "
                            "(ingest.loader.max_attempts) and the job went on with its other files; check or split "
                            "the file before uploading it again"
                        )
                        logger.error("job %s: %s %s", job_id, f["filename"], reason)
                    else:
                        try:
                            if ws.config.ray.address:  # ingest.ray.address: the file's work runs on a Ray cluster
                                report = ws.ray_ingester().ingest([stable], coll)
                            else:
                                report = ingest_paths(
                                    [stable],
                                    coll,
                                    lambda texts: ws.embedder.embed_documents(texts),
                                    ws.chunker_for(coll),
                                    ws.config.loader,
                                    embed_batch_chunks=max(64, 8 * ws.config.embedder.batch_size),
                                    loader_pool=self._pool(),
                                )
                        except Exception as exc:
                            if is_disk_full(exc):  # not the file's fault: no poison-pill attempt
                                self._uncount(job_id, ordinal)
                            raise
                        reason = report.failed[0].reason.replace(str(stable), f["filename"]) if report.failed else ""
                        if report.failed and _disk_full_reason(reason):
                            self._uncount(job_id, ordinal)
                            raise OSError(errno.ENOSPC, f"{f['filename']}: {reason}")
                finally:
                    coll.close()
                if report is None or report.failed:
                    self.jobs.set_file(job_id, ordinal, "failed", reason)
                    if backup.exists():
                        os.replace(backup, stable)  # keep the last good version on disk
                    elif not existed:
                        stable.unlink(missing_ok=True)
                    self.on_file("failed", 0)
                    continue
                backup.unlink(missing_ok=True)
                result = "unchanged" if report.unchanged else ("replaced" if report.replaced else "added")
                self.jobs.set_file(job_id, ordinal, result, None, report.documents, report.chunks)
                self.on_file(result, report.chunks)
        self._calibrate(name)
        self._finish(job_id)

    def _uncount(self, job_id: str, ordinal: int) -> None:
        try:
            self.jobs.uncount_file(job_id, ordinal)
        except Exception as exc:  # the disk may be too full for this write too
            logger.warning("job %s: could not take back the attempt at file %d: %s", job_id, ordinal, exc)

    def _calibrate(self, name: str) -> None:
        """Recompute the collection's abstention threshold once per job, after its files (skipped when no
        file changed it; a failure is logged and leaves the previous threshold)."""
        from rag.calibration import recalibrate

        with self.gate.hold(name):
            recalibrate(self.workspace, name, quiet=True)


def _disk_full_reason(reason: str) -> bool:
    """Whether a file's failure reason is the disk being full (then the file is retried, not failed)."""
    low = reason.lower()
    return "no space left on device" in low or "disk is full" in low or "disk quota exceeded" in low


def new_job_id() -> str:
    return uuid.uuid4().hex
