"""Conversations and their turns, per API key, in the server's SQLite file.

A conversation belongs to the key that started it: every read and delete names the key, and a
conversation of another key is reported as missing (the caller cannot tell it exists). Each turn keeps
the question as asked, the standalone question it was answered as (:mod:`rag.conversation`), the
answer and its ``answer_id`` in the answer log. At most ``max_turns`` turns are kept per conversation
(the oldest go first). Deleting a collection deletes its conversations; deleting a document deletes the
turns whose answers cited it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from api.db import SqliteStore


def new_conversation_id() -> str:
    return uuid.uuid4().hex


class ConversationStore(SqliteStore):
    schema = """
    CREATE TABLE IF NOT EXISTS conversations (
        conversation_id TEXT PRIMARY KEY,
        key_id          TEXT NOT NULL,
        collection      TEXT NOT NULL,
        title           TEXT NOT NULL,         -- the first question, cut to 200 characters
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS conversations_key ON conversations(key_id, updated_at);
    CREATE TABLE IF NOT EXISTS conversation_turns (
        turn_id             INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id     TEXT NOT NULL REFERENCES conversations(conversation_id) ON DELETE CASCADE,
        created_at          REAL NOT NULL,
        question            TEXT NOT NULL,
        standalone_question TEXT NOT NULL,
        answer              TEXT NOT NULL,
        answer_id           TEXT
    );
    CREATE INDEX IF NOT EXISTS conversation_turns_conv ON conversation_turns(conversation_id, turn_id);
    """

    def create(self, key_id: str, collection: str, title: str, conversation_id: str | None = None) -> dict[str, Any]:
        """A new conversation of ``key_id`` (``conversation_id``: an id made by :func:`new_conversation_id`;
        creating it twice keeps the first)."""
        now = time.time()
        conv = {
            "conversation_id": conversation_id or new_conversation_id(),
            "key_id": key_id,
            "collection": collection,
            "title": title.strip()[:200],
            "created_at": now,
            "updated_at": now,
        }
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO conversations VALUES(:conversation_id,:key_id,:collection,:title,:created_at,"
                ":updated_at)",
                conv,
            )
        return {**conv, "turns": 0}

    def get(self, conversation_id: str, key_id: str) -> dict[str, Any] | None:
        """The conversation if it exists and belongs to ``key_id``, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM conversation_turns t WHERE t.conversation_id=c.conversation_id) "
                "AS turns FROM conversations c WHERE c.conversation_id=? AND c.key_id=?",
                (conversation_id, key_id),
            ).fetchone()
        return dict(row) if row else None

    def list_for(self, key_id: str, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """``key_id``'s conversations, most recently used first, and how many it has in all."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM conversation_turns t WHERE t.conversation_id=c.conversation_id) "
                "AS turns FROM conversations c WHERE c.key_id=? ORDER BY c.updated_at DESC LIMIT ? OFFSET ?",
                (key_id, limit, offset),
            ).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM conversations WHERE key_id=?", (key_id,)).fetchone()[0]
        return [dict(r) for r in rows], total

    def turns(self, conversation_id: str, last: int | None = None) -> list[dict[str, Any]]:
        """The turns in order (only the ``last`` ones when given)."""
        sql = "SELECT * FROM conversation_turns WHERE conversation_id=? ORDER BY turn_id DESC"
        args: tuple = (conversation_id,)
        if last is not None:
            sql += " LIMIT ?"
            args += (last,)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [dict(r) for r in reversed(rows)]

    def add_turn(
        self,
        conversation_id: str,
        *,
        question: str,
        standalone_question: str,
        answer: str,
        answer_id: str | None,
        max_turns: int,
    ) -> None:
        """Append a turn; drop the oldest beyond ``max_turns``."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO conversation_turns(conversation_id, created_at, question, standalone_question, answer, "
                "answer_id) VALUES(?,?,?,?,?,?)",
                (conversation_id, now, question, standalone_question, answer, answer_id),
            )
            db.execute("UPDATE conversations SET updated_at=? WHERE conversation_id=?", (now, conversation_id))
            db.execute(
                "DELETE FROM conversation_turns WHERE conversation_id=? AND turn_id NOT IN (SELECT turn_id FROM "
                "conversation_turns WHERE conversation_id=? ORDER BY turn_id DESC LIMIT ?)",
                (conversation_id, conversation_id, max(1, max_turns)),
            )

    def delete_collection(self, collection: str) -> int:
        """Delete every conversation about ``collection`` (it was deleted), with its turns; returns how many."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM conversations WHERE collection=?", (collection,))
        return cur.rowcount

    def delete_turns_of(self, answer_ids: Iterable[str]) -> int:
        """Delete the turns that hold these answers (their cited documents were deleted); returns how many.
        A conversation that lost turns is retitled with its first remaining question (empty when none is left)."""
        n = 0
        with self._tx() as db:
            touched: set[str] = set()
            for answer_id in dict.fromkeys(answer_ids):
                rows = db.execute(
                    "SELECT conversation_id FROM conversation_turns WHERE answer_id=?", (answer_id,)
                ).fetchall()
                touched.update(r[0] for r in rows)
                n += db.execute("DELETE FROM conversation_turns WHERE answer_id=?", (answer_id,)).rowcount
            for conversation_id in touched:
                db.execute(
                    "UPDATE conversations SET title=COALESCE((SELECT substr(trim(question), 1, 200) FROM "
                    "conversation_turns WHERE conversation_id=? ORDER BY turn_id LIMIT 1), '') WHERE conversation_id=?",
                    (conversation_id, conversation_id),
                )
        return n

    def delete(self, conversation_id: str, key_id: str) -> bool:
        """Delete the conversation and its turns if it belongs to ``key_id``; False when there is none."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM conversations WHERE conversation_id=? AND key_id=?", (conversation_id, key_id)
            )
        return cur.rowcount > 0
