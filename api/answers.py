"""The answer log and the feedback on it, in the server's SQLite file.

Every answer the server gives is logged with its provenance: the collection and its store
generation (the exact index version the evidence came from), the generator model, adapter,
mode and k, the question, the answer and the citations (chunk text, source, score). Feedback
(``up``/``down``, an optional corrected answer, a comment) refers to a logged answer, so the
fine-tuning commands can turn the pair into SFT examples (question + contexts -> correction or
an up-voted answer) and preference pairs (correction preferred over a down-voted answer); see
:meth:`AnswerLog.feedback_records`.

Deleting a collection or a document redacts the answers that used it (:meth:`AnswerLog.redact_collection`,
:meth:`AnswerLog.redact_citing`): the question, the answer, the citations and the feedback's correction and
comment are cleared, and ``redacted_at`` is set; the row stays, so counts and timings are kept, and
redacted answers are left out of the fine-tuning records.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from api.db import SqliteStore


class AnswerLog(SqliteStore):
    schema = """
    CREATE TABLE IF NOT EXISTS answers (
        answer_id      TEXT PRIMARY KEY,
        created_at     REAL NOT NULL,
        key_id         TEXT,
        endpoint       TEXT NOT NULL,        -- 'ask' or 'chat'
        collection     TEXT NOT NULL,
        collection_generation INTEGER NOT NULL,
        model          TEXT NOT NULL,
        adapter        TEXT,
        mode           TEXT NOT NULL,
        k              INTEGER,
        question       TEXT NOT NULL,
        answer         TEXT NOT NULL,
        raw_answer     TEXT NOT NULL,
        abstained      INTEGER NOT NULL,
        abstain_reason TEXT,
        citations      TEXT NOT NULL,        -- JSON list of {index, chunk_id, doc_id, title, source, text, score, ...}
        timings        TEXT NOT NULL,        -- JSON {retrieve_s, generate_s, total_s}
        redacted_at    REAL                  -- set when the collection or a cited document was deleted
    );
    CREATE INDEX IF NOT EXISTS answers_collection ON answers(collection, created_at);
    CREATE TABLE IF NOT EXISTS feedback (
        feedback_id  INTEGER PRIMARY KEY AUTOINCREMENT,
        answer_id    TEXT NOT NULL REFERENCES answers(answer_id) ON DELETE CASCADE,
        created_at   REAL NOT NULL,
        key_id       TEXT,
        rating       TEXT NOT NULL CHECK (rating IN ('up', 'down')),
        correction   TEXT,
        comment      TEXT
    );
    CREATE INDEX IF NOT EXISTS feedback_answer ON feedback(answer_id);
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self._lock:  # a server.sqlite from before redaction
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(answers)")}
            if "redacted_at" not in columns:
                self._db.execute("ALTER TABLE answers ADD COLUMN redacted_at REAL")

    def log(self, answer: dict[str, Any], *, generation: int, k: int | None, endpoint: str, key_id: str | None) -> None:
        """Record an answer (``rag.qa.Answer.to_dict()``) with the collection generation it used."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO answers(answer_id, created_at, key_id, endpoint, collection, collection_generation, "
                "model, adapter, mode, k, question, answer, raw_answer, abstained, abstain_reason, citations, timings) "
                "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    answer["answer_id"],
                    time.time(),
                    key_id,
                    endpoint,
                    answer["collection"],
                    int(generation),
                    answer["model"],
                    answer.get("adapter"),
                    answer["mode"],
                    k,
                    answer["question"],
                    answer["answer"],
                    answer.get("raw_answer", ""),
                    int(bool(answer["abstained"])),
                    answer.get("abstain_reason"),
                    json.dumps(answer.get("citations", []), ensure_ascii=False, default=str),
                    json.dumps(answer.get("timings", {})),
                ),
            )

    def get(self, answer_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM answers WHERE answer_id=?", (answer_id,)).fetchone()
        return _answer(row) if row else None

    def add_feedback(
        self, answer_id: str, rating: str, correction: str | None, comment: str | None, key_id: str | None
    ) -> dict[str, Any]:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO feedback(answer_id, created_at, key_id, rating, correction, comment) VALUES(?,?,?,?,?,?)",
                (answer_id, now, key_id, rating, correction, comment),
            )
            fid = cur.lastrowid
        return {
            "feedback_id": fid,
            "answer_id": answer_id,
            "rating": rating,
            "correction": correction,
            "comment": comment,
            "created_at": now,
        }

    # -- redaction ------------------------------------------------------------------------------
    def redact_collection(self, collection: str) -> int:
        """Redact every answer from ``collection`` (it was deleted); returns how many were redacted."""
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT answer_id FROM answers WHERE collection=? AND redacted_at IS NULL", (collection,)
                )
            ]
        return len(self.redact(ids))

    def redact_citing(self, collection: str, *, doc_ids: Iterable[str] = (), sources: Iterable[str] = ()) -> list[str]:
        """Redact the answers from ``collection`` that cite one of ``doc_ids`` or ``sources``; returns their ids."""
        doc_ids, sources = set(doc_ids), set(sources)
        if not doc_ids and not sources:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT answer_id, citations FROM answers WHERE collection=? AND redacted_at IS NULL", (collection,)
            ).fetchall()
        ids = []
        for row in rows:
            cited = json.loads(row["citations"])
            if any(c.get("doc_id") in doc_ids or c.get("source") in sources for c in cited if isinstance(c, dict)):
                ids.append(row["answer_id"])
        return self.redact(ids)

    def redact(self, answer_ids: Iterable[str]) -> list[str]:
        """Clear the text of these answers and of their feedback (question, answer, citations, correction,
        comment); the rows stay with ``redacted_at`` set."""
        ids = list(dict.fromkeys(answer_ids))
        now = time.time()
        with self._tx() as db:
            for answer_id in ids:
                db.execute(
                    "UPDATE answers SET question='', answer='', raw_answer='', abstain_reason=NULL, citations='[]', "
                    "redacted_at=? WHERE answer_id=?",
                    (now, answer_id),
                )
                db.execute("UPDATE feedback SET correction=NULL, comment=NULL WHERE answer_id=?", (answer_id,))
        return ids

    def count(self) -> dict[str, int]:
        with self._lock:
            a = self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            f = self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        return {"answers": a, "feedback": f}

    def feedback_records(self, collection: str | None = None) -> Iterator[dict[str, Any]]:
        """One record per feedback row, joined with its answer — the input of SFT / preference export.

        Keys: ``feedback_id, answer_id, rating, correction, comment, created_at, question, answer,
        raw_answer, abstained, contexts`` (the cited chunk texts, in citation order), ``citations``,
        ``collection, collection_generation, model, adapter, mode``.
        """
        sql = (
            "SELECT f.feedback_id, f.rating, f.correction, f.comment, f.created_at AS feedback_at, a.* "
            "FROM feedback f JOIN answers a ON a.answer_id=f.answer_id WHERE a.redacted_at IS NULL"
        )
        args: tuple = ()
        if collection is not None:
            sql += " AND a.collection=?"
            args = (collection,)
        sql += " ORDER BY f.feedback_id"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        for row in rows:
            rec = _answer(row)
            rec.update(
                {
                    "feedback_id": row["feedback_id"],
                    "rating": row["rating"],
                    "correction": row["correction"],
                    "comment": row["comment"],
                    "created_at": row["feedback_at"],
                }
            )
            rec["contexts"] = [c.get("text", "") for c in rec["citations"]]
            yield rec


def _answer(row) -> dict[str, Any]:
    return {
        "answer_id": row["answer_id"],
        "created_at": row["created_at"],
        "key_id": row["key_id"],
        "endpoint": row["endpoint"],
        "collection": row["collection"],
        "collection_generation": row["collection_generation"],
        "model": row["model"],
        "adapter": row["adapter"],
        "mode": row["mode"],
        "k": row["k"],
        "question": row["question"],
        "answer": row["answer"],
        "raw_answer": row["raw_answer"],
        "abstained": bool(row["abstained"]),
        "abstain_reason": row["abstain_reason"],
        "citations": json.loads(row["citations"]),
        "timings": json.loads(row["timings"]),
        "redacted": row["redacted_at"] is not None,
    }
