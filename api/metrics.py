"""Prometheus metrics of one app, with ``prometheus-client`` and a registry of the app's own.

:class:`Metrics` declares every metric once (:data:`COUNTERS`, :data:`HISTOGRAMS`) and records
them by name (``metrics.inc("ragqa_answers_total", endpoint=...)``). Values that other parts
of the server already keep (job counts, the scheduler's queue, the prefix cache) are not copied
into it: they are read from plain callables at scrape time by :class:`StatsCollector`, so
``rag/`` hands over a ``stats()`` function and never imports Prometheus.
:class:`MetricsMiddleware` counts every HTTP request by method, route template and status and
times it to the last byte sent (streams included). Every label set is bounded, whatever clients send:
methods outside :data:`HTTP_METHODS` count as ``other``, paths that match no route as ``unmatched``.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: Counters: name (as exposed, with ``_total``) -> (help, label names).
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ragqa_http_requests_total": (
        "HTTP requests by method, route template and status code.",
        ("method", "route", "status"),
    ),
    "ragqa_answers_total": (
        "Answers given, by endpoint, mode and whether the system abstained.",
        ("endpoint", "mode", "abstained"),
    ),
    "ragqa_ingest_jobs_total": ("Upload jobs finished, by final status.", ("status",)),
    "ragqa_ingest_files_total": (
        "Uploaded files processed, by result (added, replaced, unchanged, failed).",
        ("result",),
    ),
    "ragqa_ingest_chunks_total": ("Chunks written by the ingestion worker.", ()),
    "ragqa_rejected_requests_total": (
        (
            "Requests refused before or while answering, by reason (queue_full, predicted_late, rate_limited, "
            "quota, deadline)."
        ),
        ("reason",),
    ),
    "ragqa_generated_tokens_total": ("Tokens generated for answers.", ()),
    "ragqa_generation_seconds_total": (
        (
            "Seconds spent generating answers (prefill and decode, summed over requests); "
            "tokens/s per request = rate(tokens) / rate(seconds)."
        ),
        (),
    ),
    "ragqa_decode_seconds_total": ("Wall-clock seconds of the scheduler's batched decode steps.", ()),
}

#: Histograms: name -> (help, label names, buckets).
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "ragqa_http_request_duration_seconds": (
        "HTTP request latency (to the last byte sent).",
        ("method", "route"),
        LATENCY_BUCKETS,
    ),
    "ragqa_answer_duration_seconds": (
        "Time to answer a question (retrieval + generation).",
        ("endpoint",),
        LATENCY_BUCKETS,
    ),
    "ragqa_time_to_first_token_seconds": (
        "From the start of a streamed answer to its first token.",
        ("endpoint",),
        LATENCY_BUCKETS,
    ),
    "ragqa_batch_rows": ("Rows in one batched decode step (all active requests together).", (), ROW_BUCKETS),
}

#: Methods counted by name in the HTTP metrics; any other (made-up) method is counted as ``other``.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The ``method`` label of a request: a known method, or ``other``."""
    return method if method in HTTP_METHODS else "other"


def route_label(scope: Mapping) -> str:
    """The ``route`` label of a request: its route template (``/v1/collections/{name}``), or ``unmatched``."""
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) and template else "unmatched"


#: Rejection reasons of ``ragqa_rejected_requests_total``.
REJECT_REASONS = ("queue_full", "predicted_late", "rate_limited", "quota", "deadline")

#: ``time.monotonic()`` when the HTTP request being served arrived (set by :class:`MetricsMiddleware`, before
#: authentication and body reading): the start of its deadline (:class:`api.backpressure.Deadline`).
REQUEST_ARRIVED_AT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "ragqa_request_arrived_at", default=None
)

