"""Backpressure through the REST API: per-key rate limits and quotas (429), a full queue (503), a missed
deadline (504), and a /healthz that answers while every worker thread waits on the model."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import open_key_store
from api.ratelimit import RateLimiter, TooManyRequests
from api.settings import LimitsConfig, Settings
from rag.serving_errors import DeadlineExceededError, ServerBusyError
from tests.api.test_app import DOC_B, assert_error, make_settings, sse_events, wait_job

KEYS = ("admin", "rate", "chat", "upload", "quota", "off", "busy", "slow", "health")
ASK = {"question": "What is the capital of France?", "collection": "lim"}


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_st_model, tiny_llm):
    """An app with limits configured (3 questions/minute, 1 upload/minute, 5 questions/day per key)
    and one key per test, and collection 'lim' holding one document."""
    home = tmp_path_factory.mktemp("limits-home")
    settings = make_settings(home, tiny_st_model, tiny_llm)
    settings.limits = LimitsConfig(ask_per_key="3/minute", upload_per_key="1/minute", quota_per_key="5/day")
    store = open_key_store(home)
    headers = {name: {"Authorization": f"Bearer {store.create(name)[1]}"} for name in KEYS}
    store.close()
    app = create_app(settings)
    with TestClient(app) as client:
        h = headers["admin"]
        assert client.post("/v1/collections", json={"name": "lim"}, headers=h).status_code == 201
        r = client.post(
            "/v1/collections/lim/documents", files=[("files", ("b.md", DOC_B.encode(), "text/markdown"))], headers=h
        )
        assert r.status_code == 202, r.text
        assert wait_job(client, r.json()["job_id"], h)["status"] == "done"
        yield {"client": client, "app": app, "service": app.state.service, "metrics": app.state.metrics, **headers}


@pytest.fixture()
def use_limits(env):
    """Swap the app's limiter for one built from other limits during a test (``app.state`` is not monkeypatchable)."""
    state = env["app"].state
    original = state.limiter

    def use(config: LimitsConfig) -> None:
        state.limiter = RateLimiter(config, env["metrics"])

    yield use
    state.limiter = original


def rejected(env, reason: str) -> float:
    return env["metrics"].counter_value("ragqa_rejected_requests_total", reason=reason)


def retry_after(r) -> int:
    value = r.headers["Retry-After"]
    assert value.isdigit(), value
    return int(value)


# -- settings ------------------------------------------------------------------------------------
def test_limits_off_by_default(tmp_path):
    settings = Settings(home=tmp_path)
    assert settings.limits.ask_per_key is None and settings.limits.upload_per_key is None
    assert settings.limits.quota_per_key is None
    app = create_app(settings, start_worker=False)  # no lifespan: the models are not loaded
    assert not app.state.limiter.enabled


def test_bad_limit_is_refused_with_the_expected_form():
    with pytest.raises(ValueError, match="30/minute"):
        LimitsConfig(ask_per_key="thirty a minute")


def test_limits_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGQA_LIMITS__ASK_PER_KEY", "7/hour")
    monkeypatch.setenv("RAGQA_SERVING__REQUEST_TIMEOUT_S", "9")
    settings = Settings(home=tmp_path)
    assert settings.limits.ask_per_key == "7/hour" and settings.serving.request_timeout_s == 9.0
    assert RateLimiter(settings.limits).enabled


def test_quota_unit_counts_per_caller():
    limiter = RateLimiter(LimitsConfig(quota_per_key="2/day"))
    limiter.check("ask", "key:a")
    limiter.check("ask", "key:a")
    limiter.check("upload", "key:a")  # uploads are not questions: no quota on them
    with pytest.raises(TooManyRequests) as info:
        limiter.check("ask", "key:a")
    assert info.value.code == "quota_exceeded" and info.value.status == 429
    assert 60 < info.value.retry_after_s <= 86400
    limiter.check("ask", "key:b")  # another key has its own count


