"""An LRU of prompt-prefix KV states under a byte budget (exact reuse of prefill work).

A RAG-Token / RAG-Sequence per-document prompt is ``[system][context chunk z_k][question]``.
Everything before the question is the same for every question that retrieves z_k, so the keys and
values of those positions (which depend only on the tokens at and before them: attention is causal)
can be computed once and reused; a question then prefills only its ~20 suffix tokens. The idea is
the one of RAGCache (Jin et al. 2024) and vLLM's automatic prefix caching.

An entry is the KV state of ONE prompt prefix: per decoder layer a key and a value tensor of shape
``(num_kv_heads, P, head_dim)`` (batch axis dropped, no padding). Entries are keyed by
``(namespace, sha256 of the prefix token ids)``; the namespace names everything else the KV depends
on: model, adapter and its weights, dtype, device and prompt template version
(:meth:`rag.generator.Generator.cache_namespace`). A different namespace or different token ids can
therefore never hit, so a stale entry is never returned.

The cache is thread-safe: the model runs in one thread, statistics are read from others.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["CacheStats", "PrefixKV", "PrefixKVCache", "PrefixSpec", "prefix_key"]

PrefixKV = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""Per layer ``(keys, values)``, each ``(num_kv_heads, P, head_dim)``."""


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of the cache counters (``hit_rate`` = hits / lookups, 0 before any lookup)."""

    hits: int
    misses: int
    entries: int
    bytes: int
    evictions: int
    max_bytes: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def prefix_key(namespace: Hashable, token_ids: Sequence[int]) -> tuple[Hashable, str]:
    """The cache key of a prefix: ``(namespace, sha256 of the token ids as little-endian int64)``."""
    digest = hashlib.sha256(torch.as_tensor(list(token_ids), dtype=torch.int64).numpy().tobytes()).hexdigest()
    return namespace, digest


def kv_nbytes(kv: PrefixKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PrefixKVCache:
    """LRU of prefix KV states, evicting the least recently used until the total fits ``max_bytes``.

    An entry larger than ``max_bytes`` is not stored; ``max_bytes=0`` stores nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0 turns the cache off), got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[Hashable, str], tuple[PrefixKV, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, namespace: Hashable, token_ids: Sequence[int], *, count: bool = True) -> PrefixKV | None:
        """The stored KV of ``token_ids`` under ``namespace`` (marked most recently used), or None.
        ``count=False``: a lookup already counted once (hit / miss statistics unchanged)."""
        key = prefix_key(namespace, token_ids)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += count
                return None
            self._entries.move_to_end(key)
            self._hits += count
            return entry[0]

    def __contains__(self, item: tuple[Hashable, Sequence[int]]) -> bool:
        """``(namespace, token_ids) in cache``: stored or not, without counting or reordering."""
        namespace, token_ids = item
        key = prefix_key(namespace, token_ids)
        with self._lock:
            return key in self._entries

    def put(self, namespace: Hashable, token_ids: Sequence[int], kv: PrefixKV) -> bool:
        """Store ``kv`` (the caller must not modify its tensors afterwards); False when it is larger
        than the whole budget. Evicts least-recently-used entries until the total fits."""
        key = prefix_key(namespace, token_ids)
        size = kv_nbytes(kv)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return False
            while self._entries and self._bytes + size > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1
            self._entries[key] = (kv, size)
            self._bytes += size
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits, self._misses, len(self._entries), self._bytes, self._evictions, self.max_bytes
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass(frozen=True)
class PrefixSpec:
    """How :func:`rag.decoding.prefill` may reuse cached prefixes of its K prompts.

    Attributes:
        cache: where prefix KV states live.
        namespace: everything besides the token ids that the KV depends on
            (:meth:`rag.generator.Generator.cache_namespace`).
        lengths: ``K`` ints, ``lengths[k]`` = number of leading tokens of prompt k that are cacheable
            (the part before the question; 0 = nothing).
        shared_lengths: optional ``K`` ints, a shorter prefix of each cacheable part shared by many prompts
            (the system prompt); it is cached once and longer prefixes are computed by continuing from it.
        count_lookups: False when the lookups were already counted (the scheduler's chunked prefill
            looks the prefixes up once while computing the missing ones, then prefills).
    """

    cache: PrefixKVCache
    namespace: Hashable
    lengths: Sequence[int]
    shared_lengths: Sequence[int] | None = None
    count_lookups: bool = True
