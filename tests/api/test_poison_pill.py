"""Poison pill: a file that takes the ingestion worker down every time fails after N attempts, the job goes on."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from api.jobs import IngestWorker, JobStore, UploadStorage, WriterGate
from ingest import pipeline
from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig, LoaderConfig
from ingest.workspace import Workspace

pytestmark = pytest.mark.integration  # the job worker end to end

FILES = ["a.txt", "poison.txt", "b.txt"]


def _crash_on_poison(monkeypatch, crashes: list[str]) -> None:
    """Reading poison.txt takes the worker down mid-file, as a segfault or kill -9 of the server would."""
    real = pipeline.ingest_paths

    def ingest_paths(paths, *args, **kwargs):
        if any(Path(p).name == "poison.txt" for p in paths):
            crashes.append(str(paths[0]))
            raise SystemExit("simulated crash while reading poison.txt")  # ends the worker thread, like a kill
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(pipeline, "ingest_paths", ingest_paths)


def _run_until_stopped(home: Path, ws: Workspace, timeout: float = 120.0) -> JobStore:
    """One server 'life': a fresh JobStore and worker on the same files, until the job ends or the worker dies."""
    jobs = JobStore(home / "server.sqlite")
    worker = IngestWorker(ws, jobs, UploadStorage(home / "uploads"), WriterGate())
    worker.start()
    deadline = time.monotonic() + timeout
    while worker.alive and jobs.status("j") not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop(timeout=30)
    return jobs


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated crashes
def test_a_file_that_keeps_crashing_the_worker_fails_after_max_attempts(tmp_path, tiny_st_model, monkeypatch):
    home = tmp_path / "home"
    cfg = IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model)),
        chunking=ChunkingConfig(chunk_tokens=40, overlap_tokens=5),
        loader=LoaderConfig(max_attempts=3),
    )
    ws = Workspace(home, cfg)
    ws.open_or_create("kb").close()
    storage = UploadStorage(home / "uploads")
    staged = storage.staging_dir("kb", "j")
    staged.mkdir(parents=True)
    for name in FILES:
        (staged / name).write_text(f"{name} has a paragraph about its own subject.")
    jobs = JobStore(home / "server.sqlite")
    jobs.create("j", "kb", [{"filename": n, "original": n, "size": 40} for n in FILES], None)
    jobs.close()
    crashes: list[str] = []
    _crash_on_poison(monkeypatch, crashes)

    for life in range(1, 4):  # three crashes: each restart resumes at poison.txt and crashes again
        jobs = _run_until_stopped(home, ws)
        job = jobs.get("j")
        assert job is not None and job["status"] == "running", job  # left running by the crash
        assert [f["status"] for f in job["files"]] == ["added", "pending", "pending"]
        assert len(crashes) == life
        jobs.close()

    jobs = _run_until_stopped(home, ws)  # the fourth start gives up on poison.txt and finishes the job
    job = jobs.get("j")
    assert job is not None
    assert job["status"] == "done", job
    assert [f["status"] for f in job["files"]] == ["added", "failed", "added"]
    error = job["files"][1]["error"]
    assert "stopped 3 times while reading this file" in error and "ingest.loader.max_attempts" in error
    assert len(crashes) == 3  # not tried a fourth time
    assert not (storage.stable_path("kb", "poison.txt")).exists()  # nothing of it kept
    with ws.open("kb", readonly=True) as coll:
        assert sorted(Path(p).name for p in coll.store.file_paths()) == ["a.txt", "b.txt"]
    jobs.close()


def test_job_store_adds_the_attempts_column_to_an_old_database(tmp_path):
    db = tmp_path / "server.sqlite"
    old = sqlite3.connect(db)
    old.executescript(
        JobStore.schema.replace(
            "        attempts    INTEGER NOT NULL DEFAULT 0,  -- times reading this file started (poison-pill count)\n",
            "",
        )
    )
    old.close()
    jobs = JobStore(db)
    jobs.create("j", "kb", [{"filename": "a.txt", "original": "a.txt", "size": 1}], None)
    assert [jobs.begin_file("j", 0) for _ in range(3)] == [1, 2, 3]
    jobs.close()
