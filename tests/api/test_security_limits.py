"""Issue 18, item 7 and the worker's loader process: integer bounds (422, never 500), security headers on every
response, orphaned staging folders removed at start-up, one loader process for the worker's life."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from api.app import STATIC_DIR, create_app
from api.auth import open_key_store
from api.db import server_db_path
from api.jobs import IngestWorker, JobStore, UploadStorage, WriterGate
from tests.api.test_app import DOC_A, DOC_B, assert_error, make_settings, wait_job
from tests.api.test_security_disk import FILES, _stage_job, _wait, _workspace


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_st_model, tiny_llm):
    home = tmp_path_factory.mktemp("limits7-home")
    settings = make_settings(home, tiny_st_model, tiny_llm)
    orphan = UploadStorage(home / "uploads").staging_dir("docs", "deadbeef")  # left by a crash mid-upload
    orphan.mkdir(parents=True)
    (orphan / "half.txt").write_text("half an upload")
    store = open_key_store(home)
    h = {"Authorization": f"Bearer {store.create('admin')[1]}"}
    store.close()
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/collections", json={"name": "docs"}, headers=h).status_code == 201
        yield {"client": client, "h": h, "home": home, "orphan": orphan}


def test_orphaned_staging_folders_are_removed_at_start(env):
    assert not env["orphan"].exists()


def test_staging_of_unfinished_jobs_is_kept(tmp_path):
    storage = UploadStorage(tmp_path / "uploads")
    jobs = JobStore(server_db_path(tmp_path))
    for job_id in ("live", "done", "orphan"):
        storage.staging_dir("c", job_id).mkdir(parents=True)
    jobs.create("live", "c", [{"filename": "a.txt", "original": "a.txt", "size": 1}], None)
    jobs.create("done", "c", [{"filename": "a.txt", "original": "a.txt", "size": 1}], None)
    jobs.finish("done", "failed", "test")
    assert sorted(storage.remove_orphans(jobs.active_ids())) == ["done", "orphan"]
    assert [job_id for job_id, _ in storage.staging_dirs()] == ["live"]
    jobs.close()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/collections/docs/documents?offset=9223372036854775808",  # 2^63: overflowed SQLite, a 500 before
        "/v1/collections/docs/documents?offset=18446744073709551616",
        "/v1/collections/docs/documents?limit=100000000000000000000",
        "/v1/conversations?offset=9223372036854775808",
        "/v1/conversations?limit=99999999999999999999",
        "/v1/jobs?limit=9223372036854775808",
    ],
)
def test_huge_integers_in_queries_get_422(env, path):
    assert_error(env["client"].get(path, headers=env["h"]), 422, "validation_error")


def test_huge_integers_in_bodies_get_422(env):
    for k in (2**63, 2**70, 10**30):
        body = {"question": "Which index is exact?", "collection": "docs", "k": k}
        assert_error(env["client"].post("/v1/ask", json=body, headers=env["h"]), 422, "validation_error")


def test_the_openapi_schema_states_the_bounds(env):
    spec = env["client"].get("/openapi.json").json()
    params = {p["name"]: p["schema"] for p in spec["paths"]["/v1/collections/{name}/documents"]["get"]["parameters"]}
    assert params["offset"]["maximum"] == 2**31 - 1 and params["limit"]["maximum"] == 10000
    ask = spec["components"]["schemas"]["AskRequest"]["properties"]["k"]
    assert any(option.get("maximum") == 1000 for option in ask.get("anyOf", [ask]))


def _check_headers(r, csp_needed: str) -> None:
    assert r.headers["x-content-type-options"] == "nosniff", r.url
    assert r.headers["x-frame-options"] == "DENY", r.url
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and csp_needed in csp, (r.url, csp)


def test_security_headers_on_every_response(env):
    c, h = env["client"], env["h"]
    for r in (
        c.get("/"),
        c.get("/static/app.js"),
        c.get("/static/nope.js"),
        c.get("/healthz"),
        c.get("/metrics"),
        c.get("/openapi.json"),
        c.get("/v1/collections"),  # 401 from the auth gate
        c.get("/v1/collections", headers=h),
        c.get("/v1/collections/nope", headers=h),
        c.post("/v1/ask", json={"question": "?"}, headers=h),  # 422
    ):
        _check_headers(r, "script-src 'self'")
    _check_headers(c.get("/docs"), "frame-ancestors")  # Swagger UI loads from a CDN: only frame-ancestors there


def test_the_web_ui_fits_its_csp():
    """The CSP allows same-origin scripts and styles only: the page has no inline script, style or handler."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and not re.search(r"\sstyle=", html), "inline style"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    js = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    assert not re.search(r"\beval\(|new Function\(|setAttribute\(\s*['\"]style|\.innerHTML\s*=\s*[^;]*<script", js)
    assert not re.search(r"https?://", html + js)  # nothing from another origin


@pytest.mark.integration  # the job worker end to end
def test_the_worker_reads_every_file_in_one_loader_process(tmp_path, tiny_st_model):
    home = tmp_path / "home"
    ws = _workspace(home, tiny_st_model)
    assert ws.config.loader.isolate
    _stage_job(home, "j1")
    _stage_job(home, "j2")
    jobs = JobStore(server_db_path(home))
    worker = IngestWorker(ws, jobs, UploadStorage(home / "uploads"), WriterGate())
    worker.start()
    try:
        _wait(lambda: jobs.status("j1") == "done" and jobs.status("j2") == "done", timeout=120)
        files = [f["status"] for j in ("j1", "j2") for f in jobs.get(j)["files"]]  # type: ignore[index]
        assert files == ["added"] * len(FILES) + ["replaced"] * len(FILES)
        pool = worker._loader_pool
        assert pool is not None and pool.started == 1  # 4 files, one child process
    finally:
        worker.stop()
        jobs.close()
    deadline = time.monotonic() + 10
    while worker.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker._loader_pool is None  # closed with the worker


@pytest.mark.integration  # the job worker end to end
def test_uploads_still_work_through_the_api(env):
    c, h = env["client"], env["h"]
    files = [("files", ("a.md", DOC_A.encode(), "text/markdown")), ("files", ("b.md", DOC_B.encode(), "text/md"))]
    r = c.post("/v1/collections/docs/documents", files=files, headers=h)
    assert r.status_code == 202, r.text
    assert wait_job(c, r.json()["job_id"], h)["status"] == "done"
    assert c.get("/v1/collections/docs/documents?offset=2147483647", headers=h).json()["data"] == []
