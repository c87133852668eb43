"""Two real `ragqa serve` replicas over one RAGQA_HOME (one server.sqlite, one collections folder), as behind
a load-balancing proxy: an upload through replica A while replica B answers; both see the new documents
after the job without a restart; the job's files were ingested exactly once (job leases); answers and
feedback written by both processes land once each."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.server_process import create_key, free_port, server_env, start_server, stop_server, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SEED = ("paris.txt", b"Paris is the capital of France. It lies on the Seine.")
NEW = [
    ("quokka.txt", b"The quokka is a small marsupial that lives on Rottnest Island near Perth."),
    ("danube.txt", b"The Danube flows through Vienna, Bratislava and Budapest to the Black Sea."),
    ("glacier.txt", b"Glaciers carve U-shaped valleys as they move slowly down mountains."),
    ("bees.txt", b"Honey bees tell each other the direction of flowers with a waggle dance."),
]


@pytest.fixture()
def replicas(home, tiny_st_model, tiny_llm, tmp_path) -> Iterator[tuple[list[str], dict[str, str]]]:
    env = server_env(home, tiny_st_model, tiny_llm, RAGQA_QA__ANSWER_STYLE="short", RAGQA_SERVER__JOB_LEASE_S="6")
    key = create_key(env, "replicas")
    ports = [free_port(), free_port()]
    started = [start_server(env, port, tmp_path / f"replica{i}.log") for i, port in enumerate(ports)]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for base, (proc, log) in zip(bases, started):
            wait_healthy(base, proc, log, timeout=420)
        yield bases, {"Authorization": f"Bearer {key}"}
    finally:
        for proc, log in started:
            stop_server(proc, log)


def _wait_job(c: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish: {job}")


def _ask(c: httpx.Client, question: str) -> dict:
    r = c.post("/v1/ask", json={"question": question, "collection": "kb", "k": 3})
    assert r.status_code == 200, r.text
    return r.json()


def test_two_replicas_share_jobs_answers_and_feedback(replicas, home) -> None:
    (a_base, b_base), h = replicas
    with (
        httpx.Client(base_url=a_base, headers=h, timeout=120) as a,
        httpx.Client(base_url=b_base, headers=h, timeout=120) as b,
    ):
        assert a.post("/v1/collections", json={"name": "kb"}).status_code == 201
        seed = a.post("/v1/collections/kb/documents", files=[("files", (SEED[0], SEED[1], "text/plain"))])
        assert _wait_job(b, seed.json()["job_id"])["status"] == "done"  # B reports A's job from the shared DB
        first = _ask(b, "What is the capital of France?")
        gen0 = first["collection_generation"]

        # upload through A while B keeps answering
        r = a.post("/v1/collections/kb/documents", files=[("files", (n, t, "text/plain")) for n, t in NEW])
        assert r.status_code == 202
        job_id = r.json()["job_id"]
        answered: list[int] = []
        errors: list[str] = []
        stop = threading.Event()

        def keep_asking() -> None:
            with httpx.Client(base_url=b_base, headers=h, timeout=120) as c:
                while not stop.is_set():
                    resp = c.post("/v1/ask", json={"question": "Which river flows through Vienna?", "collection": "kb"})
                    (answered if resp.status_code == 200 else errors).append(
                        resp.json()["collection_generation"] if resp.status_code == 200 else resp.text
                    )

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            job = _wait_job(a, job_id)
        finally:
            stop.set()
            asker.join(120)
        assert errors == [] and answered, errors
        assert job["status"] == "done" and job["progress"]["added"] == len(NEW), job
        assert b.get(f"/v1/jobs/{job_id}").json()["status"] == "done"

        # both replicas see the new documents, without a restart
        for c in (a, b):
            info = c.get("/v1/collections/kb").json()
            assert info["documents"] == 1 + len(NEW), info
            ans = _ask(c, "quokka marsupial Rottnest Island")
            assert ans["collection_generation"] > gen0
            assert "quokka.txt" in {Path(x["source"]).name for x in ans["citations"]}, ans["citations"]

        # answers logged by both, feedback to each (crossed over) lands once
        ans_a = _ask(a, "Which river flows through Vienna?")
        ans_b = _ask(b, "Which river flows through Vienna?")
        assert b.post(f"/v1/answers/{ans_a['answer_id']}/feedback", json={"rating": "up"}).status_code == 201
        assert a.post(f"/v1/answers/{ans_b['answer_id']}/feedback", json={"rating": "down"}).status_code == 201

    db = sqlite3.connect(home / "server.sqlite")
    try:
        # the job ran exactly once: one claim from queued, each file read once, by one replica at a time
        assert db.execute("SELECT attempts, lease_owner FROM jobs WHERE job_id=?", (job_id,)).fetchone() == (1, None)
        assert [r[0] for r in db.execute("SELECT attempts FROM job_files WHERE job_id=?", (job_id,))] == [1] * len(NEW)
        n_answers = 1 + len(answered) + 2 + 2  # the first, the asker's, the quokka pair, the feedback pair
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == n_answers
        for answer_id, rating in ((ans_a["answer_id"], "up"), (ans_b["answer_id"], "down")):
            rows = db.execute("SELECT rating FROM feedback WHERE answer_id=?", (answer_id,)).fetchall()
            assert rows == [(rating,)]
        assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 2
    finally:
        db.close()
