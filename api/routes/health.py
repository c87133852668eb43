"""Liveness and Prometheus metrics (no key needed; the server binds to loopback by default).

Both are ``async`` and take no sync dependency: they run on the event loop, never queued behind
the worker threads that busy generations hold, and never touch the generator's lock.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: models loaded, worker alive, job counts")
async def healthz(request: Request) -> Health:
    # async and without dependencies: it answers on the event loop even when every worker thread is busy
    return request.app.state.service.health()


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text format")
async def metrics(request: Request) -> PlainTextResponse:
    metrics = request.app.state.metrics
    return PlainTextResponse(metrics.render(), media_type=metrics.content_type)
