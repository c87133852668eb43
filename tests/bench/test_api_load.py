"""bench/api_load.py's client: a refused question (503 / 429 with Retry-After) is asked again after the wait."""

from __future__ import annotations

import asyncio
import json

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from safetensors.torch import load_file

from bench import api_load


def _server(refusals: int, status: int = 503) -> tuple[FastAPI, list[int]]:
    app, calls = FastAPI(), [0]

    @app.post("/v1/ask")
    async def ask() -> object:
        calls[0] += 1
        if calls[0] <= refusals:
            return JSONResponse({"detail": "busy"}, status_code=status, headers={"Retry-After": "0"})

        async def events():
            yield "event: token\ndata: Paris\n\n"
            yield f"event: answer\ndata: {json.dumps({'answer': 'Paris'})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app, calls


def _ask(app: FastAPI) -> dict:
    async def go() -> dict:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await api_load.ask_stream(client, "What is the capital of France?")

    return asyncio.run(go())


def test_refused_questions_are_asked_again_after_retry_after() -> None:
    for status in (503, 429):
        app, calls = _server(refusals=2, status=status)
        res = _ask(app)
        assert res["answer"] == {"answer": "Paris"} and res["refused"] == 2 and calls[0] == 3
        assert res["latency"] >= res["ttft"] > 0


def test_a_server_that_keeps_refusing_is_an_error_after_the_retries() -> None:
    app, calls = _server(refusals=100)
    res = _ask(app)
    assert res["error"].startswith("503") and res["refused"] == api_load.MAX_RETRIES
    assert calls[0] == api_load.MAX_RETRIES + 1


def test_a_phase_decode_figures_are_the_difference_of_two_metrics_readings() -> None:
    before = "ragqa_batch_rows_count 10.0\nragqa_batch_rows_sum 40.0\nragqa_decode_seconds_total 2.0\n"
    after = "ragqa_batch_rows_count 30.0\nragqa_batch_rows_sum 200.0\nragqa_decode_seconds_total 5.0\n"
    assert api_load.decode_delta(before, after) == {"steps": 20.0, "rows": 160.0, "seconds": 3.0}
    assert api_load.decode_delta("", "") == {"steps": 0.0, "rows": 0.0, "seconds": 0.0}  # the serialised server


def test_the_decode_bound_is_the_bandwidth_over_the_bytes_a_step_reads(tiny_llm, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RAGQA_GENERATOR__MODEL", str(tiny_llm))
    monkeypatch.setenv("RAGQA_CPU_BF16", "0")
    monkeypatch.setenv("RAGQA_GENERATOR__INT8_DECODE", "off")
    bound = api_load.bandwidth_bound(tmp_path)
    params = sum(t.numel() for t in load_file(tiny_llm / "model.safetensors").values())
    assert bound["dtype"] == "torch.float32"
    assert params * 4 * 0.5 <= bound["weight_bytes"] <= params * 4  # tied embedding / head counted once
    assert bound["bandwidth_gbs"] > 0
    assert bound["bound_steps_per_s"] == bound["bandwidth_gbs"] * 1e9 / bound["weight_bytes"]
