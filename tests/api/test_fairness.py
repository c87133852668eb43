"""One client cannot hold the server for the others: ingestion is shared round-robin across keys and
collections, /healthz answers while every worker thread is busy, made-up methods do not grow /metrics,
and an abandoned answer stream stops generating."""

from __future__ import annotations

import random
import socket
import string
import threading
import time

import anyio.to_thread
import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import open_key_store
from api.jobs import FairQueue, JobStore, auto_workers
from rag.config import QAConfig
from tests.api.test_app import make_settings, sse_events, wait_job

TEXT = "The {n}th paragraph says that river number {n} flows north into lake {n}.\n"


def _files(prefix: str, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{prefix}{i}.txt", TEXT.format(n=i).encode(), "text/plain")) for i in range(n)]


def _job(jobs: JobStore, job_id: str, collection: str, key_id: str | None, n_files: int) -> None:
    files = [{"filename": f"{job_id}-{i}.txt", "original": f"{job_id}-{i}.txt", "size": 1} for i in range(n_files)]
    jobs.create(job_id, collection, files, key_id)
    time.sleep(0.002)  # distinct created_at


# -- the fair queue --------------------------------------------------------------------------------
def test_fair_queue_takes_turns_across_keys_then_collections(tmp_path):
    jobs = JobStore(tmp_path / "server.sqlite")
    try:
        _job(jobs, "a1", "big", "key-a", 50)  # tenant A's big upload, first in line
        _job(jobs, "a2", "big", "key-a", 50)
        _job(jobs, "b1", "small", "key-b", 1)
        _job(jobs, "c1", "c-one", "key-c", 1)
        _job(jobs, "c2", "c-two", "key-c", 1)
        queue = FairQueue(jobs)
        order = []
        for _ in range(6):  # one worker: take a turn (one file), give it back
            job = queue.take()
            assert job is not None and job["status"] == "running"
            order.append(job["job_id"])
            queue.release(job["job_id"])
        # FIFO would have been a1 x 100 files before anyone else; keys take turns, and key-c's collections too
        assert order[:3] == ["a1", "b1", "c1"]
        assert order[3] == "a1" and order[5] == "c2"  # a1 again (b, c served since), then b1, then key-c's other
        assert order[4] == "b1"
    finally:
        jobs.close()


def test_fair_queue_gives_one_collection_to_one_worker_at_a_time(tmp_path):
    jobs = JobStore(tmp_path / "server.sqlite")
    try:
        _job(jobs, "x1", "same", "key-a", 2)
        _job(jobs, "x2", "same", "key-b", 2)
        _job(jobs, "y1", "other", "key-a", 2)
        queue = FairQueue(jobs)
        first, second = queue.take(), queue.take()  # two workers
        assert first is not None and second is not None
        assert {first["collection"], second["collection"]} == {"same", "other"}  # in parallel: two collections
        assert queue.take() is None  # x2 waits: its collection has a writer
        queue.release(first["job_id"] if first["collection"] == "same" else second["job_id"])
        third = queue.take()
        assert third is not None and third["collection"] == "same" and queue.busy()
    finally:
        jobs.close()


def test_auto_workers():
    assert auto_workers(1) == 1 and auto_workers(2) == 1 and auto_workers(4) == 2 and auto_workers(64) == 2


# -- the worker, end to end ----------------------------------------------------------------------
@pytest.mark.integration  # the job worker end to end
@pytest.mark.parametrize("workers", [1, 2])
def test_a_big_upload_does_not_hold_another_tenant(tmp_path, tiny_st_model, tiny_llm, workers):
    home = tmp_path / "home"
    settings = make_settings(home, tiny_st_model, tiny_llm, max_files=8, ingest_workers=workers)
    store = open_key_store(home)
    _, key_a = store.create("tenant-a", ["big"])
    _, key_b = store.create("tenant-b", ["small"])
    store.close()
    a, b = {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
    with TestClient(create_app(settings, start_worker=False)) as c:
        assert c.post("/v1/collections", json={"name": "big"}, headers=a).status_code == 201
        assert c.post("/v1/collections", json={"name": "small"}, headers=b).status_code == 201
        big = [c.post("/v1/collections/big/documents", files=_files(f"a{j}-", 8), headers=a).json() for j in range(2)]
        small = c.post("/v1/collections/small/documents", files=_files("b-", 1), headers=b).json()
        service = c.app.state.service
        service.worker.start()  # every job queued before the worker runs: A's 16 files are first in line
        assert service.worker.alive and len(service.worker._threads) == workers
        done_small = wait_job(c, small["job_id"], b)
        done_big = [wait_job(c, j["job_id"], a) for j in big]
        assert done_small["status"] == "done" and all(j["status"] == "done" for j in done_big)
        # FIFO would finish B's one file after all 16 of A's; taking turns, B is done before A's first job
        assert done_small["finished_at"] < done_big[0]["finished_at"]
        assert c.get("/v1/collections/big", headers=a).json()["documents"] == 16
        assert c.get("/v1/collections/small", headers=b).json()["documents"] == 1
        assert service.jobs.counts() == {"queued": 0, "running": 0, "done": 3, "failed": 0}


# -- /healthz and /metrics while everything else is busy ------------------------------------------
@pytest.fixture(scope="module")
def app_env(tmp_path_factory, tiny_st_model, tiny_llm):
    home = tmp_path_factory.mktemp("fair-home")
    app = create_app(make_settings(home, tiny_st_model, tiny_llm))
    with TestClient(app) as client:
        yield client


def test_healthz_answers_while_worker_threads_and_the_job_store_are_busy(app_env):
    c = app_env
    service = c.app.state.service
    release = threading.Event()
    limiter = c.portal.call(anyio.to_thread.current_default_thread_limiter)
    for _ in range(int(limiter.total_tokens) + 8):  # every worker thread busy, more waiting (48 questions' worth)
        c.portal.start_task_soon(anyio.to_thread.run_sync, release.wait)

    held = threading.Event()

    def hold_job_store() -> None:  # a writer inside the job store, e.g. waiting for SQLite's write lock
        with service.jobs._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_job_store, daemon=True)
    holder.start()
    assert held.wait(5)
    timer = threading.Timer(5.0, release.set)  # frees everything even if /healthz blocked (the bug)
    timer.start()
    try:
        deadline = time.monotonic() + 2
        while c.portal.call(lambda: limiter.borrowed_tokens) < limiter.total_tokens and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.portal.call(lambda: limiter.borrowed_tokens) == limiter.total_tokens
        for path in ("/healthz", "/metrics", "/healthz"):
            t0 = time.perf_counter()
            r = c.get(path)
            took = time.perf_counter() - t0
            assert r.status_code == 200 and took < 0.5, (path, took)
        assert c.get("/healthz").json()["jobs"]["queued"] == 0
    finally:
        release.set()
        timer.cancel()
        holder.join(5)


def test_made_up_methods_and_paths_do_not_grow_metrics(app_env):
    c = app_env
    rng = random.Random(0)
    known = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
    paths = ["/healthz", "/v1/collections", "/v1/jobs/{}", "/nope/{}", "/v1/collections{}", "/static/{}"]

    def method() -> str:
        while (m := "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))) in known:
            pass
        return m

    def junk(path: str) -> None:
        c.request(method(), path.format("".join(rng.choices(string.ascii_lowercase, k=6))))

    for path in paths:  # every label set a made-up request can reach, once (and one scrape)
        junk(path)
    c.get("/metrics")
    before = c.get("/metrics").text.count("\n")
    for _ in range(200):
        junk(rng.choice(paths))
    text = c.get("/metrics").text
    assert text.count("\n") == before  # +3,400 lines before the fix
    assert 'method="other"' in text and 'route="unmatched"' in text
    methods = {part.split('"')[0] for part in text.split('method="')[1:]}
    assert methods <= known | {"other"}


# -- abandoned streams ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration  # a real HTTP server (uvicorn in a thread)
@pytest.mark.timeout(300)
def test_an_abandoned_stream_stops_generating(tmp_path, tiny_st_model, tiny_llm):
    import uvicorn

    settings = make_settings(tmp_path / "home", tiny_st_model, tiny_llm, auth=False)
    # long answers: sampled at a high temperature (no repetition stop), a large budget, reproducible
    settings.qa = QAConfig(
        answer_style="full",
        full_max_new_tokens=1200,
        strategy="sample",
        temperature=3.0,
        seed=7,
        mode="rag-token",
        full_stop_unsupported=False,  # random text is never supported: it would stop at its first sentence
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{server.config.port}"
        with httpx.Client(base_url=base, timeout=120) as c:
            assert c.post("/v1/collections", json={"name": "s"}).status_code == 201
            r = c.post("/v1/collections/s/documents", files=_files("s-", 2))
            assert wait_job(c, r.json()["job_id"])["status"] == "done"
            service = app.state.service
            stats = service.qa.scheduler.stats
            ask = {"question": "Where does river 1 flow?", "collection": "s", "k": 2, "stream": True}

            t0 = time.monotonic()
            with c.stream("POST", "/v1/ask", json=ask) as s:  # read to the end: the full answer
                events = sse_events("".join(s.iter_text()))
            full_s = time.monotonic() - t0
            assert events[-1][0] == "answer"
            full_tokens = events[-1][1]["generated_tokens"]
            assert full_tokens >= 300, full_tokens  # long enough to leave in the middle
            answers = service.answers.count()["answers"]
            tokens_before = stats().tokens_generated

            with c.stream("POST", "/v1/ask", json=ask) as s:  # the same answer, abandoned after its first token
                for line in s.iter_lines():
                    if line.startswith("event: token"):
                        break
            left_at = time.monotonic()
            while stats().active_requests or stats().queue_depth:
                assert time.monotonic() - left_at < full_s, "the abandoned answer was generated to its end"
                time.sleep(0.02)
            stopped_s = time.monotonic() - left_at
            generated = stats().tokens_generated - tokens_before
            assert generated < full_tokens / 2, (generated, full_tokens)
            assert service.answers.count()["answers"] == answers  # never finished, so never logged
            assert stopped_s < max(1.0, full_s / 2), (stopped_s, full_s)
    finally:
        server.should_exit = True
        thread.join(60)
