"""The REST API through FastAPI's TestClient, with tiny models and a throw-away workspace."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import open_key_store
from api.settings import ServerConfig, Settings
from rag.config import QAConfig

DOC_A = (
    "The flat index compares the query with every stored vector, so its search is exact.\n\n"
    "HNSW is a graph-based approximate nearest neighbour index with fast queries.\n"
)
DOC_B = "Paris is the capital of France. The Seine flows through Paris.\n"


def make_settings(home: Path, st_model: Path, llm: Path, **server) -> Settings:
    s = Settings(home=home)
    s.ingest.embedder.model = str(st_model)
    s.generator.model = str(llm)
    s.qa = QAConfig(max_new_tokens=4, answer_style="short", full_max_new_tokens=8)
    cfg = {"max_upload_mb": 0.05, "max_files": 3, "max_question_chars": 200, "max_k": 8}
    cfg.update(server)
    s.server = ServerConfig(**cfg)
    return s


def wait_job(client: TestClient, job_id: str, headers=None, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((lines.get("event", ""), json.loads(lines["data"])))
    return out


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_st_model, tiny_llm):
    """A running app with auth on: an admin key, a key limited to collection 'team', a TestClient."""
    home = tmp_path_factory.mktemp("api-home")
    settings = make_settings(home, tiny_st_model, tiny_llm)
    store = open_key_store(home)
    _, admin = store.create("admin")
    _, team = store.create("team-only", ["team"])
    revoked_key, revoked = store.create("old")
    store.revoke(revoked_key.key_id)
    store.close()
    app = create_app(settings)
    with TestClient(app) as client:
        yield {
            "client": client,
            "home": home,
            "settings": settings,
            "app": app,
            "admin": {"Authorization": f"Bearer {admin}"},
            "team": {"Authorization": f"Bearer {team}"},
            "revoked": {"Authorization": f"Bearer {revoked}"},
        }


@pytest.fixture(scope="module")
def docs(env):
    """Collection 'docs' holding a.txt and b.md."""
    c, h = env["client"], env["admin"]
    assert c.post("/v1/collections", json={"name": "docs"}, headers=h).status_code == 201
    files = [("files", ("a.txt", DOC_A.encode(), "text/plain")), ("files", ("b.md", DOC_B.encode(), "text/markdown"))]
    r = c.post("/v1/collections/docs/documents", files=files, headers=h)
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["job_id"], h)
    assert job["status"] == "done" and job["progress"]["added"] == 2, job
    return "docs"


# -- health, docs, metrics ---------------------------------------------------------------------
def test_healthz_docs_and_openapi(env):
    c = env["client"]
    r = c.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["auth"] is True and body["models"]["loaded"] and body["worker_alive"]
    settings = env["settings"]  # the tiny models are folders: clients see their names, not the server's paths
    assert body["models"]["generator"] == Path(settings.generator.model).name
    assert body["models"]["embedder"] == Path(settings.ingest.embedder.model).name
    assert c.get("/docs").status_code == 200
    paths = c.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/ask",
        "/v1/collections/{name}/documents",
        "/v1/jobs/{job_id}",
        "/v1/chat/completions",
        "/v1/answers/{answer_id}/feedback",
        "/metrics",
    ):
        assert p in paths


def test_metrics_prometheus_text(env, docs):
    c = env["client"]
    c.get("/v1/collections/docs", headers=env["admin"])
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE ragqa_http_requests_total counter" in text
    assert 'route="/v1/collections/{name}"' in text  # templates, not raw paths
    assert "ragqa_http_request_duration_seconds_bucket" in text
    assert 'ragqa_ingest_files_total{result="added"}' in text
    assert 'ragqa_jobs{status="done"}' in text


# -- auth --------------------------------------------------------------------------------------
def test_auth_required(env):
    c = env["client"]
    err = assert_error(c.get("/v1/collections"), 401, "unauthorized")
    assert "ragqa keys create" in err["message"]
    assert_error(c.get("/v1/collections", headers={"Authorization": "Bearer rq_nope_secret"}), 401)
    assert_error(c.get("/v1/collections", headers={"Authorization": "Bearer garbage"}), 401)
    assert_error(c.get("/v1/collections", headers=env["revoked"]), 401)
    assert_error(c.post("/v1/ask", json={"question": "q", "collection": "docs"}), 401)
    assert c.get("/v1/collections", headers=env["admin"]).status_code == 200


def test_key_limited_to_collections(env, docs):
    c, team, admin = env["client"], env["team"], env["admin"]
    assert c.post("/v1/collections", json={"name": "team"}, headers=team).status_code == 201
    names = [x["name"] for x in c.get("/v1/collections", headers=team).json()["data"]]
    assert names == ["team"]
    assert {"docs", "team"} <= {x["name"] for x in c.get("/v1/collections", headers=admin).json()["data"]}
    # another tenant's collection does not exist for this key
    assert_error(c.get("/v1/collections/docs", headers=team), 404, "collection_not_found")
    assert_error(c.get("/v1/collections/docs/documents", headers=team), 404)
    assert_error(c.post("/v1/ask", json={"question": "capital?", "collection": "docs"}, headers=team), 404)
    assert_error(
        c.post(
            "/v1/chat/completions", json={"model": "docs", "messages": [{"role": "user", "content": "x"}]}, headers=team
        ),
        404,
    )
    assert_error(c.delete("/v1/collections/docs", headers=team), 404)
    assert_error(c.post("/v1/collections", json={"name": "other"}, headers=team), 404)
    files = [("files", ("x.txt", b"hello there", "text/plain"))]
    assert_error(c.post("/v1/collections/docs/documents", files=files, headers=team), 404)
    # jobs and answers of other collections are invisible too
    r = c.post("/v1/collections/docs/documents", files=files, headers=admin)
    job_id = r.json()["job_id"]
    assert_error(c.get(f"/v1/jobs/{job_id}", headers=team), 404, "job_not_found")
    assert job_id not in [j["job_id"] for j in c.get("/v1/jobs", headers=team).json()["data"]]
    wait_job(c, job_id, admin)
    ans = c.post("/v1/ask", json={"question": "capital of France?", "collection": "docs"}, headers=admin).json()
    assert_error(c.post(f"/v1/answers/{ans['answer_id']}/feedback", json={"rating": "up"}, headers=team), 404)
    assert "ragqa:team" in [m["id"] for m in c.get("/v1/models", headers=team).json()["data"]]
    assert "ragqa:docs" not in [m["id"] for m in c.get("/v1/models", headers=team).json()["data"]]
    c.delete("/v1/collections/docs/documents", params={"source": "x.txt"}, headers=admin)


# -- collections -------------------------------------------------------------------------------
def test_collections_crud_and_errors(env):
    c, h = env["client"], env["admin"]
    r = c.post("/v1/collections", json={"name": "crud", "index": "hnsw"}, headers=h)
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "crud" and info["index"] == "hnsw" and info["documents"] == 0 and info["dim"] == 32
    assert "path" not in info
    assert_error(c.post("/v1/collections", json={"name": "crud"}, headers=h), 409, "collection_exists")
    assert_error(c.post("/v1/collections", json={"name": "../etc"}, headers=h), 422, "invalid_collection_name")
    assert_error(c.post("/v1/collections", json={"name": "x", "index": "nope"}, headers=h), 422, "validation_error")
    assert_error(c.post("/v1/collections", json={"nom": "x"}, headers=h), 422, "validation_error")
    assert_error(
        c.post("/v1/collections", content=b"{not json", headers={**h, "content-type": "application/json"}), 422
    )
    shown = c.get("/v1/collections/crud", headers=h).json()
    assert shown["chunks"] == 0 and shown["embedder"] and shown["index_built"] in ("flat", "hnsw")
    assert_error(c.get("/v1/collections/missing", headers=h), 404, "collection_not_found")
    assert c.delete("/v1/collections/crud", headers=h).status_code == 204
    assert_error(c.get("/v1/collections/crud", headers=h), 404)
    assert_error(c.delete("/v1/collections/crud", headers=h), 404)
    assert_error(c.get("/v1/nothing-here", headers=h), 404, "not_found")


# -- uploads and jobs --------------------------------------------------------------------------
def test_upload_job_documents_and_reupload(env, docs):
    c, h = env["client"], env["admin"]
    home = env["home"]
    listing = c.get("/v1/collections/docs/documents", headers=h).json()
    assert listing["count"] == 2
    assert {d["filename"] for d in listing["data"]} == {"a.txt", "b.md"}
    for d in listing["data"]:  # the upload name, never a server path (the file is in uploads/docs)
        assert d["source"] == d["filename"] and (home / "uploads" / "docs" / d["filename"]).exists()
    shown = c.get("/v1/collections/docs", headers=h).json()
    gen = shown["generation"]
    # the worker calibrated the collection's abstention threshold after the job (too few sentences: off)
    cal = shown["calibration"]
    assert cal["generation"] == gen and cal["n_unanswerable"] >= 100 and cal["min_score"] is None, cal
    # an unchanged re-upload changes nothing
    r = c.post("/v1/collections/docs/documents", files=[("files", ("a.txt", DOC_A.encode(), "text/plain"))], headers=h)
    job = wait_job(c, r.json()["job_id"], h)
    assert job["status"] == "done" and job["files"][0]["status"] == "unchanged", job
    after = c.get("/v1/collections/docs", headers=h).json()
    assert after["generation"] == gen and after["documents"] == 2
    assert c.get("/v1/jobs", headers=h).json()["count"] >= 2


def test_corrupt_file_fails_only_its_entry(env, docs):
    c, h = env["client"], env["admin"]
    files = [
        ("files", ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "application/pdf")),
        ("files", ("good.txt", b"The Loire is the longest river in France.", "text/plain")),
    ]
    r = c.post("/v1/collections/docs/documents", files=files, headers=h)
    assert r.status_code == 202
    assert r.json()["url"] == f"/v1/jobs/{r.json()['job_id']}"
    job = wait_job(c, r.json()["job_id"], h)
    assert job["status"] == "done"
    by_name = {f["filename"]: f for f in job["files"]}
    assert by_name["broken.pdf"]["status"] == "failed" and by_name["broken.pdf"]["error"]
    assert str(env["home"]) not in by_name["broken.pdf"]["error"]  # no server paths in errors
    assert by_name["good.txt"]["status"] == "added" and by_name["good.txt"]["chunks"] >= 1
    assert job["progress"] == {
        "total": 2,
        "processed": 2,
        "fraction": 1.0,
        "added": 1,
        "replaced": 0,
        "unchanged": 0,
        "failed": 1,
    }
    assert job["errors"] == [{"filename": "broken.pdf", "error": by_name["broken.pdf"]["error"]}]
    assert not (env["home"] / "uploads" / "docs" / "broken.pdf").exists()
    assert c.delete("/v1/collections/docs/documents", params={"source": "good.txt"}, headers=h).json() == {
        "deleted": 1,
        "ok": True,
    }


def test_upload_limits_and_bad_input(env, docs):
    c, h = env["client"], env["admin"]
    one = [("files", ("a.txt", b"x", "text/plain"))]
    assert_error(c.post("/v1/collections/nope/documents", files=one, headers=h), 404, "collection_not_found")
    assert_error(
        c.post(
            "/v1/collections/docs/documents",
            files=[("files", ("evil.exe", b"MZ", "application/octet-stream"))],
            headers=h,
        ),
        415,
        "unsupported_file_type",
    )
    many = [("files", (f"f{i}.txt", b"text", "text/plain")) for i in range(4)]
    assert_error(c.post("/v1/collections/docs/documents", files=many, headers=h), 413, "too_many_files")
    big = [("files", ("big.txt", b"a" * 60_000, "text/plain"))]
    assert_error(c.post("/v1/collections/docs/documents", files=big, headers=h), 413, "file_too_large")
    dup = [("files", ("d.txt", b"one", "text/plain")), ("files", ("d.txt", b"two", "text/plain"))]
    assert_error(c.post("/v1/collections/docs/documents", files=dup, headers=h), 422, "duplicate_filename")
    assert_error(
        c.post("/v1/collections/docs/documents", files=[("files", ("e.txt", b"", "text/plain"))], headers=h),
        422,
        "empty_file",
    )
    assert_error(c.post("/v1/collections/docs/documents", data={"x": "1"}, headers=h), 422, "validation_error")
    assert_error(
        c.post(
            "/v1/collections/docs/documents",
            content=b"a" * 1_300_000,
            headers={**h, "content-type": "multipart/form-data; boundary=xx"},
        ),
        413,
    )
    assert c.get("/v1/collections/docs", headers=h).json()["documents"] == 2


def test_filenames_are_sanitised(env, docs):
    c, h = env["client"], env["admin"]
    files = [("files", ("../../outside.txt", b"Traversal attempts stay inside the collection.", "text/plain"))]
    r = c.post("/v1/collections/docs/documents", files=files, headers=h)
    job = wait_job(c, r.json()["job_id"], h)
    assert job["files"][0]["filename"] == "outside.txt" and job["files"][0]["original"] == "../../outside.txt"
    assert (env["home"] / "uploads" / "docs" / "outside.txt").exists()
    assert not (env["home"] / "outside.txt").exists() and not (env["home"] / "uploads" / "outside.txt").exists()
    assert (
        c.delete("/v1/collections/docs/documents", params={"source": "outside.txt"}, headers=h).json()["deleted"] == 1
    )
    assert not (env["home"] / "uploads" / "docs" / "outside.txt").exists()


def test_unknown_job(env):
    assert_error(env["client"].get("/v1/jobs/nope", headers=env["admin"]), 404, "job_not_found")


# -- ask, stream, feedback, delete -------------------------------------------------------------
def test_ask_returns_answer_with_citations_and_logs_it(env, docs):
    c, h = env["client"], env["admin"]
    r = c.post(
        "/v1/ask",
        json={"question": "What is the capital of France?", "collection": "docs", "k": 2, "mode": "stuff"},
        headers=h,
    )
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["answer_id"] and ans["collection"] == "docs" and ans["mode"] == "stuff" and ans["k"] == 2
    assert isinstance(ans["abstained"], bool) and isinstance(ans["answer"], str)
    assert len(ans["citations"]) == 2
    cit = ans["citations"][0]
    assert cit["text"] and cit["source"] and isinstance(cit["score"], float)
    assert {"retrieve_s", "generate_s", "total_s", "server_s"} <= set(ans["timings"])
    gen = c.get("/v1/collections/docs", headers=h).json()["generation"]
    logged = env["app"].state.service.answers.get(ans["answer_id"])
    assert logged["collection_generation"] == ans["collection_generation"] == gen
    assert (
        Path(logged["model"]).name == ans["model"]  # the log keeps the model's folder, the client sees its name
        and logged["mode"] == "stuff"
        and logged["citations"][0]["text"] == cit["text"]
    )
    assert "/" not in ans["model"] and ans["model"] == Path(env["settings"].generator.model).name


def test_ask_answer_style(env, docs):
    c, h = env["client"], env["admin"]
    question = {"question": "What is the capital of France?", "collection": "docs", "k": 2, "mode": "rag-token"}
    full = c.post("/v1/ask", json={**question, "answer_style": "full"}, headers=h).json()
    short = c.post("/v1/ask", json=question, headers=h).json()  # the config's style
    assert full["style"] == "full" and short["style"] == "short"
    assert full["generated_tokens"] <= 8 and short["generated_tokens"] <= 4
    for ans in (full, short):
        assert isinstance(ans["sentences"], list) and (ans["abstained"] or ans["sentences"])
        for sentence in ans["sentences"]:
            assert set(sentence) == {"text", "citations", "spans", "quoted"}
            assert sentence["quoted"] is False or len(sentence["citations"]) == 1  # a quote cites its one chunk
            assert len(sentence["spans"]) == len(sentence["citations"])
            assert all(1 <= n <= len(ans["citations"]) for n in sentence["citations"])
            for n in sentence["citations"]:
                assert f"[{n}]" in ans["answer"] or ans["style"] == "short"
    assert_error(c.post("/v1/ask", json={**question, "answer_style": "long"}, headers=h), 422)


def test_ask_bad_input(env, docs):
    c, h = env["client"], env["admin"]
    assert_error(
        c.post("/v1/ask", json={"question": "x" * 201, "collection": "docs"}, headers=h), 422, "question_too_long"
    )
    assert_error(c.post("/v1/ask", json={"question": "   ", "collection": "docs"}, headers=h), 422, "invalid_question")
    assert_error(c.post("/v1/ask", json={"question": "", "collection": "docs"}, headers=h), 422, "validation_error")
    assert_error(c.post("/v1/ask", json={"question": "q", "collection": "docs", "k": 9}, headers=h), 422, "k_too_large")
    assert_error(c.post("/v1/ask", json={"question": "q", "collection": "docs", "k": 0}, headers=h), 422)
    assert_error(c.post("/v1/ask", json={"question": "q", "collection": "docs", "mode": "magic"}, headers=h), 422)
    assert_error(c.post("/v1/ask", json={"question": "q", "collection": "docs", "bogus": 1}, headers=h), 422)
    assert_error(c.post("/v1/ask", json={"question": "q"}, headers=h), 422)
    assert_error(c.post("/v1/ask", content=b"not json", headers={**h, "content-type": "application/json"}), 422)
    assert_error(
        c.post("/v1/ask", json={"question": "q", "collection": "ghost"}, headers=h), 404, "collection_not_found"
    )
    assert_error(
        c.post("/v1/ask", json={"question": "q", "collection": "docs", "adapter": "nope"}, headers=h),
        404,
        "adapter_not_found",
    )


def test_ask_stream_sse(env, docs):
    c, h = env["client"], env["admin"]
    with c.stream(
        "POST", "/v1/ask", json={"question": "Which index is exact?", "collection": "docs", "stream": True}, headers=h
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = sse_events(text)
    kinds = [k for k, _ in events]
    assert kinds[-1] == "answer" and "token" in kinds
    final = events[-1][1]
    assert final["answer_id"] and final["citations"]
    streamed = "".join(d["text"] for k, d in events if k == "token")
    assert streamed.strip() and env["app"].state.service.answers.get(final["answer_id"]) is not None
    # an error after the stream started arrives as an event
    with c.stream(
        "POST", "/v1/ask", json={"question": "q", "collection": "docs", "stream": True, "adapter": "nope"}, headers=h
    ) as r:
        text = "".join(r.iter_text())
    assert sse_events(text)[-1] == (
        "error",
        {"error": {"code": "adapter_not_found", "message": sse_events(text)[-1][1]["error"]["message"]}},
    )


def test_feedback(env, docs):
    c, h = env["client"], env["admin"]
    ans = c.post("/v1/ask", json={"question": "What flows through Paris?", "collection": "docs"}, headers=h).json()
    r = c.post(
        f"/v1/answers/{ans['answer_id']}/feedback",
        json={"rating": "down", "correction": "The Seine", "comment": "wrong river"},
        headers=h,
    )
    assert r.status_code == 201, r.text
    fb = r.json()
    assert fb["rating"] == "down" and fb["correction"] == "The Seine" and fb["feedback_id"] >= 1
    assert c.post(f"/v1/answers/{ans['answer_id']}/feedback", json={"rating": "up"}, headers=h).status_code == 201
    assert_error(c.post("/v1/answers/nope/feedback", json={"rating": "up"}, headers=h), 404, "answer_not_found")
    assert_error(c.post(f"/v1/answers/{ans['answer_id']}/feedback", json={"rating": "meh"}, headers=h), 422)
    assert_error(c.post(f"/v1/answers/{ans['answer_id']}/feedback", json={}, headers=h), 422)
    recs = [r for r in env["app"].state.service.answers.feedback_records() if r["answer_id"] == ans["answer_id"]]
    assert [r["rating"] for r in recs] == ["down", "up"]
    assert recs[0]["question"] == "What flows through Paris?" and recs[0]["correction"] == "The Seine"
    assert recs[0]["contexts"] and recs[0]["answer"] == ans["answer"] and recs[0]["collection"] == "docs"


def test_delete_documents_then_ask_again(env, docs):
    c, h = env["client"], env["admin"]
    r = c.post(
        "/v1/collections/docs/documents",
        files=[("files", ("tmp.txt", b"Zebras are striped horses of Africa.", "text/plain"))],
        headers=h,
    )
    wait_job(c, r.json()["job_id"], h)
    listing = c.get("/v1/collections/docs/documents", params={"source": "tmp.txt"}, headers=h).json()
    assert listing["count"] == 1
    doc_id = listing["data"][0]["doc_id"]
    ans = c.post(
        "/v1/ask", json={"question": "Zebras striped horses Africa", "collection": "docs", "k": 8}, headers=h
    ).json()
    assert doc_id in {x["doc_id"] for x in ans["citations"]}
    assert c.delete(f"/v1/collections/docs/documents/{doc_id}", headers=h).json() == {"deleted": 1, "ok": True}
    assert_error(c.delete(f"/v1/collections/docs/documents/{doc_id}", headers=h), 404, "document_not_found")
    assert_error(c.delete("/v1/collections/docs/documents", params={"source": "never.txt"}, headers=h), 404)
    assert_error(c.delete("/v1/collections/docs/documents", headers=h), 422)
    shown = c.get("/v1/collections/docs", headers=h).json()
    assert shown["calibration"]["generation"] == shown["generation"]  # recalibrated after the delete
    ans = c.post(
        "/v1/ask", json={"question": "Zebras striped horses Africa", "collection": "docs", "k": 8}, headers=h
    ).json()
    assert doc_id not in {x["doc_id"] for x in ans["citations"]}


# -- OpenAI-compatible -------------------------------------------------------------------------
def test_chat_completions(env, docs):
    c, h = env["client"], env["admin"]
    body = {
        "model": "ragqa:docs",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "temperature": 0.2,
    }
    r = c.post("/v1/chat/completions", json=body, headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == "ragqa:docs"
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant" and "Sources:" in msg["content"] and out["sources"]
    assert out["choices"][0]["finish_reason"] == "stop"
    assert env["app"].state.service.answers.get(out["ragqa"]["answer_id"])["endpoint"] == "chat"
    # the bare collection name works too, and content parts
    body2 = {
        "model": "docs",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Which index is exact?"}]}],
    }
    assert c.post("/v1/chat/completions", json=body2, headers=h).status_code == 200
    with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=h) as r:
        assert r.status_code == 200
        lines = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert all(ch["object"] == "chat.completion.chunk" and ch["id"] == chunks[0]["id"] for ch in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["sources"]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    assert "Sources:" in text
    assert_error(
        c.post(
            "/v1/chat/completions",
            json={"model": "ragqa:ghost", "messages": [{"role": "user", "content": "q"}]},
            headers=h,
        ),
        404,
    )
    assert_error(
        c.post(
            "/v1/chat/completions", json={"model": "docs", "messages": [{"role": "system", "content": "q"}]}, headers=h
        ),
        422,
        "no_question",
    )
    assert_error(c.post("/v1/chat/completions", json={"model": "docs", "messages": []}, headers=h), 422)


def test_delete_collection_removes_uploads_and_jobs(env):
    c, h = env["client"], env["admin"]
    assert c.post("/v1/collections", json={"name": "gone"}, headers=h).status_code == 201
    r = c.post(
        "/v1/collections/gone/documents", files=[("files", ("g.txt", b"ephemeral text here", "text/plain"))], headers=h
    )
    wait_job(c, r.json()["job_id"], h)
    assert (env["home"] / "uploads" / "gone" / "g.txt").exists()
    assert c.delete("/v1/collections/gone", headers=h).status_code == 204
    assert not (env["home"] / "uploads" / "gone").exists()
    assert_error(c.post("/v1/ask", json={"question": "q", "collection": "gone"}, headers=h), 404)
