"""Continuous batching: one scheduler thread owns the model and decodes many answers at once.

Concurrent requests join a shared decode loop. Every step runs ONE forward of one token per row
over the rows of all active requests (``K`` rows for a RAG-Token answer over K documents, 1 row
for the "stuff" mode), then each request chooses its next token with the same
:class:`rag.decoding.RagTokenStepper` that :func:`rag.decoding.rag_token_generate` uses, so a
batched greedy answer is the solo answer (token ids identical, log-probs to float tolerance).
Between steps, waiting requests are admitted FIFO while rows are free (``max_batch_rows``, at
most ``max_prefills_per_step`` per step). The requests of one adapter admitted in the same step
are prefilled TOGETHER, in one forward over all their rows (:func:`rag.decoding.prefill_many`:
each row = its cached prompt prefix KV + its uncached suffix, left-padded, positions from the
mask, so each row equals its solo prefill); the same forward scores their reference continuation
("I don't know."; requests with different references are prefilled apart), their first tokens are chosen, and their rows
join the batch in one concatenation. A request with its own ``prefill_fn`` is prefilled alone. Chunked prefill
(``max_prefill_tokens``): the cache-missing prompt prefixes of admitted requests are computed
one whole prefix at a time, at most about that many tokens between two decode steps, so a cold
question does not stall the answers already decoding for its whole prefill; the request joins
the batched prefill once all its prefixes are cached. Finished, cancelled and expired requests
leave at once.

Batch layout (TGI v1 "batch concatenate"): one merged :class:`transformers.DynamicCache` per
adapter group, rows right-aligned. On admit the shorter of (merged cache, new cache) is
left-padded along the sequence axis (keys / values of every layer and the attention mask) and
the two are concatenated along the batch axis, one copy per layer (:mod:`rag.kv_cache`); on leave
the remaining rows are kept and leading columns that are padding in every row are dropped. Position ids
stay per row (``cumsum(mask) - 1`` at prefill, +1 per step), so padding never changes a row's
logits. Helpers: :func:`concat_states`, :func:`keep_rows`.

Adapters — per-adapter groups: the requests of one adapter (``None`` = the base model) share a
merged batch; a step runs one forward per group inside ``session(adapter)``, the caller's context
manager that activates the adapter (PEFT ``set_adapter`` / ``disable_adapter()``; pass
``Generator.session``, or :func:`model_session` for a bare model). Groups never mix adapters in a
forward, so it works with any PEFT version and with :mod:`rag.int8_decode` (its
``Int8DecodeLinear`` is wrapped by LoRA like any linear layer). Note: a bf16 model reads its int8
weights only in forwards of at most ``rag.int8_decode.MAX_INT8_ROWS`` token rows; a bigger decode batch
runs on the bf16 weights (correct, but not token-identical to an int8 solo answer; faster per row past
the threshold), and bf16 rounds differently in different batch shapes. A float32 model with the int8 copy
(``int8_decode=on``) reads it in every decode step with per-row activation scales: each linear layer's row
is bit-identical alone or batched, but the int8 rounding of activations amplifies float32's ~1e-7
batch-shape differences (attention over left padding, prefill shapes), so batched answers differ from
solo ones more often than in plain float32, where they are equal (50/50 in ``bench/api_load.py``).

Beam search and other whole-answer jobs (e.g. :func:`rag.decoding.rag_sequence_generate`) run
exclusively in the scheduler thread between two steps (:meth:`Scheduler.submit_call`); a
``strategy="beam"`` request is served that way.

Backpressure: at most ``max_queue`` waiting requests (:class:`QueueFullError` at submit), a
per-request ``deadline_s`` (:class:`DeadlineExceededError`, rows freed at the next step) and
:meth:`RequestHandle.cancel`. Admission by predicted finish time (:mod:`rag.admission`): at most
``max_active_requests`` answers decode at once (the others wait FIFO), so admitted answers finish in
bounded time instead of all slowing down together; the scheduler measures its service rates
(:attr:`Scheduler.rates`: step seconds vs rows, prefill seconds per token, tokens per answer) and,
with ``admission=True``, refuses at submit a request whose predicted finish passes its deadline
(:class:`rag.admission.PredictedLateError`, a :class:`ServerBusyError` with ``retry_after_s``).
An exception in one request (prefill, stream callback, stop rule)
fails that request only; a failed batched forward fails the requests of that forward; the loop
keeps running. :meth:`Scheduler.close` fails whatever is left and joins the thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from transformers.cache_utils import DynamicLayer

from rag.admission import PredictedLateError, Prediction, ServiceRates, Work, predict
from rag.decoding import (
    PrefillState,
    RagTokenOutput,
    RagTokenStepper,
    _advance,
    _check_prompts,
    prefill,
    prefill_many,
    prefill_reference_logprob,
    rag_token_generate,
    rag_token_reference_logprob,
    warm_prefix_cache,
)
from rag.errors import RagError
from rag.kv_cache import PLAIN_LAYER_TYPES, concat_rows, gather_rows
from rag.prefix_cache import PrefixSpec
from rag.serving_errors import DeadlineExceededError as ServingDeadlineError
from rag.serving_errors import ServerBusyError

logger = logging.getLogger(__name__)

__all__ = [
    "DeadlineExceededError",
    "GenerationRequest",
    "ModelSession",
    "PredictedLateError",
    "QueueFullError",
    "RequestCancelledError",
    "RequestHandle",
    "RequestMetrics",
    "Scheduler",
    "SchedulerClosedError",
    "SchedulerError",
    "SchedulerStats",
    "concat_states",
    "keep_rows",
    "model_session",
]

#: ``session(adapter)`` -> a context manager yielding the model with ``adapter`` active (None = base model).
ModelSession = Callable[[str | None], AbstractContextManager[torch.nn.Module]]
PrefillFn = Callable[[torch.nn.Module, Sequence[Sequence[int]]], PrefillState]
PrefixFn = Callable[[torch.nn.Module], PrefixSpec | None]


# --------------------------------------------------------------------------- errors


_Outcome = Literal["completed", "failed", "cancelled", "expired", "refused", "closed"]


class SchedulerError(RagError, RuntimeError):
    """A request could not be served by the scheduler."""


class QueueFullError(ServerBusyError, SchedulerError):
    """The waiting queue is full: retry later (an HTTP server answers 503 with Retry-After)."""

    def __init__(self, message: str) -> None:
        ServerBusyError.__init__(self, message)


class DeadlineExceededError(ServingDeadlineError, SchedulerError):
    """The request's deadline passed before its answer was complete; its rows were freed."""

    def __init__(self, message: str, timeout_s: float | None = None) -> None:
        Exception.__init__(self, message)
        self.timeout_s = timeout_s


