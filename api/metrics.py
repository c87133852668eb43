"""Prometheus metrics in the text exposition format (no client library needed).

:class:`Metrics` keeps counters and histograms in memory (thread-safe); :class:`MetricsMiddleware`
counts every HTTP request by method, route template and status and times it to the last byte
sent (streams included). The ingestion worker and the QA service add their own counters.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]

HELP = {
    "ragqa_http_requests_total": ("counter", "HTTP requests by method, route template and status code."),
    "ragqa_http_request_duration_seconds": ("histogram", "HTTP request latency (to the last byte sent)."),
    "ragqa_answers_total": ("counter", "Answers given, by endpoint, mode and whether the system abstained."),
    "ragqa_answer_duration_seconds": ("histogram", "Time to answer a question (retrieval + generation)."),
    "ragqa_ingest_jobs_total": ("counter", "Upload jobs finished, by final status."),
    "ragqa_ingest_files_total": ("counter", "Uploaded files processed, by result (added, replaced, unchanged, failed)."),
    "ragqa_ingest_chunks_total": ("counter", "Chunks written by the ingestion worker."),
    "ragqa_jobs": ("gauge", "Upload jobs by status right now."),
}


def _fmt_labels(labels: Labels) -> str:
    if not labels:
        return ""
    esc = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in labels)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, esc)) + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hists: dict[str, dict[Labels, list[float]]] = defaultdict(dict)  # bucket counts + [sum, count]
        self._gauges: dict[str, Callable[[], dict[Labels, float]]] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            h = self._hists[name].get(key)
            if h is None:
                h = self._hists[name][key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            for i, b in enumerate(LATENCY_BUCKETS):
                if value <= b:
                    h[i] += 1
            h[-2] += value
            h[-1] += 1

    def gauge(self, name: str, fn: Callable[[], dict[Labels, float]]) -> None:
        """Register a gauge computed at scrape time: ``fn() -> {labels: value}``."""
        self._gauges[name] = fn

    def counter_value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []

        def header(name: str) -> None:
            kind, text = HELP.get(name, ("untyped", name))
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            counters = {n: dict(s) for n, s in self._counters.items()}
            hists = {n: {k: list(v) for k, v in s.items()} for n, s in self._hists.items()}
        for name in sorted(counters):
            header(name)
            for labels, v in sorted(counters[name].items()):
                lines.append(f"{name}{_fmt_labels(labels)} {v:g}")
        for name in sorted(hists):
            header(name)
            for labels, h in sorted(hists[name].items()):
                for i, b in enumerate(LATENCY_BUCKETS):
                    lines.append(f"{name}_bucket{_fmt_labels(labels + (('le', f'{b:g}'),))} {h[i]:g}")
                lines.append(f"{name}_bucket{_fmt_labels(labels + (('le', '+Inf'),))} {h[-1]:g}")
                lines.append(f"{name}_sum{_fmt_labels(labels)} {h[-2]:.6f}")
                lines.append(f"{name}_count{_fmt_labels(labels)} {h[-1]:g}")
        for name, fn in sorted(self._gauges.items()):
            try:
                values = fn()
            except Exception:  # a gauge must never break the scrape
                continue
            header(name)
            for labels, v in sorted(values.items()):
                lines.append(f"{name}{_fmt_labels(labels)} {v:g}")
        return "\n".join(lines) + "\n"


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
        status = {"code": 500}

        async def _send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.inc("ragqa_http_requests_total", method=method, route=template, status=str(status["code"]))
            self.metrics.observe("ragqa_http_request_duration_seconds", time.perf_counter() - t0, method=method, route=template)
