"""Errors of serving many requests at once: the server is full, or a request ran out of time.

Plain Python (no web types): the scheduler raises them, :mod:`api.errors` maps them to HTTP
(``ServerBusyError`` -> 503 with ``Retry-After``, ``DeadlineExceededError`` -> 504).
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class: the request was refused or stopped for lack of capacity or time, not for bad input."""


class ServerBusyError(ServingError):
    """The request queue is full; the client should retry later.

    ``retry_after_s`` is the scheduler's own estimate of when to retry, when it has one; the
    server's configured default is used otherwise.
    """

    def __init__(
        self,
        message: str = "the server is busy: too many questions are waiting; retry shortly",
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(ServingError):
    """The request did not finish within its deadline (``timeout_s``), queueing included."""

    def __init__(self, timeout_s: float, message: str | None = None) -> None:
        super().__init__(
            message
            or f"the answer did not finish within the request deadline of {timeout_s:g} s; "
            "retry later or ask the operator to raise serving.request_timeout_s"
        )
        self.timeout_s: float | None = timeout_s  # None where the raiser does not know the deadline