class RequestCancelledError(SchedulerError):
    """The request was cancelled (e.g. its client disconnected); its rows were freed."""


class SchedulerClosedError(SchedulerError):
    """The scheduler was closed before (or while) serving the request."""


# --------------------------------------------------------------------------- batch layout helpers


def _layers(state: PrefillState) -> list[DynamicLayer]:
    layers: list[DynamicLayer] = []
    for layer in state.past_key_values.layers:
        if not isinstance(layer, DynamicLayer) or type(layer) not in PLAIN_LAYER_TYPES or not layer.is_initialized:
            raise TypeError(
                f"continuous batching needs plain, filled DynamicLayer caches, got {type(layer).__name__}"
                f"{'' if getattr(layer, 'is_initialized', False) else ' (empty)'}; sliding-window / quantized "
                "caches cannot be concatenated: serve this model without the scheduler."
            )
        layers.append(layer)
    return layers


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values of a filled layer (:func:`_layers` checked that they are set)."""
    k, v = layer.keys, layer.values
    if k is None or v is None:
        raise TypeError("continuous batching needs filled DynamicLayer caches, got an empty one.")
    return k, v


def _pad_mask_left(mask: torch.Tensor, length: int) -> torch.Tensor:
    """``mask`` ``(R, L)`` with ``length - L`` zero (masked) columns in front."""
    return torch.cat([mask.new_zeros((mask.shape[0], length - mask.shape[1])), mask], dim=-1)


def concat_states(first: PrefillState, second: PrefillState) -> PrefillState:
    """Rows of ``first`` then rows of ``second`` in one state (both are consumed: do not reuse them).

    The shorter one is left-padded with masked zero positions to the other's length; each layer's
    keys and values are copied once (:func:`rag.kv_cache.concat_rows`).

    Returns:
        A state of ``R1 + R2`` rows whose cache is ``first``'s cache object, extended.
    """
    if first.past_key_values is second.past_key_values:
        raise ValueError("concat_states needs two different caches.")
    layers1, layers2 = _layers(first), _layers(second)
    if len(layers1) != len(layers2):
        raise ValueError(f"the caches have {len(layers1)} and {len(layers2)} layers: they come from different models.")
    for a, b in zip(layers1, layers2):
        concat_rows(a, b)
    length = max(first.attention_mask.shape[1], second.attention_mask.shape[1])
    mask1, mask2 = _pad_mask_left(first.attention_mask, length), _pad_mask_left(second.attention_mask, length)
    return PrefillState(
        next_logprobs=torch.cat([first.next_logprobs, second.next_logprobs], dim=0),
        past_key_values=first.past_key_values,
        attention_mask=torch.cat([mask1, mask2], dim=0),
        next_positions=torch.cat([first.next_positions, second.next_positions], dim=0),
    )


#: keep_rows drops the leading columns that are padding in every row once there are at least this many: dropping
#: them copies every row (:func:`rag.kv_cache.gather_rows`), keeping them costs each step a little attention.
TRIM_COLUMNS = 32


def keep_rows(state: PrefillState, rows: Sequence[int] | torch.Tensor) -> None:
    """Keep only ``rows`` (in that order), in place, then drop leading columns that are padding in every row
    (when there are at least :data:`TRIM_COLUMNS` of them).

    Each layer's keys and values are copied once (:func:`rag.kv_cache.gather_rows`).

    Args:
        rows: indices into the current ``R`` rows, at least one.
    """
    rows = torch.as_tensor(rows, dtype=torch.long)
    if rows.numel() == 0:
        raise ValueError("keep_rows needs at least one row; drop the whole state instead.")
    rows = rows.to(state.attention_mask.device)
    mask = state.attention_mask.index_select(0, rows)
    used = mask.bool().any(dim=0)  # (L,)
    first = int(torch.argmax(used.to(torch.int8)))  # first column some row uses
    if first < TRIM_COLUMNS:
        first = 0  # a few padding columns stay (masked) rather than every row being copied to drop them
    for layer in _layers(state):
        gather_rows(layer, rows, first)
    state.attention_mask = mask[:, first:]
    state.next_logprobs = state.next_logprobs.index_select(0, rows.to(state.next_logprobs.device))
    state.next_positions = state.next_positions.index_select(0, rows)
    state.scored = None  # the prefill's scores belong to the rows it had


# --------------------------------------------------------------------------- sessions


def model_session(model: torch.nn.Module) -> ModelSession:
    """A :data:`ModelSession` for a bare model or a PEFT model (``Generator.session`` is the served one).

    ``adapter`` None runs the base model (PEFT: inside ``disable_adapter()``); a name calls
    ``set_adapter(name)`` first.
    """

    @contextmanager
    def session(adapter: str | None):
        from peft import PeftModel

        if adapter:
            if not isinstance(model, PeftModel):
                raise ValueError(f"adapter {adapter!r} requested but the model has no PEFT adapters loaded.")
            model.set_adapter(adapter)
            yield model
        elif isinstance(model, PeftModel):
            with model.disable_adapter():
                yield model
        else:
            yield model

    return session


# --------------------------------------------------------------------------- requests


@dataclass
class GenerationRequest:
    """One RAG-Token answer (``K`` documents; the "stuff" mode is K=1 with ``doc_logprobs = zeros(1)``).

    Attributes:
        prompt_ids: K lists of token ids, one prompt per document.
        doc_logprobs: ``(K,)`` log p(z|x).
        max_new_tokens: at most this many tokens.
        eos_token_ids: id(s) that end the answer (kept as its last token); None / [] = never.
        adapter: LoRA adapter name, or None for the base model.
        strategy: ``"greedy"``, ``"sample"`` (``temperature``, ``top_p``, drawn with ``generator``)
            or ``"beam"`` (``num_beams``; served solo between steps, see the module docstring).
        stop: called with the tokens so far after each step; True ends the answer.
        stream_callback: called with each chosen token id (not eos), in the scheduler thread.
        reference_ids: a continuation scored under RAG-Token right after the prefill.
        deadline_s: seconds after :meth:`Scheduler.submit` when the request fails with
            :class:`DeadlineExceededError` (None = no deadline).
        prefix_fn: ``prefix_fn(model) -> PrefixSpec | None``, called in the scheduler thread with the
            adapter active: the cached prompt prefixes the prefill reuses (e.g. ``Generator.prefix_spec``).
            Requests admitted in the same step (same adapter) are prefilled together in ONE forward
            (:func:`rag.decoding.prefill_many`).
        prefill_fn: ``prefill_fn(model, prompt_ids) -> PrefillState``: a custom prefill; such a
            request is prefilled alone, in its own forward (prefer ``prefix_fn``).
    """

    prompt_ids: Sequence[Sequence[int]]
    doc_logprobs: torch.Tensor
    max_new_tokens: int
    eos_token_ids: int | Sequence[int] | None = None
    adapter: str | None = None
    strategy: Literal["greedy", "sample", "beam"] = "greedy"
    temperature: float = 1.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    num_beams: int = 4
    stop: Callable[[list[int]], bool] | None = None
    stream_callback: Callable[[int], None] | None = None
    reference_ids: Sequence[int] | None = None
    deadline_s: float | None = None
    prefill_fn: PrefillFn | None = None
    prefix_fn: PrefixFn | None = None

    def __post_init__(self) -> None:
        _check_prompts(self.prompt_ids, self.doc_logprobs)
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1.")
        if self.strategy not in ("greedy", "sample", "beam"):
            raise ValueError(f"strategy must be 'greedy', 'sample' or 'beam', got {self.strategy!r}.")
        if self.strategy == "sample" and not (self.temperature > 0.0 and 0.0 < self.top_p <= 1.0):
            raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1.")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline_s must be > 0 seconds (or None for no deadline).")
        if self.prefill_fn is not None and self.prefix_fn is not None:
            raise ValueError("pass prefill_fn or prefix_fn, not both (prefix_fn lets the prefill be batched).")

    @property
    def num_rows(self) -> int:
        return len(self.prompt_ids)


@dataclass(frozen=True)
class RequestMetrics:
    """What happened to one request (handed to ``on_request_done``)."""

    outcome: _Outcome
    adapter: str | None
    rows: int
    new_tokens: int
    queued_s: float  # submit -> admission (prefill start)
    ttft_s: float | None  # submit -> first token chosen
    total_s: float  # submit -> done


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot for metrics: gauges (queue, active) and counters since start."""

    queue_depth: int
    active_requests: int
    active_rows: int
    last_step_rows: int
    steps: int
    tokens_generated: int
    completed: int
    failed: int
    cancelled: int
    expired: int
    rejected: int
    refused_late: int = 0  # of ``rejected``: refused because the predicted finish passed the deadline
    max_active_requests: int | None = None
    predicted_wait_s: float | None = None  # a new request like the last one: seconds until admitted (None: cold)
    predicted_finish_s: float | None = None  # ... and until its last token