# -- 429 -----------------------------------------------------------------------------------------
def test_ask_rate_limit_answers_429_with_retry_after(env):
    c, h = env["client"], env["rate"]
    before = rejected(env, "rate_limited")
    for _ in range(3):
        assert c.post("/v1/ask", json=ASK, headers=h).status_code == 200
    r = c.post("/v1/ask", json=ASK, headers=h)
    err = assert_error(r, 429, "rate_limited")
    assert "3/minute" in err["message"] and "limits.ask_per_key" in err["message"]
    assert 1 <= retry_after(r) <= 60
    # chat completions draw on the same budget; another key is not affected
    chat = {"model": "lim", "messages": [{"role": "user", "content": "capital of France?"}]}
    assert_error(c.post("/v1/chat/completions", json=chat, headers=h), 429, "rate_limited")
    assert c.post("/v1/ask", json=ASK, headers=env["chat"]).status_code == 200
    assert rejected(env, "rate_limited") == before + 2
    # routes without a limit stay open to the limited key
    assert c.get("/v1/collections/lim", headers=h).status_code == 200


def test_upload_rate_limit(env):
    c, h = env["client"], env["upload"]
    files = [("files", ("u.txt", b"an uploaded note about rivers", "text/plain"))]
    r = c.post("/v1/collections/lim/documents", files=files, headers=h)
    assert r.status_code == 202, r.text
    r2 = c.post("/v1/collections/lim/documents", files=files, headers=h)
    assert_error(r2, 429, "rate_limited")
    assert 1 <= retry_after(r2) <= 60
    assert c.post("/v1/ask", json=ASK, headers=h).status_code == 200  # questions have their own budget
    wait_job(c, r.json()["job_id"], h)


def test_quota_answers_429_until_the_period_ends(env, use_limits):
    c, h = env["client"], env["quota"]
    use_limits(LimitsConfig(quota_per_key="2/day"))  # a quota below the rate limit, so that the quota is what refuses
    before = rejected(env, "quota")
    assert c.post("/v1/ask", json=ASK, headers=h).status_code == 200
    assert c.post("/v1/ask", json=ASK, headers=h).status_code == 200
    r = c.post("/v1/ask", json=ASK, headers=h)
    err = assert_error(r, 429, "quota_exceeded")
    assert "quota of 2/day" in err["message"]
    assert 60 < retry_after(r) <= 86400
    assert rejected(env, "quota") == before + 1


def test_unconfigured_limiter_lets_everything_through(env, use_limits):
    c, h = env["client"], env["off"]
    use_limits(LimitsConfig())
    codes = [c.post("/v1/ask", json=ASK, headers=h).status_code for _ in range(6)]  # twice the app's 3/minute
    assert codes == [200] * 6


# -- 503 / 504 -----------------------------------------------------------------------------------
@pytest.fixture()
def unlimited(env, use_limits):
    use_limits(LimitsConfig())
    return env


def test_full_queue_answers_503_with_retry_after(unlimited, monkeypatch):
    env = unlimited
    c, h = env["client"], env["busy"]

    def busy(*args, **kwargs):
        raise ServerBusyError()

    monkeypatch.setattr(env["service"].qa, "answer", busy)
    before = rejected(env, "queue_full")
    r = c.post("/v1/ask", json=ASK, headers=h)
    err = assert_error(r, 503, "server_busy")
    assert "retry" in err["message"]
    assert retry_after(r) == 2  # serving.busy_retry_after_s
    # the scheduler's own estimate wins, rounded up to whole seconds
    monkeypatch.setattr(
        env["service"].qa, "answer", lambda *a, **k: (_ for _ in ()).throw(ServerBusyError(retry_after_s=6.2))
    )
    chat = {"model": "lim", "messages": [{"role": "user", "content": "capital?"}]}
    r = c.post("/v1/chat/completions", json=chat, headers=h)
    assert_error(r, 503, "server_busy")
    assert retry_after(r) == 7
    # a stream has started already: the refusal is its error event
    r = c.post("/v1/ask", json={**ASK, "stream": True}, headers=h)
    assert r.status_code == 200
    message = str(ServerBusyError(retry_after_s=6.2))
    assert sse_events(r.text)[-1] == ("error", {"error": {"code": "server_busy", "message": message}})
    assert rejected(env, "queue_full") == before + 3


def test_serving_error_outside_the_service_is_mapped_too(unlimited, monkeypatch):
    """The app's handler maps a serving error that reaches FastAPI directly (not through the service)."""
    env = unlimited

    def raise_deadline(*args, **kwargs):
        raise DeadlineExceededError(5.0)

    monkeypatch.setattr(env["service"], "validate_question", raise_deadline)
    r = env["client"].post("/v1/ask", json=ASK, headers=env["busy"])
    err = assert_error(r, 504, "deadline_exceeded")
    assert "5 s" in err["message"]


