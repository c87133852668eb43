"""Per-API-key rate limits and quotas (the ``limits`` library, counted in memory), as route dependencies.

:class:`RateLimiter` holds the counters of one app (``app.state.limiter``, built by
:func:`api.app.create_app` from :class:`~api.settings.LimitsConfig`). The routes that cost model
time declare :data:`QuestionLimit` (``/v1/ask``, ``/v1/chat/completions``) or :data:`UploadLimit`
(uploads). Over a limit the request gets 429 with ``Retry-After`` (seconds until a slot frees)
and the API's error body. Every limit is off until configured.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, Request

from api.deps import KeyDep
from api.errors import ApiError
from api.metrics import Metrics
from api.settings import LimitsConfig

Scope = Literal["ask", "upload"]
Reason = Literal["rate_limited", "quota"]


class TooManyRequests(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, code: str, retry_after_s: int) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _Rule:
    """One configured limit: what it counts, the parsed limit, its strategy and its rejection reason."""

    setting: str
    text: str
    limit: Any  # limits.RateLimitItem
    strategy: Any  # limits.strategies.RateLimiter
    reason: Reason


class RateLimiter:
    """The rate limits and quotas of one app, per caller (the API key, or the client address without auth)."""

    def __init__(self, config: LimitsConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._rules: dict[Scope, list[_Rule]] = {"ask": [], "upload": []}
        wanted: list[tuple[Scope, str, str | None, str, Reason]] = [
            ("ask", "ask_per_key", config.ask_per_key, config.strategy, "rate_limited"),
            ("ask", "quota_per_key", config.quota_per_key, "fixed-window", "quota"),
            ("upload", "upload_per_key", config.upload_per_key, config.strategy, "rate_limited"),
        ]
        if not any(text for _, _, text, _, _ in wanted):
            return  # off: no storage, no timer thread
        from limits import parse, storage, strategies

        self._storage = storage.MemoryStorage()
        kinds: dict[str, Callable[..., Any]] = {
            "moving-window": strategies.MovingWindowRateLimiter,
            "fixed-window": strategies.FixedWindowRateLimiter,
            "sliding-window-counter": strategies.SlidingWindowCounterRateLimiter,
        }
        built: dict[str, Any] = {}
        for scope, setting, text, kind, reason in wanted:
            if text:
                strategy = built.setdefault(kind, kinds[kind](self._storage))
                self._rules[scope].append(_Rule(setting, text, parse(text), strategy, reason))
        self._lock = threading.Lock()  # hit the rules of one request together, never half of them

    @property
    def enabled(self) -> bool:
        return any(self._rules.values())

    def check(self, scope: Scope, caller: str) -> None:
        """Count one request of ``caller`` against ``scope``'s limits; raises :class:`TooManyRequests` when over one.

        Rules are taken in order (rate limit, then quota); a request refused by one does not count
        against the ones after it.
        """
        rules = self._rules[scope]
        if not rules:
            return
        with self._lock:
            for rule in rules:
                if not rule.strategy.hit(rule.limit, scope, caller):
                    self._refuse(scope, caller, rule)

    def _refuse(self, scope: Scope, caller: str, rule: _Rule) -> None:
        stats = rule.strategy.get_window_stats(rule.limit, scope, caller)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        if self.metrics is not None:
            self.metrics.reject(rule.reason)
        what = "questions" if scope == "ask" else "uploads"
        if rule.reason == "quota":
            raise TooManyRequests(
                f"this key has used its quota of {rule.text} {what}; it renews in {retry} s (limits.{rule.setting})",
                code="quota_exceeded",
                retry_after_s=retry,
            )
        raise TooManyRequests(
            f"too many {what}: this key may make {rule.text}; retry in {retry} s (limits.{rule.setting})",
            code="rate_limited",
            retry_after_s=retry,
        )


def caller_of(request: Request, key_id: str, auth: bool) -> str:
    """Whom a limit counts: the API key, or the client's address when auth is off (everyone is anonymous)."""
    if auth:
        return f"key:{key_id}"
    return f"ip:{request.client.host if request.client else 'unknown'}"


async def limit_questions(request: Request, key: KeyDep) -> None:
    request.app.state.limiter.check("ask", caller_of(request, key.key_id, request.app.state.settings.server.auth))


async def limit_uploads(request: Request, key: KeyDep) -> None:
    request.app.state.limiter.check("upload", caller_of(request, key.key_id, request.app.state.settings.server.auth))


#: Route dependencies: ``@router.post(..., dependencies=[QuestionLimit])``.
QuestionLimit = Depends(limit_questions)
UploadLimit = Depends(limit_uploads)
