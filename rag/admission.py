"""Admission by predicted finish time: measured service rates and a small simulation of the queue.

The scheduler (:mod:`rag.scheduler`) decodes at most ``max_active`` answers at once and keeps the
rest in a FIFO queue. A new request's finish time is predicted from what is measured while serving
(:class:`ServiceRates`) and the work ahead of it (:func:`predict`); when the prediction does not fit
its deadline, the request is refused at once (:class:`PredictedLateError`, HTTP 503 with
``Retry-After``) instead of waiting until its deadline and failing then.

Measured rates (exponentially weighted, recent work counts most):

* decode step seconds vs rows: a weighted least-squares line ``a + b * rows`` over the recent steps.
  While the steps seen so far all had about the same number of rows, the line cannot be fitted;
  then a step of more rows than seen is assumed to cost proportionally more, and a step of fewer
  rows the same (both pessimistic);
* prefill seconds per prompt token (admission time over the prompt tokens admitted, cached
  prefixes included, so the prefix cache's hit rate is part of the rate);
* tokens per answer, per ``max_new_tokens`` (the answer style sets it); before any answer of that
  budget finished, the budget itself (pessimistic).

Before the first decode step is measured (a cold server) there is no prediction and every request is
admitted: a guess from no data would refuse requests on a machine faster than the guess, or admit
too many on a slower one; one warm-up question gives the rates.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from rag.serving_errors import ServerBusyError

__all__ = ["Prediction", "PredictedLateError", "ServiceRates", "Work", "predict"]


class PredictedLateError(ServerBusyError):
    """Refused at submission: the request's predicted finish time passes its deadline.

    ``retry_after_s``: how much later the same request would fit, if nothing else arrived;
    ``predicted_s``: its predicted time from submission to its last token.
    """

    reason = "predicted_late"

    def __init__(self, message: str, *, retry_after_s: float, predicted_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.predicted_s = predicted_s


@dataclass(frozen=True)
class Work:
    """One answer as the predictor sees it.

    Attributes:
        rows: its rows in the decode batch (K for rag-token over K documents).
        steps: decode steps still to run (expected tokens still to choose).
        prefill_tokens: prompt tokens still to prefill (0 once it decodes).
    """

    rows: int
    steps: float
    prefill_tokens: int = 0


@dataclass(frozen=True)
class Prediction:
    """Seconds from now until a request would be admitted (its prefill starts) and until it would finish."""

    wait_s: float
    finish_s: float


class _Ewma:
    """Exponentially weighted sums (``decay`` per observation)."""

    def __init__(self, decay: float, size: int) -> None:
        self.decay = decay
        self.sums = [0.0] * size

    def add(self, *values: float) -> None:
        self.sums = [s * self.decay + v for s, v in zip(self.sums, values)]


class ServiceRates:
    """Service rates measured while serving (thread-safe; every method is cheap).

    Args:
        decay: weight kept by the older observations at each new one (0.98: about the last 50 steps).
    """

    def __init__(self, decay: float = 0.98) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError("decay must be in (0, 1).")
        self._lock = threading.Lock()
        self._steps = _Ewma(decay, 5)  # weight, rows, rows^2, seconds, rows * seconds
        self._prefill = _Ewma(decay, 2)  # tokens, seconds
        self._tokens: dict[int, _Ewma] = {}  # max_new_tokens -> (weight, tokens)
        self._decay = decay

    # -- observations ------------------------------------------------------------------------
    def observe_step(self, rows: int, seconds: float) -> None:
        """One batched decode step of ``rows`` rows took ``seconds``."""
        if rows > 0 and seconds >= 0:
            with self._lock:
                self._steps.add(1.0, rows, rows * rows, seconds, rows * seconds)

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """Admitting requests with ``tokens`` prompt tokens in all took ``seconds``."""
        if tokens > 0 and seconds >= 0:
            with self._lock:
                self._prefill.add(tokens, seconds)

    def observe_answer(self, max_new_tokens: int, tokens: int) -> None:
        """An answer with budget ``max_new_tokens`` ended after ``tokens`` tokens."""
        with self._lock:
            self._tokens.setdefault(max_new_tokens, _Ewma(self._decay, 2)).add(1.0, tokens)

    # -- rates --------------------------------------------------------------------------------
    @property
    def measured(self) -> bool:
        """Whether a decode step was measured (no prediction before)."""
        with self._lock:
            return self._steps.sums[0] > 0

    def step_seconds(self, rows: int) -> float | None:
        """Predicted seconds of one decode step of ``rows`` rows (None before any step was measured)."""
        with self._lock:
            w, x, xx, y, xy = self._steps.sums
        if w <= 0 or rows <= 0:
            return None if w <= 0 else 0.0
        mean_x, mean_y = x / w, y / w
        var = xx / w - mean_x * mean_x
        if var >= 1.0:  # the rows varied by about a row or more: fit the line
            slope = (xy / w - mean_x * mean_y) / var
            intercept = mean_y - slope * mean_x
            if slope >= 0 and intercept >= 0:
                return intercept + slope * rows
        return mean_y * max(1.0, rows / mean_x)

    def prefill_seconds(self, tokens: int) -> float:
        """Predicted seconds to admit a request of ``tokens`` prompt tokens (0 before any was measured)."""
        with self._lock:
            seen, seconds = self._prefill.sums
        return tokens * seconds / seen if seen > 0 else 0.0

    def expected_tokens(self, max_new_tokens: int) -> float:
        """Expected length of an answer with this budget (the budget itself until one was seen)."""
        with self._lock:
            ewma = self._tokens.get(max_new_tokens)
            w, tokens = ewma.sums if ewma is not None else (0.0, 0.0)
        return min(float(max_new_tokens), tokens / w) if w > 0 else float(max_new_tokens)


def predict(
    active: Sequence[Work],
    waiting: Sequence[Work],
    new: Work,
    *,
    rates: ServiceRates,
    max_active: int | None,
    max_rows: int,
) -> Prediction | None:
    """When ``new``, queued behind ``waiting`` (FIFO), would be admitted and finish (None: nothing measured yet).

    A simulation of the scheduler: at most ``max_active`` answers and ``max_rows`` rows decode at once;
    each decode step of ``R`` rows takes :meth:`ServiceRates.step_seconds` ``(R)`` and advances every
    decoding answer by one token; the head of the queue is admitted as soon as an answer leaves and
    rows are free, and its prefill pauses the others. Event-driven (one iteration per answer that
    leaves), so it costs ``O(n^2)`` for ``n`` answers in the system.
    """
    if rates.step_seconds(1) is None:
        return None
    running = [[float(w.rows), max(0.0, w.steps)] for w in active]
    queue = list(waiting) + [new]
    now = sum(rates.prefill_seconds(w.prefill_tokens) for w in active)  # admitted, not yet prefilled
    admitted_at: float | None = None
    new_entry: list[float] | None = None
    while True:
        rows = sum(r for r, _ in running)
        while queue and (max_active is None or len(running) < max_active) and rows + queue[0].rows <= max_rows:
            job = queue.pop(0)
            now += rates.prefill_seconds(job.prefill_tokens)
            entry = [float(job.rows), max(0.0, job.steps)]
            running.append(entry)
            rows += job.rows
            if not queue:  # that was ``new``
                admitted_at, new_entry = now, entry
        if not running:  # ``new`` cannot fit at all (more rows than max_rows)
            return Prediction(math.inf, math.inf)
        advance = min(left for _, left in running)
        now += advance * (rates.step_seconds(int(rows)) or 0.0)
        for entry in running:
            entry[1] -= advance
        if new_entry is not None and new_entry[1] <= 0:
            return Prediction(admitted_at if admitted_at is not None else now, now)
        running = [e for e in running if e[1] > 0]
