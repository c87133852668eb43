"""Admission by predicted finish time through the REST API: a question that cannot finish within its
deadline is refused at once (503 + Retry-After, counted as ``predicted_late``), and the deadline runs
from the request's arrival, validation included."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import open_key_store
from rag.admission import ServiceRates
from rag.serving_errors import ServerBusyError
from tests.api.test_app import DOC_B, assert_error, make_settings, wait_job

ASK = {"question": "What is the capital of France?", "collection": "adm"}


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_st_model, tiny_llm):
    """An app (default serving settings: batching, admission 'predict') with collection 'adm' of one document."""
    home = tmp_path_factory.mktemp("admission-home")
    settings = make_settings(home, tiny_st_model, tiny_llm)
    store = open_key_store(home)
    headers = {"Authorization": f"Bearer {store.create('admin')[1]}"}
    store.close()
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.post("/v1/collections", json={"name": "adm"}, headers=headers).status_code == 201
        r = client.post(
            "/v1/collections/adm/documents",
            files=[("files", ("b.md", DOC_B.encode(), "text/markdown"))],
            headers=headers,
        )
        assert r.status_code == 202, r.text
        assert wait_job(client, r.json()["job_id"], headers)["status"] == "done"
        yield {"client": client, "service": app.state.service, "metrics": app.state.metrics, "h": headers}


def rejected(env, reason: str) -> float:
    return env["metrics"].counter_value("ragqa_rejected_requests_total", reason=reason)


def test_the_server_scheduler_bounds_active_answers_and_predicts(env):
    scheduler = env["service"].qa.scheduler
    serving = env["service"].settings.serving
    assert serving.admission == "predict" and serving.max_active_answers is None
    assert scheduler.admission and scheduler.max_active_requests == serving.max_batch_rows // 4 == 16
    assert serving.model_copy(update={"max_active_answers": 3}).active_answers(4) == 3


def test_a_question_predicted_to_miss_its_deadline_gets_503_at_once(env, monkeypatch):
    """Rates that say a decode step takes 1000 s: the question is refused before it waits, with a Retry-After
    of the predicted excess (clamped to the deadline), and counted as ``predicted_late``, not ``queue_full``."""
    c, h = env["client"], env["h"]
    assert c.post("/v1/ask", json=ASK, headers=h).status_code == 200  # measured rates: admitted
    slow = ServiceRates()
    slow.observe_step(4, 1000.0)
    monkeypatch.setattr(env["service"].qa.scheduler, "rates", slow)
    late, full = rejected(env, "predicted_late"), rejected(env, "queue_full")
    t0 = time.perf_counter()
    r = c.post("/v1/ask", json=ASK, headers=h)
    took = time.perf_counter() - t0
    err = assert_error(r, 503, "server_busy")
    assert "of its deadline" in err["message"] and "retry in" in err["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 120  # serving.request_timeout_s
    assert took < 10.0, f"the refusal took {took:.1f} s"
    assert rejected(env, "predicted_late") == late + 1 and rejected(env, "queue_full") == full
    metrics = c.get("/metrics").text
    assert 'ragqa_rejected_requests_total{reason="predicted_late"}' in metrics
    assert "ragqa_predicted_finish_seconds" in metrics and "ragqa_max_active_requests 16.0" in metrics
    t0 = time.perf_counter()
    assert c.get("/healthz").status_code == 200
    assert time.perf_counter() - t0 < 1.0


def test_the_deadline_runs_from_the_request_arrival(env, monkeypatch):
    """Validation that takes 1.5 s of a 2 s deadline leaves the answer 0.5 s: the scheduler gets that much,
    and the 504 comes 2 s after the request arrived, not 2 s after the answer started."""
    c, h, service = env["client"], env["h"], env["service"]
    validate = service.validate_question
    seen: dict[str, float] = {}
    release = threading.Event()

    def slow_validation(*args, **kwargs):
        time.sleep(1.5)
        return validate(*args, **kwargs)

    def blocked(*args, **kwargs):
        seen["deadline_s"] = kwargs["deadline_s"]
        release.wait(10)
        raise ServerBusyError()

    monkeypatch.setattr(service, "validate_question", slow_validation)
    monkeypatch.setattr(service.qa, "answer", blocked)
    monkeypatch.setattr(service.settings.serving, "request_timeout_s", 2.0)
    before = rejected(env, "deadline")
    try:
        t0 = time.perf_counter()
        r = c.post("/v1/ask", json=ASK, headers=h)
        waited = time.perf_counter() - t0
    finally:
        release.set()
    assert_error(r, 504, "deadline_exceeded")
    assert 0 < seen["deadline_s"] <= 0.5, seen  # what was left of the 2 s after the 1.5 s validation
    assert waited < 3.3, f"the 504 came {waited:.1f} s after the request (deadline 2 s from arrival)"
    assert rejected(env, "deadline") == before + 1
