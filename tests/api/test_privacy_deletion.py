"""Deleting a document or a collection leaves nothing of it behind: the uploaded file, the logged
answers that quoted it (question, answer, citations, feedback text) and the conversation turns."""

from __future__ import annotations

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient

from api.answers import AnswerLog
from api.app import create_app
from api.auth import open_key_store
from api.db import server_db_path
from tests.api.test_app import assert_error, make_settings, wait_job

pytestmark = pytest.mark.integration  # the job worker end to end

SECRET = "The vault combination of the northern office is 4711 and it opens at dawn."
FAQ = [
    {"title": "Vault hours", "text": "The northern office vault opens at dawn and closes at dusk."},
    {"title": "Vault code", "text": "Ask the northern office manager for the vault combination."},
]
KEEP = "The southern office keeps its archive in the basement near the vault stairs."
QUESTION = "What is the vault combination of the northern office?"


@pytest.fixture()
def env(tmp_path, tiny_st_model, tiny_llm):
    home = tmp_path / "home"
    settings = make_settings(home, tiny_st_model, tiny_llm)
    store = open_key_store(home)
    _, admin = store.create("admin")
    store.close()
    app = create_app(settings)
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {admin}"}
        for name, files in (
            (
                "priv",
                [("secret.txt", SECRET.encode()), ("faq.jsonl", "\n".join(json.dumps(r) for r in FAQ).encode())],
            ),
            ("keep", [("keep.txt", KEEP.encode())]),
        ):
            assert client.post("/v1/collections", json={"name": name}, headers=h).status_code == 201
            r = client.post(
                f"/v1/collections/{name}/documents",
                files=[("files", (n, data, "text/plain")) for n, data in files],
                headers=h,
            )
            job = wait_job(client, r.json()["job_id"], h)
            assert job["status"] == "done" and job["progress"]["failed"] == 0, job
        yield {"c": client, "h": h, "home": home, "service": app.state.service}


def _ask(env, collection: str, question: str = QUESTION) -> dict:
    r = env["c"].post("/v1/ask", json={"question": question, "collection": collection, "k": 8}, headers=env["h"])
    assert r.status_code == 200, r.text
    return r.json()


def _docs(env, collection: str) -> dict[str, list[str]]:
    listing = env["c"].get(f"/v1/collections/{collection}/documents", headers=env["h"]).json()
    out: dict[str, list[str]] = {}
    for d in listing["data"]:
        out.setdefault(d["source"], []).append(d["doc_id"])
    return out


