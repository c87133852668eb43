"""Liveness and Prometheus metrics (no key needed; the server binds to loopback by default)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from api.deps import ServiceDep
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: models loaded, worker alive, job counts")
def healthz(service: ServiceDep) -> Health:
    return service.health()


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text format")
def metrics(service: ServiceDep) -> PlainTextResponse:
    return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