class RequestHandle:
    """Future-like handle of a submitted request: :meth:`result`, :meth:`cancel`, timings."""

    _ids = itertools.count(1)

    def __init__(
        self,
        scheduler: Scheduler,
        rows: int,
        adapter: str | None,
        deadline_s: float | None,
        *,
        max_new_tokens: int = 0,
        prompt_tokens: int = 0,
    ) -> None:
        self.id = next(self._ids)
        self.rows = rows
        self.max_new_tokens = max_new_tokens  # 0: a solo call (its cost is not predicted)
        self.prompt_tokens = prompt_tokens
        self.adapter = adapter
        self.submitted_at = time.monotonic()
        self.deadline = self.submitted_at + deadline_s if deadline_s is not None else None
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.new_tokens = 0
        self._scheduler = scheduler
        self._future: concurrent.futures.Future = concurrent.futures.Future()
        self._cancel = threading.Event()

    def result(self, timeout: float | None = None) -> Any:
        """The answer (:class:`rag.decoding.RagTokenOutput` for a :class:`GenerationRequest`).

        Raises:
            TimeoutError: not done within ``timeout`` seconds (the request keeps running).
            SchedulerError: cancelled, deadline exceeded, closed; or the request's own error.
        """
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> None:
        """Ask the scheduler to drop this request; its rows are freed before the next step."""
        if not self._future.done():
            self._cancel.set()
            self._scheduler._wake()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def ttft_s(self) -> float | None:
        """Seconds from submit to the first chosen token, once there is one."""
        return None if self.first_token_at is None else self.first_token_at - self.submitted_at

    def add_done_callback(self, fn: Callable[[RequestHandle], None]) -> None:
        self._future.add_done_callback(lambda _f: fn(self))

    def _expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass
