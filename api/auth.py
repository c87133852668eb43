"""API keys: created by ``ragqa keys create``, stored hashed, checked on every request.

A key reads ``rq_<key_id>_<secret>``. Only ``sha256(secret)`` is stored, next to the public
``key_id`` used to find it; the whole key is shown once, at creation. A key may be limited to
named collections: to such a key every other collection does not exist (404, never readable).
Likewise a key may be limited to named LoRA adapters (``ragqa keys create --adapter NAME``): other
adapters are not listed for it and asking with one answers 404, as for a missing adapter.
Revocation takes effect on the next request (keys are looked up per request).

``last_used_at`` is written at most once a minute per key and best-effort: when the write fails
(a full disk, a locked database), the request goes on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.db import SqliteStore

logger = logging.getLogger(__name__)

KEY_PREFIX = "rq_"
MISSING_KEY = "missing API key: send `Authorization: Bearer <key>` (create one with `ragqa keys create NAME`)"
INVALID_KEY = "invalid or revoked API key; create a new one with `ragqa keys create NAME`"
#: where the app's auth gate (``api.app.AuthGateMiddleware``) leaves the verified key in ``request.state``
GATE_STATE_KEY = "ragqa_api_key"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    collections: tuple[str, ...] | None  # None: every collection
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None
    adapters: tuple[str, ...] | None = None  # None: every adapter

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def allows_adapter(self, adapter: str) -> bool:
        return self.adapters is None or adapter in self.adapters

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "collections": list(self.collections) if self.collections is not None else None,
            "adapters": list(self.adapters) if self.adapters is not None else None,
            "created_at": self.created_at,
            "revoked": self.revoked,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


#: The identity of requests when the server runs with ``--no-auth``: every collection.
ANONYMOUS = ApiKey(key_id="anonymous", name="no-auth", collections=None, created_at=0.0)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyStore(SqliteStore):
    schema = """
    CREATE TABLE IF NOT EXISTS api_keys (
        key_id       TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        secret_hash  TEXT NOT NULL,
        collections  TEXT,            -- JSON list, NULL = all collections
        created_at   REAL NOT NULL,
        revoked_at   REAL,
        last_used_at REAL,
        adapters     TEXT             -- JSON list, NULL = all adapters
    );
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self._lock:  # a server.sqlite from before per-key adapters
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(api_keys)")}
            if "adapters" not in columns:
                self._db.execute("ALTER TABLE api_keys ADD COLUMN adapters TEXT")

    def create(
        self, name: str, collections: list[str] | None = None, adapters: list[str] | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its full secret text (shown once; only its hash is kept).

        ``collections`` / ``adapters``: the only ones the key may use (None or empty: all)."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        colls = sorted(set(collections)) if collections else None
        adps = sorted(set(adapters)) if adapters else None
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO api_keys(key_id, name, secret_hash, collections, created_at, adapters) "
                "VALUES(?,?,?,?,?,?)",
                (
                    key_id,
                    name,
                    _hash(secret),
                    json.dumps(colls) if colls is not None else None,
                    now,
                    json.dumps(adps) if adps is not None else None,
                ),
            )
        key = ApiKey(
            key_id,
            name,
            tuple(colls) if colls is not None else None,
            now,
            adapters=tuple(adps) if adps is not None else None,
        )
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
        keys = [_row_to_key(r) for r in rows]
        return keys if include_revoked else [k for k in keys if not k.revoked]

    def get(self, key_id: str) -> ApiKey | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM api_keys WHERE key_id=?", (key_id,)).fetchone()
        return _row_to_key(row) if row else None

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when no active key has this id."""
        with self._tx() as db:
            n = db.execute(
                "UPDATE api_keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL", (time.time(), key_id)
            ).rowcount
        return n > 0

    def verify(self, token: str) -> ApiKey | None:
        """The active key for a bearer token, or None (unknown, malformed, wrong secret, revoked)."""
        if not token.startswith(KEY_PREFIX):
            return None
        key_id, sep, secret = token[len(KEY_PREFIX) :].partition("_")
        if not sep or not key_id or not secret:
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM api_keys WHERE key_id=?", (key_id,)).fetchone()
        if row is None or row["revoked_at"] is not None:
            _hash(secret)  # same work either way
            return None
        if not hmac.compare_digest(row["secret_hash"], _hash(secret)):
            return None
        now = time.time()
        if row["last_used_at"] is None or now - row["last_used_at"] > 60:  # at most one write a minute per key
            self._touch(key_id, now)
        return _row_to_key(row)

    def _touch(self, key_id: str, now: float) -> None:
        """Record the key's use; best-effort: a failed write (full disk, locked database) is logged only."""
        try:
            with self._tx() as db:
                db.execute("UPDATE api_keys SET last_used_at=? WHERE key_id=?", (now, key_id))
        except (sqlite3.Error, OSError) as exc:
            logger.warning("could not record the use of key %s (the request goes on): %s", key_id, exc)


def _row_to_key(row) -> ApiKey:
    colls = json.loads(row["collections"]) if row["collections"] is not None else None
    adps = json.loads(row["adapters"]) if row["adapters"] is not None else None
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        collections=tuple(colls) if colls is not None else None,
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        adapters=tuple(adps) if adps is not None else None,
    )


def open_key_store(home: Path) -> KeyStore:
    from api.db import server_db_path

    return KeyStore(server_db_path(home))
