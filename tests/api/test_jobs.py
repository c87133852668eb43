"""Upload jobs: file-name sanitising, and jobs surviving a restart (resumed or failed, never lost)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.db import server_db_path
from api.jobs import JobStore, UploadStorage, sanitize_filename
from tests.api.test_app import make_settings


@pytest.mark.parametrize(
    "raw, safe",
    [
        ("report.PDF", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\win.ini", "win.ini"),
        ("C:\\docs\\a b.txt", "a b.txt"),
        (".hidden.md", "hidden.md"),
        ("..", "upload"),
        ("", "upload"),
        ("café résumé.txt", "café résumé.txt"),
        ("x" * 300 + ".txt", "x" * 116 + ".txt"),
        ("/abs/path/ok.json", "ok.json"),
    ],
)
def test_sanitize_filename(raw, safe):
    assert sanitize_filename(raw) == safe


def test_stable_path_stays_inside(tmp_path):
    storage = UploadStorage(tmp_path / "uploads")
    assert storage.stable_path("c", "a.txt") == (tmp_path / "uploads" / "c" / "a.txt").resolve()
    with pytest.raises(ValueError):
        storage.stable_path("c", "../x.txt")


def _wait_idle(service, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = service.jobs.counts()
        if counts["queued"] == 0 and counts["running"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(service.jobs.counts())


@pytest.mark.integration  # the job worker end to end
def test_jobs_survive_a_restart(tmp_path, tiny_st_model, tiny_llm):
    home = tmp_path / "home"
    settings = make_settings(home, tiny_st_model, tiny_llm, auth=False)
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201

    # Jobs as a crash left them: one mid-run (first file done, second staged), one queued whose
    # staged upload is gone, one for a collection deleted while the server was down.
    jobs = JobStore(server_db_path(home))
    storage = UploadStorage(home / "uploads")
    files = [
        {"filename": "one.txt", "original": "one.txt", "size": 3},
        {"filename": "two.txt", "original": "two.txt", "size": 3},
    ]
    jobs.create("j-running", "kb", files, None)
    jobs.claim_next()  # -> running
    jobs.set_file("j-running", 0, "added", None, 1, 1)
    staged = storage.staging_dir("kb", "j-running")
    staged.mkdir(parents=True)
    (staged / "two.txt").write_text("The second file was staged before the crash.")
    jobs.create("j-lost", "kb", [{"filename": "lost.txt", "original": "lost.txt", "size": 3}], None)
    jobs.create("j-ghost", "ghost", [{"filename": "g.txt", "original": "g.txt", "size": 3}], None)
    jobs.close()

    app = create_app(settings)
    with TestClient(app) as c:
        service = app.state.service
        _wait_idle(service)
        running = c.get("/v1/jobs/j-running").json()
        assert running["status"] == "done", running
        assert [f["status"] for f in running["files"]] == ["added", "added"]
        lost = c.get("/v1/jobs/j-lost").json()
        assert lost["status"] == "failed" and "lost" in lost["files"][0]["error"]
        ghost = c.get("/v1/jobs/j-ghost").json()
        assert ghost["status"] == "failed" and "ghost" in ghost["error"] and ghost["files"][0]["status"] == "failed"
        docs = c.get("/v1/collections/kb/documents").json()
        assert [d["filename"] for d in docs["data"]] == ["two.txt"]
        assert not staged.exists()  # staging cleaned once the job finished
        assert c.get("/v1/jobs").json()["count"] == 3  # none vanished
        # without auth every request is served (an explicit choice)
        assert c.get("/healthz").json()["auth"] is False


@pytest.mark.integration  # the job worker end to end
def test_asks_are_answered_while_a_job_runs(tmp_path, tiny_st_model, tiny_llm):
    """Readers use read-only handles: questions are answered during ingestion, from committed files."""
    home = tmp_path / "home"
    settings = make_settings(home, tiny_st_model, tiny_llm, auth=False, max_files=32)
    app = create_app(settings)
    with TestClient(app) as c:
        c.post("/v1/collections", json={"name": "kb"})
        r = c.post(
            "/v1/collections/kb/documents",
            files=[("files", ("first.txt", b"Lyon is a city on the Rhone.", "text/plain"))],
        )
        job = r.json()["job_id"]
        while c.get(f"/v1/jobs/{job}").json()["status"] not in ("done", "failed"):
            time.sleep(0.05)
        files = [
            ("files", (f"doc{i}.txt", f"Document number {i} talks about topic {i}.".encode(), "text/plain"))
            for i in range(20)
        ]
        job = c.post("/v1/collections/kb/documents", files=files).json()["job_id"]
        seen = []
        while True:
            r = c.post("/v1/ask", json={"question": "Which city is on the Rhone?", "collection": "kb", "k": 1})
            assert r.status_code == 200, r.text
            seen.append(r.json()["collection_generation"])
            status = c.get(f"/v1/jobs/{job}").json()["status"]
            if status in ("done", "failed"):
                break
        assert status == "done"
        assert seen == sorted(seen)  # generations only move forward
        assert c.get("/v1/collections/kb").json()["documents"] == 21
