"""No server path leaves the API, and upload names are kept as the client wrote them (Unicode included)
without two names silently landing on the same file."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import open_key_store
from api.jobs import sanitize_filename
from api.public_paths import PublicPaths, model_name
from tests.api.test_app import assert_error, make_settings, sse_events, wait_job
from tests.ingest.test_loaders import make_pdf

pytestmark = pytest.mark.integration  # the job worker end to end

Q3_SPACE = "Quarterly report with a space: revenue rose to 7 million crowns in the third quarter.\n"
Q3_UNDERSCORE = "Quarterly report with an underscore: costs fell to 2 million crowns in the third quarter.\n"
RU = "Отчёт о работе: в третьем квартале выручка выросла на семь процентов.\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_st_model, tiny_llm):
    home = tmp_path_factory.mktemp("privacy-home")
    settings = make_settings(home, tiny_st_model, tiny_llm, max_files=5)
    store = open_key_store(home)
    _, admin = store.create("admin")
    store.close()
    app = create_app(settings)
    with TestClient(app) as client:
        yield {"client": client, "home": home, "app": app, "h": {"Authorization": f"Bearer {admin}"}}


def _upload(env, collection: str, files: list[tuple[str, bytes]]) -> dict:
    c, h = env["client"], env["h"]
    r = c.post(
        f"/v1/collections/{collection}/documents",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        headers=h,
    )
    assert r.status_code == 202, r.text
    return wait_job(c, r.json()["job_id"], h)


def _no_server_path(env, text: str) -> None:
    home = env["home"]
    for root in {str(home), str(home.resolve())}:
        assert root not in text, text[:2000]
    assert "/uploads/" not in text and "/collections/" not in text.replace("/v1/collections/", ""), text[:2000]


def test_no_server_path_in_documents_citations_jobs_or_errors(env, tmp_path):
    c, h = env["client"], env["h"]
    assert c.post("/v1/collections", json={"name": "paths"}, headers=h).status_code == 201
    pdf = make_pdf(tmp_path / "x.pdf", ["The Danube flows through four capital cities."]).read_bytes()
    job = _upload(
        env,
        "paths",
        [
            ("q3 report.txt", Q3_SPACE.encode()),
            ("отчёт.txt", RU.encode()),
            ("報告.pdf", pdf),
            ("broken.pdf", b"%PDF-1.4 not really a pdf"),
        ],
    )
    assert job["status"] == "done", job
    bodies: list[str] = []

    listing = c.get("/v1/collections/paths/documents", headers=h)
    bodies.append(listing.text)
    sources = {d["source"] for d in listing.json()["data"]}
    assert sources == {"q3 report.txt", "отчёт.txt", "報告.pdf"}  # the upload names
    assert all(d["filename"] == d["source"] for d in listing.json()["data"])

    ask = {"question": "How much did revenue rise in the third quarter?", "collection": "paths", "k": 3}
    r = c.post("/v1/ask", json=ask, headers=h)
    assert r.status_code == 200, r.text
    bodies.append(r.text)
    cited = r.json()["citations"]
    assert cited and {x["source"] for x in cited} <= sources
    assert all(x["metadata"].get("source", x["source"]) == x["source"] for x in cited)
    logged = env["app"].state.service.answers.get(r.json()["answer_id"])
    assert logged["citations"][0]["source"].startswith(str((env["home"] / "uploads").resolve()))  # kept inside

    with c.stream("POST", "/v1/ask", json={**ask, "stream": True}, headers=h) as s:
        text = "".join(s.iter_text())
    bodies.append(text)
    assert sse_events(text)[-1][0] == "answer"

    chat = {"model": "ragqa:paths", "messages": [{"role": "user", "content": ask["question"]}]}
    r = c.post("/v1/chat/completions", json=chat, headers=h)
    assert r.status_code == 200, r.text
    bodies.append(r.text)
    assert {x["source"] for x in r.json()["sources"]} <= sources

    bodies.append(c.get(f"/v1/jobs/{job['job_id']}", headers=h).text)
    bodies.append(c.get("/v1/jobs", headers=h).text)
    bodies.append(c.get("/v1/collections/paths", headers=h).text)
    bodies.append(c.get("/v1/collections", headers=h).text)
    failed = [f for f in job["files"] if f["filename"] == "broken.pdf"][0]
    assert failed["status"] == "failed" and failed["error"]
    bodies.append(c.get("/v1/collections/paths/documents", params={"source": "nope.txt"}, headers=h).text)
    bodies.append(c.delete("/v1/collections/paths/documents", params={"source": "nope.txt"}, headers=h).text)
    for body in bodies:
        _no_server_path(env, body)
        if not body.startswith("event:"):
            assert isinstance(json.loads(body), dict)


def test_error_messages_and_job_errors_lose_server_folders(env):
    """A message that names a workspace path (as core errors and job errors may) is shown with names only."""
    service = env["app"].state.service
    uploads = (env["home"] / "uploads").resolve()
    job = {
        "job_id": "j",
        "collection": "c",
        "status": "failed",
        "created_at": 0.0,
        "error": f"OSError: [Errno 28] No space left on device: '{uploads}/c/.jobs/j/q3 report.txt'",
        "progress": {
            "total": 0,
            "processed": 0,
            "fraction": 1.0,
            "added": 0,
            "replaced": 0,
            "unchanged": 0,
            "failed": 0,
        },
        "files": [],
        "errors": [{"filename": "a.txt", "error": f"cannot read {env['home']}/collections/c/store.sqlite"}],
    }
    public = service._public_job(job).model_dump_json()
    _no_server_path(env, public)
    assert "q3 report.txt" in public and "store.sqlite" in public
    from ingest.errors import CollectionBusyError

    err = service.core_error(CollectionBusyError(f"{env['home'].resolve()}/collections/c/write.lock is held"))
    assert err.status == 409 and str(env["home"]) not in err.message and "write.lock is held" in err.message


def test_public_paths_maps_sources_to_names(tmp_path):
    paths = PublicPaths(tmp_path / "uploads", [tmp_path])
    up = (tmp_path / "uploads").resolve()
    assert paths.source(f"{up}/docs/q3 report.txt") == "q3 report.txt"
    assert paths.source("/srv/data/manual.pdf") == "manual.pdf"  # ingested on the server by path
    assert paths.source("C:\\data\\manual.pdf") == "manual.pdf"
    assert paths.source("https://example.org/a/b.html") == "https://example.org/a/b.html"
    assert paths.text(f"see {tmp_path}") == "see <workspace>"
    assert paths.text(f"GET /v1/collections/{{name}}/documents and {tmp_path}2/x") == (
        f"GET /v1/collections/{{name}}/documents and {tmp_path}2/x"  # another folder, and API routes, stay
    )


@pytest.mark.parametrize(
    "model, shown",
    [
        ("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("/srv/ragqa/models/generators/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
        ("/srv/models/st/", "st"),
        ("~/models/my-llm", "my-llm"),
        ("./models/my-llm", "my-llm"),
        ("models/org/name", "name"),
        ("C:\\models\\llm", "llm"),
        ("/srv/models/q4.gguf", "q4.gguf"),
    ],
)
def test_model_name_hides_folders_and_keeps_names(model, shown):
    assert model_name(model) == shown


@pytest.mark.parametrize(
    "raw, safe",
    [
        ("отчёт.txt", "отчёт.txt"),
        ("報告.pdf", "報告.pdf"),
        ("q3 report.txt", "q3 report.txt"),
        ("q3_report.txt", "q3_report.txt"),
        ("Cafe\u0301.md", "Café.md"),  # NFC
        ("a\u202eb.txt", "ab.txt"),  # bidi override
        ("a\x00b\x1f.txt", "ab.txt"),  # control characters
        ("x/y\\z.txt", "z.txt"),  # separators
        ('what?<is>:"this"|*.txt', "what__is___this___.txt"),
        ("報" * 200 + ".pdf", "報" * 65 + ".pdf"),  # at most 200 UTF-8 bytes
        (" -rf .txt", "rf.txt"),
    ],
)
def test_sanitize_filename_keeps_unicode_and_stays_safe(raw, safe):
    out = sanitize_filename(raw)
    assert out == safe
    assert "/" not in out and "\\" not in out and not out.startswith(".")
    assert len(out) <= 120 and len(out.encode("utf-8")) <= 200


def test_unicode_names_are_accepted_listed_and_deleted_by_name(env):
    c, h = env["client"], env["h"]
    assert c.post("/v1/collections", json={"name": "intl"}, headers=h).status_code == 201
    job = _upload(
        env, "intl", [("отчёт.txt", RU.encode()), ("報告.md", "# 報告\n\n第三四半期の売上は増えた。\n".encode())]
    )
    assert job["status"] == "done" and [f["filename"] for f in job["files"]] == ["отчёт.txt", "報告.md"], job
    listing = c.get("/v1/collections/intl/documents", params={"source": "отчёт.txt"}, headers=h).json()
    assert listing["count"] == 1 and listing["data"][0]["source"] == "отчёт.txt"
    r = c.delete("/v1/collections/intl/documents", params={"source": "отчёт.txt"}, headers=h)
    assert r.json() == {"deleted": 1, "ok": True}, r.text
    assert not (env["home"] / "uploads" / "intl" / "отчёт.txt").exists()
    assert (env["home"] / "uploads" / "intl" / "報告.md").exists()


def test_similar_names_stay_distinct_and_a_real_collision_is_a_409(env):
    c, h = env["client"], env["h"]
    assert c.post("/v1/collections", json={"name": "q3"}, headers=h).status_code == 201
    _upload(env, "q3", [("q3_report.txt", Q3_UNDERSCORE.encode())])
    _upload(env, "q3", [("q3 report.txt", Q3_SPACE.encode())])
    listing = c.get("/v1/collections/q3/documents", headers=h).json()
    assert sorted(d["source"] for d in listing["data"]) == ["q3 report.txt", "q3_report.txt"]
    folder = env["home"] / "uploads" / "q3"
    assert (folder / "q3_report.txt").read_text() == Q3_UNDERSCORE and (
        folder / "q3 report.txt"
    ).read_text() == Q3_SPACE

    # ".q3 report.txt" would be stored as "q3 report.txt": refused, nothing replaced
    r = c.post(
        "/v1/collections/q3/documents", files=[("files", (".q3 report.txt", b"other text", "text/plain"))], headers=h
    )
    err = assert_error(r, 409, "filename_conflict")
    assert "q3 report.txt" in err["message"] and "rename" in err["message"]
    assert (folder / "q3 report.txt").read_text() == Q3_SPACE
    # the same name again replaces, as it always did
    job = _upload(env, "q3", [("q3 report.txt", b"Quarterly report, second version: revenue was flat.")])
    assert job["files"][0]["status"] == "replaced", job
    # once the file is deleted, its stored name is free for another client name
    c.delete("/v1/collections/q3/documents", params={"source": "q3 report.txt"}, headers=h)
    job = _upload(env, "q3", [(".q3 report.txt", b"A hidden-looking name, stored without its dot.")])
    assert job["status"] == "done" and job["files"][0]["filename"] == "q3 report.txt", job