class _Job:
    """A queued unit of work: a request to batch, or a solo call (``call(model)``)."""

    handle: RequestHandle
    request: GenerationRequest | None = None
    call: Callable[[torch.nn.Module], Any] | None = None
    spec: PrefixSpec | None = None  # chunked prefill: its prefix spec, once asked for
    warmed: int = 0  # chunked prefill: its prompts whose prefixes were looked up (and computed if missing)


@dataclass
class _Active:
    """A request whose rows are in a group's merged batch; ``pending`` is its token for the next step."""

    handle: RequestHandle
    stepper: RagTokenStepper
    reference: float | None
    pending: int


@dataclass
class _Group:
    """The merged batch of one adapter: rows of ``members`` in order, ``members[i].handle.rows`` each."""

    adapter: str | None
    state: PrefillState
    members: list[_Active] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.state.num_rows


# --------------------------------------------------------------------------- scheduler


class Scheduler:
    """One thread that owns the model and runs a continuous-batching decode loop.

    Args:
        session: ``session(adapter)`` context manager yielding the model with the adapter active
            (``Generator.session``, or :func:`model_session`).
        max_batch_rows: at most this many rows in one forward (all groups together): a request of
            K rows waits until K rows are free; a request of more than this is rejected.
        max_queue: at most this many waiting requests; more raise :class:`QueueFullError`.
        pad_token_id: id written into padding by the default prefill.
        max_prefills_per_step: at most this many admissions between two decode steps (None = as
            many as fit): bounds the pause that prefills put on the answers already decoding.
        max_prefill_tokens: chunked prefill: between two decode steps, compute at most about this many
            tokens of admitted requests' missing (uncached) prompt prefixes, one whole prefix at a
            time (at least one per step); a request joins the batched prefill once all its prefixes
            are cached. None: compute them all at admission (a cache miss of K long prompts then
            pauses every answer already decoding for its whole prefill).
        on_step: ``on_step(rows, seconds)`` after every batched forward (histogram of batch sizes).
        on_request_done: ``on_request_done(RequestMetrics)`` when a request leaves.
        max_active_requests: at most this many requests admitted (prefilling or decoding) at once; the
            others wait FIFO (None: as many as ``max_batch_rows`` holds).
        admission: refuse at submit a request with a deadline whose predicted finish time (times
            ``1 + admission_margin``) passes it (:class:`PredictedLateError`); False: admit every request
            the queue holds. No prediction before the first decode step was measured: then it is admitted.
        admission_margin: the safety factor of that comparison (0.2: the prediction plus 20 %).
    """

    def __init__(
        self,
        session: ModelSession,
        *,
        max_batch_rows: int = 64,
        max_queue: int = 64,
        pad_token_id: int | None = None,
        max_prefills_per_step: int | None = None,
        max_prefill_tokens: int | None = None,
        on_step: Callable[[int, float], None] | None = None,
        on_request_done: Callable[[RequestMetrics], None] | None = None,
        name: str = "rag-scheduler",
        max_active_requests: int | None = None,
        admission: bool = False,
        admission_margin: float = 0.2,
    ) -> None:
        if max_batch_rows < 1 or max_queue < 0:
            raise ValueError("max_batch_rows must be >= 1 and max_queue >= 0.")
        if max_active_requests is not None and max_active_requests < 1:
            raise ValueError("max_active_requests must be >= 1 (or None).")
        if admission_margin < 0:
            raise ValueError("admission_margin must be >= 0.")
        self.max_active_requests = max_active_requests
        self.admission = admission
        self.admission_margin = admission_margin
        self.rates = ServiceRates()
        self._admitted: dict[int, RequestHandle] = {}  # handle id -> handle, from admission until done
        self._probe: RequestHandle | None = None  # the last submitted request: the shape of the predicted-wait gauge
        self._prefill_s = 0.0  # admission seconds not yet attributed to prompt tokens
        if max_prefills_per_step is not None and max_prefills_per_step < 1:
            raise ValueError("max_prefills_per_step must be >= 1 (or None).")
        if max_prefill_tokens is not None and max_prefill_tokens < 1:
            raise ValueError("max_prefill_tokens must be >= 1 (or None).")
        self.max_prefill_tokens = max_prefill_tokens
        self._warming: list[_Job] = []
        self.session = session
        self.max_batch_rows = max_batch_rows
        self.max_queue = max_queue
        self.pad_token_id = pad_token_id
        self.max_prefills_per_step = max_prefills_per_step
        self.on_step = on_step
        self.on_request_done = on_request_done
        self._cv = threading.Condition()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._groups: dict[str | None, _Group] = {}
        self._closing = False
        self._counts: collections.Counter[str] = collections.Counter()
        self._last_step_rows = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue ``request``; returns at once with its handle.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
            ValueError: the request needs more rows than ``max_batch_rows``.
            SchedulerClosedError: after :meth:`close`.
        """
        if request.num_rows > self.max_batch_rows:
            raise ValueError(
                f"the request has {request.num_rows} rows (documents) but max_batch_rows is {self.max_batch_rows}; "
                "raise max_batch_rows or retrieve fewer documents."
            )
        handle = RequestHandle(
            self,
            request.num_rows,
            request.adapter,
            request.deadline_s,
            max_new_tokens=request.max_new_tokens,
            prompt_tokens=sum(len(p) for p in request.prompt_ids),
        )
        if request.strategy == "beam":
            return self._enqueue(_Job(handle, call=functools.partial(self._beam_call, request)))
        return self._enqueue(_Job(handle, request=request))

    def submit_call(
        self, call: Callable[[torch.nn.Module], Any], *, adapter: str | None = None, deadline_s: float | None = None
    ) -> RequestHandle:
        """Queue ``call(model)`` to run alone in the scheduler thread between two steps, with ``adapter``
        active (beam search, RAG-Sequence, rescoring). Its return value is the handle's result."""
        return self._enqueue(_Job(RequestHandle(self, 0, adapter, deadline_s), call=call))

    def stats(self) -> SchedulerStats:
        with self._cv:
            c = self._counts
            probe = self._predict(self._probe) if self._probe is not None else None
            return SchedulerStats(
                queue_depth=len(self._waiting),
                active_requests=c["active_requests"],
                active_rows=c["active_rows"],
                last_step_rows=self._last_step_rows,
                steps=c["steps"],
                tokens_generated=c["tokens"],
                completed=c["completed"],
                failed=c["failed"],
                cancelled=c["cancelled"],
                expired=c["expired"],
                rejected=c["rejected"],
                refused_late=c["refused_late"],
                max_active_requests=self.max_active_requests,
                predicted_wait_s=None if probe is None else probe.wait_s,
                predicted_finish_s=None if probe is None else probe.finish_s,
            )

    def predict(self, request: GenerationRequest) -> Prediction | None:
        """When ``request``, submitted now, would be admitted and finish (seconds from now; None: nothing
        measured yet). See :func:`rag.admission.predict`."""
        handle = RequestHandle(
            self,
            request.num_rows,
            request.adapter,
            None,
            max_new_tokens=request.max_new_tokens,
            prompt_tokens=sum(len(p) for p in request.prompt_ids),
        )
        with self._cv:
            return self._predict(handle)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the loop after the current step; waiting and active requests fail with
        :class:`SchedulerClosedError`. Idempotent."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the scheduler thread did not stop within %s s (a forward is still running)", timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queue ------------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _enqueue(self, job: _Job) -> RequestHandle:
        with self._cv:
            if self._closing:
                raise SchedulerClosedError("the scheduler is closed; no new requests are accepted.")
            if len(self._waiting) >= self.max_queue:
                self._counts["rejected"] += 1
                raise QueueFullError(
                    f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue}); retry later."
                )
            if job.handle.max_new_tokens:
                self._probe = job.handle
            if self.admission and (late := self._late(job.handle, list(self._waiting), job.handle.submitted_at)):
                raise late
            self._waiting.append(job)
            self._cv.notify_all()
        return job.handle

    def _work(self, handle: RequestHandle) -> Work:
        """What is left of ``handle``'s answer, as the predictor sees it."""
        if not handle.max_new_tokens:  # a solo call: its cost is unknown
            return Work(rows=0, steps=0.0)
        expected = self.rates.expected_tokens(handle.max_new_tokens)
        if handle.first_token_at is None:  # not prefilled yet: the prefill chooses the first token
            return Work(handle.rows, max(0.0, expected - 1.0), handle.prompt_tokens)
        return Work(handle.rows, max(1.0, expected - handle.new_tokens))

    def _predict(self, handle: RequestHandle, ahead: list[_Job] | None = None) -> Prediction | None:
        """:func:`rag.admission.predict` for ``handle`` queued behind the answers admitted now and ``ahead``
        (default: every other waiting request); hold ``_cv``."""
        if not self.rates.measured:
            return None
        ahead = [j for j in self._waiting if j.handle is not handle] if ahead is None else ahead
        return predict(
            [self._work(h) for h in self._admitted.values()],
            [self._work(j.handle) for j in ahead],
            Work(handle.rows, max(0.0, self.rates.expected_tokens(handle.max_new_tokens) - 1.0), handle.prompt_tokens),
            rates=self.rates,
            max_active=self.max_active_requests,
            max_rows=self.max_batch_rows,
        )

    def _late(self, handle: RequestHandle, ahead: list[_Job], now: float) -> PredictedLateError | None:
        """The refusal of ``handle`` (counted) when, queued behind the admitted answers and ``ahead``, its
        predicted finish (times ``1 + admission_margin``) passes its deadline; None when it fits, when it has
        no deadline or is a solo call, or when nothing is measured yet (cold: admit). Hold ``_cv``."""
        if handle.deadline is None or not handle.max_new_tokens:
            return None
        prediction = self._predict(handle, ahead)
        if prediction is None:
            return None
        budget = handle.deadline - now
        needed = prediction.finish_s * (1.0 + self.admission_margin)
        if needed <= budget:
            return None
        self._counts["rejected"] += 1
        self._counts["refused_late"] += 1
        retry = min(max(1.0, needed - budget), max(1.0, budget)) if math.isfinite(needed) else max(1.0, budget)
        return PredictedLateError(
            f"the server is busy: this answer would take about {prediction.finish_s:.0f} s "
            f"({prediction.wait_s:.0f} s waiting behind {len(ahead) + len(self._admitted)} answers), more than "
            f"the {budget:.0f} s left of its deadline; retry in {math.ceil(retry)} s",
            retry_after_s=retry,
            predicted_s=prediction.finish_s,
        )

    def _next_admissions(self) -> list[_Job] | None:
        """Block until there is work; return the jobs to admit now (FIFO while rows are free), None to stop."""
        with self._cv:
            while not self._closing and not self._waiting and not self._groups and not self._warming:
                self._cv.wait()
            if self._closing:
                return None
            now = time.monotonic()
            for job in [j for j in self._waiting if j.handle.cancel_requested or j.handle._expired(now)]:
                self._waiting.remove(job)
                self._finish_dropped(job.handle, now)
            jobs: list[_Job] = []
            free = self.max_batch_rows - self._counts["active_rows"]
            limit, cap = self.max_prefills_per_step, self.max_active_requests
            while (
                self._waiting
                and self._waiting[0].handle.rows <= free
                and (limit is None or len(jobs) < limit)
                and (cap is None or self._counts["active_requests"] < cap)
            ):
                job = self._waiting.popleft()
                if self.admission and (late := self._late(job.handle, [], now)):
                    # it fitted when it arrived, but the answers ahead took longer than predicted: refuse it now
                    # rather than spend rows on an answer that would miss its deadline
                    self._finish(job.handle, "refused", error=late)
                    continue
                free -= job.handle.rows
                self._counts["active_rows"] += job.handle.rows
                self._counts["active_requests"] += 1
                self._admitted[job.handle.id] = job.handle
                jobs.append(job)
            return jobs

    # -- loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while (jobs := self._next_admissions()) is not None:
                start = time.perf_counter()
                if self.max_prefill_tokens is not None:
                    jobs = self._warm(jobs)
                self._admit_all(jobs)
                self._observe_prefill(jobs, time.perf_counter() - start)
                self._drop_cancelled()
                for group in list(self._groups.values()):
                    self._step(group)
        except BaseException:  # a bug in the loop itself: fail everything rather than hang the callers
            logger.exception("the scheduler loop crashed")
            raise
        finally:
            self._shutdown()

    def _observe_prefill(self, jobs: list[_Job], seconds: float) -> None:
        """Attribute this step's admission time (warming included) to the prompt tokens admitted in it."""
        self._prefill_s += seconds
        tokens = sum(job.handle.prompt_tokens for job in jobs)
        if tokens:
            self.rates.observe_prefill(tokens, self._prefill_s)
            self._prefill_s = 0.0

    def _shutdown(self) -> None:
        with self._cv:
            self._closing = True
            waiting, self._waiting = list(self._waiting), collections.deque()
        error = SchedulerClosedError("the scheduler was closed before the answer was complete.")
        warming, self._warming = self._warming, []
        for job in waiting + warming:
            self._finish(job.handle, "closed", error=error)
        for group in list(self._groups.values()):
            for member in group.members:
                self._finish(member.handle, "closed", error=error)
        self._groups.clear()

    def _warm(self, jobs: list[_Job]) -> list[_Job]:
        """Chunked prefill: compute missing prompt prefixes of the admitted requests (oldest first) within
        ``max_prefill_tokens``; return the jobs ready to prefill now, keep the others for later steps."""
        self._warming.extend(jobs)
        budget = cast(int, self.max_prefill_tokens)
        ready: list[_Job] = []
        later: list[_Job] = []
        now = time.monotonic()
        for job in self._warming:
            request, handle = job.request, job.handle
            if request is None or request.prefix_fn is None or handle.cancel_requested or handle._expired(now):
                ready.append(job)  # nothing to warm; _admit drops a cancelled / expired one
                continue
            try:
                with self.session(request.adapter) as model:
                    spec = job.spec or request.prefix_fn(model)
                    if spec is None:
                        ready.append(job)
                        continue
                    job.spec = spec
                    spent, job.warmed = warm_prefix_cache(model, request.prompt_ids, spec, budget, job.warmed)
            except Exception as exc:  # this request's prefixes only
                logger.warning("request %d failed at admission: %s", handle.id, exc)
                handle.admitted_at = now
                self._finish(handle, "failed", error=exc)
                continue
            budget -= spent
            (ready if job.warmed == request.num_rows else later).append(job)
        self._warming = later
        return ready

    def _prefix(self, job: _Job, model: torch.nn.Module) -> PrefixSpec | None:
        """The prefix spec of a request's prefill (its lookups not counted again after :meth:`_warm`)."""
        if job.spec is not None:
            return dataclasses.replace(job.spec, count_lookups=False)
        request = cast(GenerationRequest, job.request)
        return request.prefix_fn(model) if request.prefix_fn is not None else None

    def _admit_all(self, jobs: list[_Job]) -> None:
        """Admit ``jobs``: solo calls and ``prefill_fn`` requests one by one, the other requests of
        one adapter prefilled together in one forward (:meth:`_admit_batch`)."""
        by_adapter: dict[str | None, dict[tuple[int, ...], list[_Job]]] = {}
        for job in jobs:
            if job.request is not None and job.request.prefill_fn is None:
                by_reference = by_adapter.setdefault(job.request.adapter, {})
                by_reference.setdefault(tuple(job.request.reference_ids or ()), []).append(job)
            else:
                self._admit(job)
        for adapter, by_reference in by_adapter.items():
            # one forward scores one reference: requests without one ride along with the first that has one
            unscored = by_reference.pop((), [])
            batches = list(by_reference.values()) or [[]]
            batches[0].extend(unscored)
            for batch in batches:
                if len(batch) == 1:
                    self._admit(batch[0])
                else:
                    self._admit_batch(adapter, batch)

    def _admit_batch(self, adapter: str | None, jobs: list[_Job]) -> None:
        """Prefill the requests ``jobs`` (all of ``adapter``; one reference continuation among them, or none) in
        ONE forward that also scores the reference, choose their first tokens and append the rows of those that go
        on to the adapter's group."""
        now = time.monotonic()
        live: list[_Job] = []
        for job in jobs:
            job.handle.admitted_at = now
            if job.handle.cancel_requested or job.handle._expired(now):
                self._finish_dropped(job.handle, now)
            else:
                live.append(job)
        if len(live) < 2:
            for job in live:
                job.handle.admitted_at = None  # _admit sets it again
                self._admit(job)
            return
        try:
            with self.session(adapter) as model:
                specs: list[PrefixSpec | None] = []
                ready: list[_Job] = []
                for job in live:
                    try:
                        specs.append(self._prefix(job, model))
                    except Exception as exc:  # this request's prefix lookup only
                        logger.warning("request %d failed at admission: %s", job.handle.id, exc)
                        self._finish(job.handle, "failed", error=exc)
                    else:
                        ready.append(job)
                if not ready:
                    return
                requests = [cast(GenerationRequest, job.request) for job in ready]
                state = prefill_many(
                    model,
                    [(r.prompt_ids, spec) for r, spec in zip(requests, specs)],
                    pad_token_id=self.pad_token_id,
                    score_ids=next((r.reference_ids for r in requests if r.reference_ids), None),  # at most one
                )
                docs = [r.doc_logprobs.to(device=state.next_logprobs.device, dtype=torch.float32) for r in requests]
                scored = state.scored
                starts = list(itertools.accumulate((r.num_rows for r in requests), initial=0))
                references = [
                    prefill_reference_logprob(scored[starts[i] : starts[i + 1]], doc)
                    if scored is not None and request.reference_ids
                    else None
                    for i, (request, doc) in enumerate(zip(requests, docs))
                ]
        except Exception as exc:  # find the culprit: admit each alone, so only its own request fails
            logger.warning("a batched prefill of %d requests failed (%s); admitting them one by one", len(live), exc)
            for job in live:
                if not job.handle.done():
                    job.handle.admitted_at = None
                    self._admit(job)
            return
        members: list[_Active] = []
        rows: list[int] = []
        offset = 0
        for job, request, doc, reference in zip(ready, requests, docs, references):
            handle, k = job.handle, request.num_rows
            try:
                stepper = self._stepper(request, doc)
                token = self._choose(handle, stepper, state.next_logprobs[offset : offset + k])
            except Exception as exc:
                logger.warning("request %d failed at admission: %s", handle.id, exc)
                self._finish(handle, "failed", error=exc)
            else:
                if token is None:
                    self._finish(handle, "completed", value=stepper.output(reference))
                else:
                    members.append(_Active(handle, stepper, reference, token))
                    rows.extend(range(offset, offset + k))
            offset += k
        if not members:
            return
        if len(rows) < state.num_rows:
            keep_rows(state, rows)
        self._join(adapter, state, members)

    def _stepper(self, request: GenerationRequest, doc: torch.Tensor) -> RagTokenStepper:
        return RagTokenStepper(
            doc,
            max_new_tokens=request.max_new_tokens,
            eos_token_ids=request.eos_token_ids,
            strategy=cast(Literal["greedy", "sample"], request.strategy),  # beam went to submit_call
            temperature=request.temperature,
            top_p=request.top_p,
            generator=request.generator,
            stream_callback=request.stream_callback,
            stop=request.stop,
        )

    def _join(self, adapter: str | None, state: PrefillState, members: list[_Active]) -> None:
        """Append ``state``'s rows (those of ``members``, in order) to the group of ``adapter``."""
        group = self._groups.get(adapter)
        if group is None:
            self._groups[adapter] = _Group(adapter, state, members)
            return
        try:
            group.state = concat_states(group.state, state)
        except Exception as exc:  # e.g. a prefill_fn returning an incompatible cache
            logger.warning("requests %s cannot join the batch: %s", [m.handle.id for m in members], exc)
            for member in members:
                self._finish(member.handle, "failed", error=exc)
            return
        group.members.extend(members)

    def _admit(self, job: _Job) -> None:
        handle = job.handle
        handle.admitted_at = now = time.monotonic()
        if handle.cancel_requested or handle._expired(now):
            self._finish_dropped(handle, now)
            return
        if job.call is not None:
            try:
                with self.session(handle.adapter) as model:
                    value = job.call(model)
            except Exception as exc:  # the error belongs to this request only
                logger.warning("request %d failed: %s", handle.id, exc)
                self._finish(handle, "failed", error=exc)
            else:
                self._finish(handle, "completed", value=value)
            return
        request = job.request
        if request is None:  # a _Job always has a request or a call
            self._finish(handle, "failed", error=SchedulerError(f"request {handle.id} has nothing to run."))
            return
        try:
            with self.session(request.adapter) as model:
                state = self._prefill(job, model)
                doc = request.doc_logprobs.to(device=state.next_logprobs.device, dtype=torch.float32)
                reference = prefill_reference_logprob(state.scored, doc)
                if reference is None and request.reference_ids:  # a prefill_fn's state scored nothing
                    reference = rag_token_reference_logprob(model, state, request.reference_ids, doc)
            stepper = self._stepper(request, doc)
            token = self._choose(handle, stepper, state.next_logprobs)
        except Exception as exc:
            logger.warning("request %d failed at admission: %s", handle.id, exc)
            self._finish(handle, "failed", error=exc)
            return
        if token is None:
            self._finish(handle, "completed", value=stepper.output(reference))
            return
        self._join(request.adapter, state, [_Active(handle, stepper, reference, token)])

    def _prefill(self, job: _Job, model: torch.nn.Module) -> PrefillState:
        request = cast(GenerationRequest, job.request)
        if request.prefill_fn is not None:
            state = request.prefill_fn(model, request.prompt_ids)
        else:
            prefix = self._prefix(job, model)
            state = prefill(
                model,
                request.prompt_ids,
                pad_token_id=self.pad_token_id,
                prefix=prefix,
                score_ids=request.reference_ids or None,
            )
        if state.num_rows != request.num_rows:
            raise ValueError(f"prefill_fn returned {state.num_rows} rows for {request.num_rows} prompts.")
        return state

    def _choose(self, handle: RequestHandle, stepper: RagTokenStepper, next_logprobs: torch.Tensor) -> int | None:
        token = stepper.step(next_logprobs)
        handle.new_tokens += 1
        if handle.first_token_at is None:
            handle.first_token_at = time.monotonic()
        with self._cv:
            self._counts["tokens"] += 1
        return token

    def _beam_call(self, request: GenerationRequest, model: torch.nn.Module) -> RagTokenOutput:
        prefill_fn = request.prefill_fn
        if prefill_fn is not None:
            raise ValueError("beam search requests run rag_token_generate, which has no prefill_fn; drop prefill_fn.")
        return rag_token_generate(
            model,
            request.prompt_ids,
            request.doc_logprobs,
            max_new_tokens=request.max_new_tokens,
            eos_token_ids=request.eos_token_ids,
            strategy="beam",
            num_beams=request.num_beams,
            pad_token_id=self.pad_token_id,
            reference_ids=request.reference_ids,
        )

    def _drop_cancelled(self) -> None:
        now = time.monotonic()
        for group in list(self._groups.values()):
            gone = [m for m in group.members if m.handle.cancel_requested or m.handle._expired(now)]
            if gone:
                self._remove(group, {id(m) for m in gone})
                for member in gone:
                    self._finish_dropped(member.handle, now)

    def _step(self, group: _Group) -> None:
        """One forward of every row of ``group``, then every member chooses its next token."""
        tokens = torch.cat([torch.full((m.handle.rows,), m.pending, dtype=torch.long) for m in group.members])
        start = time.perf_counter()
        try:
            with self.session(group.adapter) as model:
                _advance(model, group.state, tokens)
        except Exception as exc:  # fail this forward's requests, keep serving
            logger.exception("a batched forward of %d rows (adapter %s) failed", group.rows, group.adapter)
            del self._groups[group.adapter]
            error = SchedulerError(f"the batched forward failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            for member in group.members:
                self._finish(member.handle, "failed", error=error)
            return
        seconds = time.perf_counter() - start
        self.rates.observe_step(group.rows, seconds)
        with self._cv:
            self._last_step_rows = group.rows
            self._counts["steps"] += 1
        if self.on_step is not None:
            self.on_step(group.rows, seconds)
        offset = 0
        leaving: set[int] = set()
        finished: list[tuple[_Active, _Outcome, Exception | None]] = []
        for member in group.members:
            rows = member.handle.rows
            try:
                token = self._choose(member.handle, member.stepper, group.state.next_logprobs[offset : offset + rows])
            except Exception as exc:  # a stream callback or stop rule of this request
                logger.warning("request %d failed: %s", member.handle.id, exc)
                leaving.add(id(member))
                finished.append((member, "failed", exc))
            else:
                if token is None:
                    leaving.add(id(member))
                    finished.append((member, "completed", None))
                else:
                    member.pending = token
            offset += rows
        if leaving:
            self._remove(group, leaving)
        for member, outcome, failure in finished:
            value = member.stepper.output(member.reference) if outcome == "completed" else None
            self._finish(member.handle, outcome, value=value, error=failure)

    def _remove(self, group: _Group, leaving: set[int]) -> None:
        """Drop the rows of the members whose ``id()`` is in ``leaving``."""
        rows: list[int] = []
        kept: list[_Active] = []
        offset = 0
        for member in group.members:
            if id(member) not in leaving:
                kept.append(member)
                rows.extend(range(offset, offset + member.handle.rows))
            offset += member.handle.rows
        group.members = kept
        if kept:
            keep_rows(group.state, rows)
        else:
            del self._groups[group.adapter]

    # -- completion -------------------------------------------------------------------------
    def _finish_dropped(self, handle: RequestHandle, now: float) -> None:
        if handle.cancel_requested:
            self._finish(handle, "cancelled", error=RequestCancelledError(f"request {handle.id} was cancelled."))
        else:
            waited = now - handle.submitted_at
            self._finish(
                handle,
                "expired",
                error=DeadlineExceededError(
                    f"request {handle.id} passed its deadline after {waited:.2f} s "
                    f"({handle.new_tokens} tokens generated); raise deadline_s or retry when the server is less busy."
                ),
            )

    def _finish(
        self, handle: RequestHandle, outcome: _Outcome, *, value: Any = None, error: BaseException | None = None
    ) -> None:
        now = time.monotonic()
        with self._cv:
            if handle.admitted_at is not None:  # it held rows (or was being admitted)
                self._counts["active_rows"] -= handle.rows
                self._counts["active_requests"] -= 1
            self._admitted.pop(handle.id, None)
            self._counts["failed" if outcome == "closed" else outcome] += 1
        if outcome == "completed" and handle.max_new_tokens:
            self.rates.observe_answer(handle.max_new_tokens, handle.new_tokens)
        if error is not None:
            handle._future.set_exception(error)
        else:
            handle._future.set_result(value)
        if self.on_request_done is not None:
            try:
                self.on_request_done(
                    RequestMetrics(
                        outcome=outcome,
                        adapter=handle.adapter,
                        rows=handle.rows,
                        new_tokens=handle.new_tokens,
                        queued_s=(handle.admitted_at or now) - handle.submitted_at,
                        ttft_s=handle.ttft_s,
                        total_s=now - handle.submitted_at,
                    )
                )
            except Exception:  # a metrics hook must not break serving
                logger.exception("on_request_done raised")
