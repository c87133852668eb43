"""Prometheus metrics: the per-app registry, stats read at scrape time, and /metrics of a running app."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import Metrics
from api.settings import Settings
from tests.api.test_app import DOC_B, make_settings, sse_events, wait_job

NEW_FAMILIES = {
    "ragqa_rejected_requests",
    "ragqa_generated_tokens",
    "ragqa_generation_seconds",
    "ragqa_decode_seconds",
    "ragqa_time_to_first_token_seconds",
    "ragqa_batch_rows",
}
OLD_FAMILIES = {
    "ragqa_http_requests",
    "ragqa_http_request_duration_seconds",
    "ragqa_answers",
    "ragqa_answer_duration_seconds",
    "ragqa_ingest_jobs",
    "ragqa_ingest_files",
    "ragqa_ingest_chunks",
}


def parse(text: str) -> dict[str, object]:
    """Families by name; the parser raises on text that is not valid exposition."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict, family: str, sample_name: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample_name}{labels} in {family}")


# -- the registry ---------------------------------------------------------------------------------
def test_every_metric_is_declared_once_per_app():
    a, b = Metrics(), Metrics()  # the global registry would refuse the second
    a.inc("ragqa_answers_total", endpoint="ask", mode="rag-token", abstained="false")
    assert a.counter_value("ragqa_answers_total", endpoint="ask", mode="rag-token", abstained="false") == 1.0
    assert b.counter_value("ragqa_answers_total", endpoint="ask", mode="rag-token", abstained="false") == 0.0
    families = parse(a.render())
    assert set(families) >= OLD_FAMILIES | NEW_FAMILIES
    assert families["ragqa_rejected_requests"].type == "counter"
    assert families["ragqa_batch_rows"].type == "histogram"
    for reason in ("queue_full", "rate_limited", "quota", "deadline"):  # exposed at 0 from the start
        assert sample(families, "ragqa_rejected_requests", "ragqa_rejected_requests_total", reason=reason) == 0.0


def test_unknown_names_and_reasons_are_refused():
    m = Metrics()
    with pytest.raises(KeyError):
        m.inc("ragqa_nope_total")
    with pytest.raises(ValueError, match="queue_full"):
        m.reject("tired")


def test_recorders():
    m = Metrics()
    seen: list[str] = []
    timed = m.first_token_timer(seen.append, 0.0, endpoint="ask")
    for t in ("a", "b", "c"):
        timed(t)
    assert seen == ["a", "b", "c"] and m.first_token_timer(None, 0.0, endpoint="ask") is None
    m.record_generation(12, 0.5)
    m.observe_step(8, 0.02)
    m.observe_step(3, 0.01)
    m.reject("quota")
    f = parse(m.render())
    assert (
        sample(f, "ragqa_time_to_first_token_seconds", "ragqa_time_to_first_token_seconds_count", endpoint="ask") == 1
    )
    assert sample(f, "ragqa_generated_tokens", "ragqa_generated_tokens_total") == 12
    assert sample(f, "ragqa_generation_seconds", "ragqa_generation_seconds_total") == 0.5
    assert sample(f, "ragqa_batch_rows", "ragqa_batch_rows_count") == 2
    assert sample(f, "ragqa_batch_rows", "ragqa_batch_rows_sum") == 11
    assert sample(f, "ragqa_batch_rows", "ragqa_batch_rows_bucket", le="4.0") == 1
    assert sample(f, "ragqa_decode_seconds", "ragqa_decode_seconds_total") == pytest.approx(0.03)
    assert sample(f, "ragqa_rejected_requests", "ragqa_rejected_requests_total", reason="quota") == 1