#: Stats read from the scheduler's ``stats()`` at scrape time: key -> (metric, kind, help).
SCHEDULER_STATS: dict[str, tuple[str, str, str]] = {
    "queue_depth": ("ragqa_queue_depth", "gauge", "Requests waiting for the model."),
    "queue_capacity": ("ragqa_queue_capacity", "gauge", "Most requests that may wait; beyond it: 503."),
    "active_requests": ("ragqa_active_requests", "gauge", "Requests being generated now."),
    "active_rows": (
        "ragqa_active_rows",
        "gauge",
        "Rows in the running batch now (K per request for rag-token/rag-sequence).",
    ),
    "max_active_requests": ("ragqa_max_active_requests", "gauge", "Most answers prefilled or decoded at once."),
    "predicted_wait_s": (
        "ragqa_predicted_wait_seconds",
        "gauge",
        "Predicted seconds a new question (shaped like the last one) would wait before its prefill starts "
        "(absent until the first decode step is measured).",
    ),
    "predicted_finish_s": (
        "ragqa_predicted_finish_seconds",
        "gauge",
        "Predicted seconds until such a question would be answered (the admission test compares it to the deadline).",
    ),
}

#: Stats read from the prefix KV cache's ``stats()`` at scrape time: key -> (metric, kind, help).
PREFIX_CACHE_STATS: dict[str, tuple[str, str, str]] = {
    "hits": ("ragqa_prefix_cache_hits", "counter", "Prefix KV cache lookups that found an entry."),
    "misses": ("ragqa_prefix_cache_misses", "counter", "Prefix KV cache lookups that computed the prefix."),
    "evictions": ("ragqa_prefix_cache_evictions", "counter", "Prefix KV cache entries evicted under the byte budget."),
    "bytes": ("ragqa_prefix_cache_bytes", "gauge", "Bytes held by the prefix KV cache."),
    "capacity_bytes": ("ragqa_prefix_cache_capacity_bytes", "gauge", "Byte budget of the prefix KV cache."),
    "entries": ("ragqa_prefix_cache_entries", "gauge", "Entries in the prefix KV cache."),
    "hit_ratio": ("ragqa_prefix_cache_hit_ratio", "gauge", "Prefix KV cache hits / lookups since start (derived)."),
}

#: Help of the callable gauges registered by the server.
GAUGE_HELP = {"ragqa_jobs": "Upload jobs by status right now."}

Labels = tuple[tuple[str, str], ...]
StatsFn = Callable[[], Mapping[str, float]]


