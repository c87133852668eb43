"""Refusing work the server cannot take, as HTTP: a full queue is 503 with ``Retry-After``, a missed
deadline 504, and per-key limits 429 (:mod:`api.ratelimit`).

:func:`install_backpressure` wires one app (its rate limiter and the handler of
:class:`rag.serving_errors.ServingError`); :func:`refusal` maps one serving error to the
:class:`~api.errors.ApiError` the client gets and counts it in ``ragqa_rejected_requests_total``
(reason ``queue_full``, or ``predicted_late`` when the scheduler's admission test refused it);
:class:`Deadline` bounds how long a request may wait on the event loop, counted from its arrival
(:func:`arrival`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.errors import ApiError, error_body
from api.metrics import REQUEST_ARRIVED_AT, Metrics
from api.settings import ServingConfig, Settings
from rag.serving_errors import DeadlineExceededError, ServerBusyError, ServingError

T = TypeVar("T")


def refusal(exc: ServingError, serving: ServingConfig, metrics: Metrics | None = None) -> ApiError:
    """The HTTP error for ``exc`` (counted as a rejected request): busy -> 503 + Retry-After, deadline -> 504."""
    if isinstance(exc, ServerBusyError):
        retry = exc.retry_after_s if exc.retry_after_s is not None else serving.busy_retry_after_s
        err = ApiError(str(exc), code="server_busy", status=503, headers={"Retry-After": str(max(1, math.ceil(retry)))})
        reason = getattr(exc, "reason", "queue_full")  # rag.admission.PredictedLateError: "predicted_late"
    elif isinstance(exc, DeadlineExceededError):
        err, reason = ApiError(str(exc), code="deadline_exceeded", status=504), "deadline"
    else:
        err, reason = (
            ApiError(
                str(exc) or "the server cannot take this request now; retry later",
                code="server_busy",
                status=503,
                headers={"Retry-After": str(serving.busy_retry_after_s)},
            ),
            "queue_full",
        )
    if metrics is not None:
        metrics.reject(reason)
    return err


def arrival() -> float:
    """``time.monotonic()`` when the HTTP request being served arrived (now, outside a request)."""
    arrived = REQUEST_ARRIVED_AT.get()
    return time.monotonic() if arrived is None else arrived


def remaining_s(serving: ServingConfig) -> float:
    """Seconds left of the current request's deadline (``serving.request_timeout_s`` after :func:`arrival`)."""
    return arrival() + serving.request_timeout_s - time.monotonic()


class Deadline:
    """One request's deadline: ``serving.request_timeout_s`` after it arrived (:func:`arrival`), so
    validation, retrieval and queueing all count.

    :meth:`wait` awaits something before the deadline or raises the 504 :class:`~api.errors.ApiError`.
    Work already running in a thread is not interrupted (it finishes and is logged); only the
    client stops waiting for it.
    """

    def __init__(self, serving: ServingConfig, metrics: Metrics | None = None) -> None:
        self.serving = serving
        self.metrics = metrics
        self.timeout_s = serving.request_timeout_s
        self.at = arrival() + self.timeout_s

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    async def wait(self, awaitable: Awaitable[T]) -> T:
        task = asyncio.ensure_future(awaitable)
        try:
            # shield: on timeout return at once; a thread-backed task only finishes when its thread does
            return await asyncio.wait_for(asyncio.shield(task), self.remaining())
        except TimeoutError:
            task.cancel()
            task.add_done_callback(_drop_result)
            raise refusal(DeadlineExceededError(self.timeout_s), self.serving, self.metrics) from None


def _drop_result(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn about it


def install_backpressure(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Give ``app`` its rate limiter (``app.state.limiter``) and the 503/504 handler of serving errors."""
    from api.ratelimit import RateLimiter  # here: api.ratelimit imports api.deps, which imports the service

    app.state.limiter = RateLimiter(settings.limits, metrics)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        err = refusal(exc, settings.serving, metrics)
        return JSONResponse(error_body(err.code, err.message), status_code=err.status, headers=err.headers)