def test_scheduler_and_cache_stats_are_read_at_scrape_time():
    m = Metrics()
    sched = {"queue_depth": 0, "queue_capacity": 64, "active_requests": 0, "active_rows": 0}
    cache = {"hits": 0, "misses": 0, "bytes": 0, "entries": 0, "capacity_bytes": 1 << 30}
    m.watch_scheduler(lambda: sched)
    m.watch_prefix_cache(lambda: cache)
    f = parse(m.render())
    assert sample(f, "ragqa_queue_depth", "ragqa_queue_depth") == 0
    assert sample(f, "ragqa_prefix_cache_hit_ratio", "ragqa_prefix_cache_hit_ratio") == 0.0
    sched.update(queue_depth=5, active_requests=3, active_rows=12)
    cache.update(hits=30, misses=10, bytes=4096, entries=7, evictions=2)
    f = parse(m.render())
    assert sample(f, "ragqa_queue_depth", "ragqa_queue_depth") == 5
    assert sample(f, "ragqa_queue_capacity", "ragqa_queue_capacity") == 64
    assert sample(f, "ragqa_active_requests", "ragqa_active_requests") == 3
    assert sample(f, "ragqa_active_rows", "ragqa_active_rows") == 12
    assert f["ragqa_prefix_cache_hits"].type == "counter"
    assert sample(f, "ragqa_prefix_cache_hits", "ragqa_prefix_cache_hits_total") == 30
    assert sample(f, "ragqa_prefix_cache_misses", "ragqa_prefix_cache_misses_total") == 10
    assert sample(f, "ragqa_prefix_cache_evictions", "ragqa_prefix_cache_evictions_total") == 2
    assert sample(f, "ragqa_prefix_cache_bytes", "ragqa_prefix_cache_bytes") == 4096
    assert sample(f, "ragqa_prefix_cache_entries", "ragqa_prefix_cache_entries") == 7
    assert sample(f, "ragqa_prefix_cache_hit_ratio", "ragqa_prefix_cache_hit_ratio") == 0.75


def test_a_failing_stats_callable_does_not_break_the_scrape(caplog):
    m = Metrics()

    def broken():
        raise RuntimeError("scheduler gone")

    m.watch_scheduler(broken)
    m.gauge("ragqa_jobs", lambda: {(("status", "done"),): 4.0})
    f = parse(m.render())
    assert "ragqa_queue_depth" not in f
    assert sample(f, "ragqa_jobs", "ragqa_jobs", status="done") == 4
    assert "reading scheduler failed" in caplog.text


def test_metrics_endpoint_without_models(tmp_path):
    """/metrics reads the app's registry only: it answers before (and without) the service."""
    client = TestClient(create_app(Settings(home=tmp_path), start_worker=False))  # no lifespan: no models
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert set(parse(r.text)) >= NEW_FAMILIES


# -- a running app --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_st_model, tiny_llm):
    settings = make_settings(tmp_path_factory.mktemp("metrics-home"), tiny_st_model, tiny_llm, auth=False)
    with TestClient(create_app(settings)) as c:
        assert c.post("/v1/collections", json={"name": "m"}).status_code == 201
        r = c.post("/v1/collections/m/documents", files=[("files", ("b.md", DOC_B.encode(), "text/markdown"))])
        assert wait_job(c, r.json()["job_id"])["status"] == "done"
        yield c


def test_answers_feed_the_serving_metrics(client):
    r = client.post("/v1/ask", json={"question": "What is the capital of France?", "collection": "m", "stream": True})
    answer = dict(sse_events(r.text))["answer"]
    assert not answer["abstained"] and answer["generated_tokens"] > 0
    plain = client.post("/v1/ask", json={"question": "Which river flows through Paris?", "collection": "m"}).json()
    f = parse(client.get("/metrics").text)
    assert set(f) >= OLD_FAMILIES | NEW_FAMILIES
    assert (
        sample(f, "ragqa_time_to_first_token_seconds", "ragqa_time_to_first_token_seconds_count", endpoint="ask") == 1
    )
    tokens = sample(f, "ragqa_generated_tokens", "ragqa_generated_tokens_total")
    assert tokens == answer["generated_tokens"] + plain["generated_tokens"]
    assert sample(f, "ragqa_generation_seconds", "ragqa_generation_seconds_total") > 0
    assert (
        sample(f, "ragqa_http_requests", "ragqa_http_requests_total", method="POST", route="/v1/ask", status="200") == 2
    )
    assert sample(f, "ragqa_jobs", "ragqa_jobs", status="done") == 1
    assert sample(f, "ragqa_ingest_files", "ragqa_ingest_files_total", result="added") == 1