def test_request_deadline_answers_504(unlimited, monkeypatch):
    env = unlimited
    c, h, service = env["client"], env["slow"], env["service"]
    release = threading.Event()

    def slow(*args, **kwargs):
        release.wait(10)
        raise ServerBusyError()

    monkeypatch.setattr(service.qa, "answer", slow)
    monkeypatch.setattr(service.settings.serving, "request_timeout_s", 0.3)
    before = rejected(env, "deadline")
    try:
        t0 = time.perf_counter()
        r = c.post("/v1/ask", json=ASK, headers=h)
        waited = time.perf_counter() - t0
        err = assert_error(r, 504, "deadline_exceeded")
        assert "0.3 s" in err["message"] and "serving.request_timeout_s" in err["message"]
        assert waited < 3.0, f"the client waited {waited:.1f} s for a 0.3 s deadline"
        r = c.post("/v1/ask", json={**ASK, "stream": True}, headers=h)
        kind, body = sse_events(r.text)[-1]
        assert kind == "error" and body["error"]["code"] == "deadline_exceeded"
        assert rejected(env, "deadline") == before + 2
    finally:
        release.set()


def block_answers(service, monkeypatch) -> tuple[list[int], threading.Event]:
    """Every answer waits (on its worker thread) until the returned event is set, then is refused as busy;
    ``entered`` counts the answers that reached the model."""
    entered: list[int] = []
    release = threading.Event()

    def blocked(*args, **kwargs):
        entered.append(1)
        release.wait(60)
        raise ServerBusyError()

    monkeypatch.setattr(service.qa, "answer", blocked)
    return entered, release


# -- /healthz while the model is busy -------------------------------------------------------------
def test_other_routes_answer_while_every_answer_thread_waits_on_the_model(unlimited, monkeypatch):
    """Answers run on their own thread pool (serving.answer_threads): with every one of those threads waiting for
    the model, /healthz, /metrics and an authenticated listing (key check included) still answer at once."""
    env = unlimited
    c, service = env["client"], env["service"]
    threads = service.settings.serving.answer_threads
    default_pool = c.portal.call(lambda: _total_tokens())
    entered, release = block_answers(service, monkeypatch)
    lock = service.qa.generator._lock
    lock.acquire()  # the generator is busy too: /healthz must not wait for it
    pool = ThreadPoolExecutor(threads + 4)
    try:
        futures = [pool.submit(c.post, "/v1/ask", json=ASK, headers=env["health"]) for _ in range(threads + 4)]
        deadline = time.monotonic() + 30
        while len(entered) < threads and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the 4 beyond the pool wait for a thread, they do not take one
        assert len(entered) == threads, f"{len(entered)} of {threads} answer threads busy"
        assert threads >= default_pool  # more answers wait than the default pool has threads
        for path in ("/healthz", "/metrics", "/v1/collections"):
            t0 = time.perf_counter()
            r = c.get(path, headers=env["health"])
            took = time.perf_counter() - t0
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            assert took < 1.0, f"{path} took {took:.2f} s while every answer thread waited on the model"
    finally:
        lock.release()
        release.set()
        codes = [f.result(timeout=60).status_code for f in futures]
        pool.shutdown()
    assert set(codes) == {503}


def test_streamed_answers_share_the_answer_threads(unlimited, monkeypatch):
    """Streamed answers run on the answer threads too: more streams than the loop's default executor has threads
    (min(32, cores + 4)) all reach the model at once, so the scheduler can batch them."""
    env = unlimited
    c, service = env["client"], env["service"]
    n = min(32, (os.cpu_count() or 1) + 4) + 4
    entered, release = block_answers(service, monkeypatch)
    pool = ThreadPoolExecutor(n)
    try:
        futures = [
            pool.submit(c.post, "/v1/ask", json={**ASK, "stream": True}, headers=env["health"]) for _ in range(n)
        ]
        deadline = time.monotonic() + 30
        while len(entered) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(entered) == n, f"{len(entered)} of {n} streamed answers reached the model"
    finally:
        release.set()
        responses = [f.result(timeout=60) for f in futures]
        pool.shutdown()
    assert all(r.status_code == 200 and "server_busy" in r.text for r in responses)


async def _total_tokens() -> int:
    """Worker threads of the app's event loop (anyio's default limiter, shared by every sync route)."""
    return int(anyio.to_thread.current_default_thread_limiter().total_tokens)