def _raw_answer_rows(env, collection: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(server_db_path(env["home"]))
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM answers WHERE collection=?", (collection,)).fetchall()
    finally:
        db.close()


def test_deleting_documents_removes_the_file_and_redacts_answers_and_turns(env):
    c, h, service = env["c"], env["h"], env["service"]
    ans = _ask(env, "priv")
    kept = _ask(env, "keep", "Where is the southern archive?")
    r = c.post(
        f"/v1/answers/{ans['answer_id']}/feedback",
        json={"rating": "down", "correction": "It is 4711.", "comment": "the code is 4711"},
        headers=h,
    )
    assert r.status_code == 201, r.text
    docs = _docs(env, "priv")
    faq_ids = docs["faq.jsonl"]
    assert len(faq_ids) == 2 and set(faq_ids) <= {x["doc_id"] for x in ans["citations"]}  # k=8: every chunk
    folder = env["home"] / "uploads" / "priv"

    # one record of a two-record file: the file stays while the other record is in the collection
    assert c.delete(f"/v1/collections/priv/documents/{faq_ids[0]}", headers=h).json()["deleted"] == 1
    assert (folder / "faq.jsonl").exists()
    logged = service.answers.get(ans["answer_id"])
    assert logged["redacted"] and logged["question"] == "" and logged["answer"] == "" and logged["citations"] == []
    assert not [r for r in service.answers.feedback_records() if r["answer_id"] == ans["answer_id"]]
    (row,) = [r for r in _raw_answer_rows(env, "priv") if r["answer_id"] == ans["answer_id"]]
    assert row["redacted_at"] is not None
    assert all("4711" not in row[k] for k in ("question", "answer", "raw_answer", "citations"))
    db = sqlite3.connect(server_db_path(env["home"]))
    try:
        feedback = db.execute(
            "SELECT correction, comment FROM feedback WHERE answer_id=?", (ans["answer_id"],)
        ).fetchall()
    finally:
        db.close()
    assert feedback == [(None, None)]
    conv = c.get(f"/v1/conversations/{ans['conversation_id']}", headers=h).json()
    assert conv["turns"] == 0 and conv["data"] == [] and conv["title"] == ""
    # the other collection's answer is untouched
    other = service.answers.get(kept["answer_id"])
    assert not other["redacted"] and other["question"] == "Where is the southern archive?" and other["citations"]

    # the last record of the file: the file goes too
    assert c.delete(f"/v1/collections/priv/documents/{faq_ids[1]}", headers=h).json()["deleted"] == 1
    assert not (folder / "faq.jsonl").exists()
    # by source: the file goes at once
    assert c.delete("/v1/collections/priv/documents", params={"source": "secret.txt"}, headers=h).json()["deleted"] == 1
    assert not (folder / "secret.txt").exists()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == []


def test_deleting_a_collection_redacts_its_answers_and_deletes_its_conversations(env):
    c, h, service = env["c"], env["h"], env["service"]
    first = _ask(env, "priv")
    follow = c.post(
        "/v1/ask",
        json={"question": "And when does it open?", "collection": "priv", "conversation_id": first["conversation_id"]},
        headers=h,
    ).json()
    kept = _ask(env, "keep", "Where is the southern archive?")
    assert c.get(f"/v1/conversations/{first['conversation_id']}", headers=h).json()["turns"] == 2

    assert c.delete("/v1/collections/priv", headers=h).status_code == 204
    assert not (env["home"] / "uploads" / "priv").exists()
    for answer_id in (first["answer_id"], follow["answer_id"]):
        logged = service.answers.get(answer_id)
        assert logged["redacted"] and logged["question"] == "" and logged["citations"] == []
    rows = _raw_answer_rows(env, "priv")
    assert len(rows) == 2
    assert all("vault" not in r[k].lower() for r in rows for k in ("question", "answer", "raw_answer", "citations"))
    assert_error(c.get(f"/v1/conversations/{first['conversation_id']}", headers=h), 404, "conversation_not_found")
    assert not service.answers.get(kept["answer_id"])["redacted"]
    assert c.get(f"/v1/conversations/{kept['conversation_id']}", headers=h).json()["turns"] == 1
    # a collection created again under the same name starts empty, with no old answers to find
    assert c.post("/v1/collections", json={"name": "priv"}, headers=h).status_code == 201
    assert c.get("/v1/collections/priv/documents", headers=h).json()["count"] == 0


OLD_ANSWERS = """
CREATE TABLE answers (
    answer_id TEXT PRIMARY KEY, created_at REAL NOT NULL, key_id TEXT, endpoint TEXT NOT NULL,
    collection TEXT NOT NULL, collection_generation INTEGER NOT NULL, model TEXT NOT NULL, adapter TEXT,
    mode TEXT NOT NULL, k INTEGER, question TEXT NOT NULL, answer TEXT NOT NULL, raw_answer TEXT NOT NULL,
    abstained INTEGER NOT NULL, abstain_reason TEXT, citations TEXT NOT NULL, timings TEXT NOT NULL
);
INSERT INTO answers VALUES('a1', 0, NULL, 'ask', 'old', 1, 'm', NULL, 'stuff', 4, 'secret question?', 'secret',
    'secret', 0, NULL, '[{"doc_id": "d1", "source": "/x/old.txt", "text": "secret"}]', '{}');
"""


def test_answer_log_of_an_old_database_gains_the_redaction_column(tmp_path):
    path = tmp_path / "server.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_ANSWERS)
    db.close()
    log = AnswerLog(path)
    try:
        assert not log.get("a1")["redacted"]
        assert log.redact_citing("old", doc_ids={"other"}) == []
        assert log.redact_citing("old", sources={"/x/old.txt"}) == ["a1"]
        row = log.get("a1")
        assert row["redacted"] and "secret" not in json.dumps(row)
    finally:
        log.close()