class StatsCollector:
    """Families computed at scrape time from callables; a failing callable never breaks the scrape."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, Callable[[], dict[Labels, float]]]] = {}
        self.sources: dict[str, tuple[StatsFn, dict[str, tuple[str, str, str]]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (text, fn) in sorted(self.gauges.items()):
            values = self._call(name, fn)
            if values is None:
                continue
            names = sorted({k for labels in values for k, _ in labels})
            family = GaugeMetricFamily(name, text, labels=names)
            for labels, v in sorted(values.items()):
                d = dict(labels)
                family.add_metric([d.get(n, "") for n in names], float(v))
            yield family
        for source, (stats_fn, table) in sorted(self.sources.items()):
            stats = self._call(source, stats_fn)
            if stats is None:
                continue
            for key, (name, kind, text) in table.items():
                if stats.get(key) is not None:
                    family_cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    yield family_cls(name, text, value=float(stats[key]))

    @staticmethod
    def _call(name: str, fn: Callable[[], object]):
        try:
            return fn()
        except Exception:
            logger.warning("metrics: reading %s failed; left out of this scrape", name, exc_info=True)
            return None


class Metrics:
    """The metrics of one app (its own :class:`~prometheus_client.CollectorRegistry`).

    Recorded by name (unknown names raise ``KeyError``). Stats owned elsewhere are registered as
    callables (:meth:`gauge`, :meth:`watch_scheduler`, :meth:`watch_prefix_cache`) and read at
    scrape time; they must be cheap and must not block (``/metrics`` runs on the event loop).
    """

    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counters = {
            name: Counter(name, text, labels, registry=self.registry) for name, (text, labels) in COUNTERS.items()
        }
        self._histograms = {
            name: Histogram(name, text, labels, buckets=buckets, registry=self.registry)
            for name, (text, labels, buckets) in HISTOGRAMS.items()
        }
        for reason in REJECT_REASONS:  # exposed at 0 from the start, so rate() sees the first rejection
            self._counters["ragqa_rejected_requests_total"].labels(reason=reason)
        self._stats = StatsCollector()
        self.registry.register(self._stats)

    # -- recording ------------------------------------------------------------------------
    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        hist = self._histograms[name]
        (hist.labels(**labels) if labels else hist).observe(value)

    def reject(self, reason: str) -> None:
        """Count a refused request; ``reason`` is one of :data:`REJECT_REASONS`."""
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; use one of {', '.join(REJECT_REASONS)}")
        self.inc("ragqa_rejected_requests_total", reason=reason)

    def record_generation(self, tokens: int, seconds: float) -> None:
        """One answer's generated tokens and generation time (for tokens/s)."""
        self.inc("ragqa_generated_tokens_total", float(tokens))
        self.inc("ragqa_generation_seconds_total", max(0.0, seconds))

    def observe_step(self, rows: int, seconds: float) -> None:
        """One batched decode step of the scheduler: its rows and its wall-clock time."""
        self.observe("ragqa_batch_rows", float(rows))
        self.inc("ragqa_decode_seconds_total", max(0.0, seconds))

    def first_token_timer(
        self, on_token: Callable[[str], None] | None, t0: float, *, endpoint: str
    ) -> Callable[[str], None] | None:
        """``on_token`` that also observes the time from ``t0`` (``perf_counter``) to its first call."""
        if on_token is None:
            return None
        seen = False

        def timed(text: str) -> None:
            nonlocal seen
            if not seen:
                seen = True
                self.observe("ragqa_time_to_first_token_seconds", time.perf_counter() - t0, endpoint=endpoint)
            on_token(text)

        return timed

    # -- read at scrape time --------------------------------------------------------------
    def gauge(self, name: str, fn: Callable[[], dict[Labels, float]], text: str | None = None) -> None:
        """A gauge computed at scrape time: ``fn() -> {labels: value}`` with labels as ``(("k", "v"), ...)``."""
        self._stats.gauges[name] = (text or GAUGE_HELP.get(name, name), fn)

    def watch_scheduler(self, stats: StatsFn) -> None:
        """Expose the scheduler's ``stats()`` (keys of :data:`SCHEDULER_STATS`; missing keys are left out)."""
        self._stats.sources["scheduler"] = (stats, SCHEDULER_STATS)

    def watch_prefix_cache(self, stats: StatsFn) -> None:
        """Expose the prefix KV cache's ``stats()`` (keys of :data:`PREFIX_CACHE_STATS`; counters are cumulative)."""

        def with_ratio() -> Mapping[str, float]:
            out = dict(stats())
            if "hits" in out and "misses" in out and "hit_ratio" not in out:
                looked = float(out["hits"]) + float(out["misses"])
                out["hit_ratio"] = float(out["hits"]) / looked if looked else 0.0
            return out

        self._stats.sources["prefix_cache"] = (with_ratio, PREFIX_CACHE_STATS)

    # -- reading --------------------------------------------------------------------------
    def counter_value(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        return generate_latest(self.registry).decode("utf-8")


class MetricsMiddleware:
    """Pure ASGI middleware: request count and latency by route template (not raw path)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        arrived = REQUEST_ARRIVED_AT.set(time.monotonic())
        status = {"code": 500}

        async def _send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            REQUEST_ARRIVED_AT.reset(arrived)
            template = route_label(scope)
            method = method_label(scope.get("method", ""))
            self.metrics.inc("ragqa_http_requests_total", method=method, route=template, status=str(status["code"]))
            self.metrics.observe(
                "ragqa_http_request_duration_seconds", time.perf_counter() - t0, method=method, route=template
            )
