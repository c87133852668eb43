"""API keys: created by ``ragqa keys create``, stored hashed, checked on every request.

A key reads ``rq_<key_id>_<secret>``. Only ``sha256(secret)`` is stored, next to the public
``key_id`` used to find it; the whole key is shown once, at creation. A key may be limited to
named collections: to such a key every other collection does not exist (404, never readable).
Revocation takes effect on the next request (keys are looked up per request).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.db import SqliteStore

KEY_PREFIX = "rq_"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    collections: tuple[str, ...] | None  # None: every collection
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "collections": list(self.collections) if self.collections is not None else None,
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
        last_used_at REAL
    );
    """

    def create(self, name: str, collections: list[str] | None = None) -> tuple[ApiKey, str]:
        """A new key and its full secret text (shown once; only its hash is kept)."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        colls = sorted(set(collections)) if collections else None
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO api_keys(key_id, name, secret_hash, collections, created_at) VALUES(?,?,?,?,?)",
                (key_id, name, _hash(secret), json.dumps(colls) if colls is not None else None, now),
            )
        return ApiKey(key_id, name, tuple(colls) if colls is not None else None, now), f"{KEY_PREFIX}{key_id}_{secret}"

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
            with self._tx() as db:
                db.execute("UPDATE api_keys SET last_used_at=? WHERE key_id=?", (now, key_id))
        return _row_to_key(row)


def _row_to_key(row) -> ApiKey:
    colls = json.loads(row["collections"]) if row["collections"] is not None else None
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        collections=tuple(colls) if colls is not None else None,
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


def open_key_store(home: Path) -> KeyStore:
    from api.db import server_db_path

    return KeyStore(server_db_path(home))
