"""Issue 18, item 5: a full disk. Uploads get 507 below the free-space floor (before their body is read), the
ingestion worker survives ENOSPC and SQLite's "disk is full" and resumes when space returns, and a failing
``last_used_at`` write never turns a read into a 500."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import time
from collections import namedtuple
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import KeyStore, open_key_store
from api.db import server_db_path
from api.errors import install_handlers, is_disk_full
from api.jobs import IngestWorker, JobStore, UploadStorage, WriterGate
from ingest import pipeline
from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
from ingest.workspace import Workspace
from tests.api.test_app import DOC_B, assert_error, make_settings, wait_job

Usage = namedtuple("Usage", "total used free")
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def low_disk(monkeypatch, free_mb: float) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12, int(free_mb * (1 << 20))))


def test_is_disk_full():
    assert is_disk_full(OSError(errno.ENOSPC, "full")) and is_disk_full(OSError(errno.EDQUOT, "quota"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "denied")) and not is_disk_full(ValueError("x"))


def test_disk_full_anywhere_answers_507():
    app = FastAPI()
    install_handlers(app)

    @app.get("/write")
    def write() -> None:
        raise ENOSPC

    r = TestClient(app, raise_server_exceptions=False).get("/write")
    assert_error(r, 507, "insufficient_storage")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_st_model, tiny_llm):
    home = tmp_path_factory.mktemp("disk-home")
    settings = make_settings(home, tiny_st_model, tiny_llm, min_free_mb=50)
    store = open_key_store(home)
    h = {"Authorization": f"Bearer {store.create('admin')[1]}"}
    store.close()
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/collections", json={"name": "docs"}, headers=h).status_code == 201
        service = client.app.state.service
        service.worker.disk_retry_s = 0.1  # notice quickly that space is back
        yield {"client": client, "h": h, "home": home, "service": service}


ONE_FILE = [("files", ("b.md", DOC_B.encode(), "text/markdown"))]


@pytest.mark.integration  # the job worker end to end
def test_uploads_get_507_below_the_floor_and_202_again_when_space_returns(env, monkeypatch):
    c, h = env["client"], env["h"]
    with monkeypatch.context() as m:
        low_disk(m, free_mb=10)  # under the floor of 50 MB
        err = assert_error(c.post("/v1/collections/docs/documents", files=ONE_FILE, headers=h), 507)
        assert err["code"] == "insufficient_storage" and "disk is full" in err["message"]
        assert c.get("/v1/collections/docs", headers=h).status_code == 200  # reads go on
    r = c.post("/v1/collections/docs/documents", files=ONE_FILE, headers=h)
    assert r.status_code == 202, r.text
    assert wait_job(c, r.json()["job_id"], h)["status"] == "done"


def test_enospc_while_staging_an_upload_answers_507_and_leaves_nothing(env, monkeypatch):
    import api.service

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(api.service, "open", no_space, raising=False)
    r = env["client"].post("/v1/collections/docs/documents", files=ONE_FILE, headers=env["h"])
    assert_error(r, 507, "insufficient_storage")
    staging = env["home"] / "uploads" / "docs" / ".jobs"
    assert not staging.exists() or not any(staging.iterdir())


def test_a_failing_last_used_write_never_fails_a_request(env, monkeypatch, tmp_path):
    store = KeyStore(server_db_path(tmp_path))
    key, secret = store.create("k")

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_tx", full)
    assert store.verify(secret) == key  # the key still works; its use is not recorded
    store.close()
    keys = env["service"].keys  # through the API: a fresh key's first use writes last_used_at
    _, fresh = keys.create("fresh")
    monkeypatch.setattr(keys, "_tx", full)
    r = env["client"].get("/v1/collections", headers={"Authorization": f"Bearer {fresh}"})
    assert r.status_code == 200, r.text


# -- the worker ------------------------------------------------------------------------------------------
FILES = ["a.txt", "b.txt"]


def _workspace(home: Path, tiny_st_model: Path) -> Workspace:
    cfg = IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model)), chunking=ChunkingConfig(chunk_tokens=40, overlap_tokens=5)
    )
    ws = Workspace(home, cfg)
    ws.open_or_create("kb").close()
    return ws


def _stage_job(home: Path, job_id: str = "j") -> None:
    staged = UploadStorage(home / "uploads").staging_dir("kb", job_id)
    staged.mkdir(parents=True)
    for name in FILES:
        (staged / name).write_text(f"{name} has a paragraph about its own subject, {job_id}.")
    jobs = JobStore(server_db_path(home))
    jobs.create(job_id, "kb", [{"filename": n, "original": n, "size": 40} for n in FILES], None)
    jobs.close()


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.integration  # the job worker end to end
def test_the_worker_survives_a_full_disk_and_resumes(tmp_path, tiny_st_model, monkeypatch):
    home = tmp_path / "home"
    ws = _workspace(home, tiny_st_model)
    _stage_job(home)
    real = pipeline.ingest_paths
    failures = {"ingest": 2, "finish": 1}

    def ingest_paths(paths, *args, **kwargs):
        if Path(paths[0]).name == "b.txt" and failures["ingest"]:
            failures["ingest"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(pipeline, "ingest_paths", ingest_paths)
    jobs = JobStore(server_db_path(home))
    real_finish = jobs.finish

    def finish(*args, **kwargs):
        if failures["finish"]:
            failures["finish"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(jobs, "finish", finish)
    worker = IngestWorker(ws, jobs, UploadStorage(home / "uploads"), WriterGate(), disk_retry_s=0.05)
    worker.start()
    try:
        _wait(lambda: jobs.status("j") == "done")
        assert worker.alive and failures == {"ingest": 0, "finish": 0}
        job = jobs.get("j")
        assert job is not None and [f["status"] for f in job["files"]] == ["added", "added"]
        attempts = [r[0] for r in jobs._db.execute("SELECT attempts FROM job_files ORDER BY ordinal")]
        assert attempts == [1, 1]  # the disk-full tries did not count towards the poison pill
        # the same worker goes on with the next job
        _stage_job(home, "k")
        worker.submit()
        _wait(lambda: jobs.status("k") == "done")
    finally:
        worker.stop()
        jobs.close()


@pytest.mark.integration  # the job worker end to end
def test_the_worker_pauses_below_the_floor(tmp_path, tiny_st_model, monkeypatch):
    home = tmp_path / "home"
    ws = _workspace(home, tiny_st_model)
    _stage_job(home)
    jobs = JobStore(server_db_path(home))
    worker = IngestWorker(
        ws, jobs, UploadStorage(home / "uploads"), WriterGate(), min_free_bytes=50 << 20, disk_retry_s=0.05
    )
    with monkeypatch.context() as m:
        low_disk(m, free_mb=10)
        worker.start()
        try:
            _wait(lambda: worker.disk_full)
            time.sleep(0.3)
            assert jobs.status("j") == "queued" and worker.alive
        except BaseException:
            worker.stop()
            raise
    try:
        _wait(lambda: jobs.status("j") == "done")  # space is back
    finally:
        worker.stop()
        jobs.close()
