"""End to end against a real `ragqa serve` process on a free loopback port, with tiny models:
upload -> job done -> ask -> stream -> feedback -> delete document -> ask again."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

from tests.api.server_process import create_key, running_server, server_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture()
def server(home, tiny_st_model, tiny_llm, tmp_path):
    env = server_env(home, tiny_st_model, tiny_llm)
    key = create_key(env, "e2e")
    with running_server(env, tmp_path / "server.log") as (base, proc):
        yield base, {"Authorization": f"Bearer {key}"}, proc


def test_server_end_to_end(server):
    base, h, proc = server
    with httpx.Client(base_url=base, headers=h, timeout=60) as c:
        assert httpx.get(f"{base}/v1/collections").status_code == 401  # auth is on by default
        assert c.post("/v1/collections", json={"name": "e2e"}).status_code == 201
        files = [
            ("files", ("paris.txt", b"Paris is the capital of France.", "text/plain")),
            ("files", ("rivers.md", b"# Rivers\n\nThe Danube flows through Vienna and Budapest.", "text/markdown")),
        ]
        r = c.post("/v1/collections/e2e/documents", files=files)
        assert r.status_code == 202
        job_id = r.json()["job_id"]
        for _ in range(600):
            job = c.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert job["status"] == "done" and job["progress"]["added"] == 2, job

        ans = c.post("/v1/ask", json={"question": "What is the capital of France?", "collection": "e2e", "k": 2}).json()
        assert ans["answer_id"] and len(ans["citations"]) == 2

        events = []
        with c.stream(
            "POST",
            "/v1/ask",
            json={"question": "Which river flows through Vienna?", "collection": "e2e", "stream": True},
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event, json.loads(line[6:])))
        assert events[-1][0] == "answer" and any(e == "token" for e, _ in events)

        fb = c.post(f"/v1/answers/{ans['answer_id']}/feedback", json={"rating": "down", "correction": "Paris"})
        assert fb.status_code == 201

        docs = c.get("/v1/collections/e2e/documents").json()
        paris = next(d for d in docs["data"] if d["filename"] == "paris.txt")
        assert c.delete(f"/v1/collections/e2e/documents/{paris['doc_id']}").json()["deleted"] == 1
        again = c.post(
            "/v1/ask", json={"question": "What is the capital of France?", "collection": "e2e", "k": 2}
        ).json()
        assert paris["doc_id"] not in {x["doc_id"] for x in again["citations"]}
        assert again["collection_generation"] > ans["collection_generation"]

        metrics = httpx.get(f"{base}/metrics").text
        assert 'ragqa_http_requests_total{method="POST",route="/v1/ask",status="200"}' in metrics
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn shuts down cleanly, then re-raises the signal
