"""RAG-Sequence and RAG-Token decoding on a decoder-only causal LM, with KV caches.

Setting (Lewis et al. 2020): a question x, K retrieved documents with log-posterior
``doc_logprobs`` (shape ``(K,)``, log p(z|x)), and one chat prompt per document,
``prompt_ids[k]`` (token ids of document k + the question; lengths differ). The causal LM gives
p(y_i | x, z_k, y_<i) by reading ``prompt_ids[k] + y_<i``.

Batching: the K prompts run as ONE left-padded batch. Position ids are computed from the
attention mask (``cumsum(mask) - 1``), so a padded row gives the same logits as its prompt run
alone (tested at float32 tolerance). Every decoding step is then one forward of ``R`` rows of one
token against the shared :class:`transformers.DynamicCache` (``R = K`` for greedy / sampling,
``R = B*K`` for beam search, row ``b*K + k`` = beam b under document k).

Cache API (transformers 5.x): ``DynamicCache(config=...)`` holds one layer object per decoder layer;
``Cache.reorder_cache(idx)`` does an ``index_select`` on the batch axis of every layer (the index may
repeat rows or change the batch size — used to expand and reorder beams), and
``Cache.batch_repeat_interleave(n)`` repeats every row ``n`` times in place. Our caches' plain
layers are :class:`rag.kv_cache.InPlaceAppendLayer`: a decode step writes its token into spare
columns instead of copying the whole cache.

The maths lives in :mod:`rag.marginalize`; this module only runs the model.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rag.kv_cache import PLAIN_LAYER_TYPES, new_cache
from rag.marginalize import (
    rag_sequence_doc_posterior,
    rag_sequence_fast_logprob,
    rag_sequence_logprob,
    rag_token_next_logprobs,
    rag_token_sequence_logprob,
    token_contributions,
)
from rag.prefix_cache import PrefixKV, PrefixSpec

logger = logging.getLogger(__name__)

__all__ = [
    "PrefillState",
    "RagSequenceHypothesis",
    "RagTokenOutput",
    "RagTokenStepper",
    "advance",
    "choose_rag_token",
    "left_pad",
    "prefill",
    "prefill_many",
    "warm_prefix_cache",
    "rag_sequence_generate",
    "rag_sequence_sample",
    "rag_token_generate",
    "prefill_reference_logprob",
    "rag_token_reference_logprob",
    "score_continuations",
]


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class RagSequenceHypothesis:
    """One ranked RAG-Sequence answer.

    Attributes:
        token_ids: generated ids, including the eos token when the answer stopped on one.
        logprob: marginal log p(y|x) (thorough), or its fast-decoding approximation.
        doc_posterior: ``K`` floats, p(z_k | x, y) — the citation weights of this answer
            (fast decoding: 0 for documents that did not generate it).
        reference_logprob: marginal log p(reference|x) of the ``reference_ids`` passed to
            :func:`rag_sequence_generate` (thorough decoding), the same on every hypothesis; or None.
        token_logprobs: ``(K, T)`` log p(y_i | x, z_k, y_<i) of this answer's ``T`` tokens under each
            document (per-sentence attribution, :mod:`rag.attribution`); fast decoding knows them only
            for the documents that generated the answer and holds ``-inf`` for the others.
    """

    token_ids: list[int]
    logprob: float
    doc_posterior: list[float]
    reference_logprob: float | None = None
    token_logprobs: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RagTokenOutput:
    """The RAG-Token answer.

    Attributes:
        token_ids: generated ids, including the eos token when the answer stopped on one.
        logprob: log p(y|x) under RAG-Token, ``sum_i log sum_k p(z_k|x) p(y_i|x,z_k,y_<i)``
            (of the model's distribution, before temperature / top-p).
        doc_contributions: ``K`` floats summing to 1, each document's share of the chosen
            tokens' probability averaged over tokens (see :func:`rag.marginalize.token_contributions`).
        reference_logprob: log p(reference|x) under RAG-Token of the ``reference_ids`` passed to
            :func:`rag_token_generate` (e.g. "I don't know."), or None.
        token_logprobs: ``(K, T)`` log p(y_i | x, z_k, y_<i) of the chosen tokens under each document
            (per-sentence attribution, :mod:`rag.attribution`).
    """

    token_ids: list[int]
    logprob: float
    doc_contributions: list[float]
    reference_logprob: float | None = None
    token_logprobs: torch.Tensor | None = dataclasses.field(default=None, compare=False, repr=False)


# --------------------------------------------------------------------------- batching helpers


def _model_device(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next(model.parameters()).dtype


def _pad_token_id(model: torch.nn.Module, pad_token_id: int | None) -> int:
    """The id written into padded positions; its value never matters because it is masked."""
    if pad_token_id is not None:
        return pad_token_id
    config_pad = getattr(model.config, "pad_token_id", None)
    return int(config_pad) if config_pad is not None else 0


def _eos_list(eos_token_ids: int | Collection[int] | None) -> list[int]:
    if eos_token_ids is None:
        return []
    if isinstance(eos_token_ids, int):
        return [eos_token_ids]
    return [int(t) for t in eos_token_ids]


def _check_prompts(prompt_ids: Sequence[Sequence[int]], doc_logprobs: torch.Tensor | None = None) -> None:
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: pass one prompt (list of token ids) per retrieved document.")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token; render the chat template before calling.")
    if doc_logprobs is not None and tuple(doc_logprobs.shape) != (len(prompt_ids),):
        raise ValueError(
            f"doc_logprobs has shape {tuple(doc_logprobs.shape)} but there are {len(prompt_ids)} prompts; "
            "pass one log p(z|x) per document, shape (K,)."
        )


def left_pad(
    prompt_ids: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad K prompts into one batch.

    Args:
        prompt_ids: K lists of token ids (lengths L_k).
        pad_token_id: id written into the padding.

    Returns:
        ``input_ids`` ``(K, L)`` long and ``attention_mask`` ``(K, L)`` long (0 on padding),
        with ``L = max_k L_k``.
    """
    length = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        if len(ids):
            input_ids[row, length - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            attention_mask[row, length - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``(R, L)`` that count only the real tokens: ``cumsum(mask) - 1`` (0 on left padding)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _new_cache(model: torch.nn.Module) -> DynamicCache:
    """An empty cache for ``model`` (``nn.Module.__getattr__`` types ``model.config`` as Tensor | Module)."""
    config: Any = model.config
    return new_cache(config)


def _dynamic_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The layers of a cache built for a plain-KV model (see :func:`_plain_dynamic_cache`)."""
    return cast(list[DynamicLayer], list(cache.layers))


@functools.cache
def _accepts_logits_to_keep(model_class: type[torch.nn.Module]) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


@dataclass
class PrefillState:
    """R left-padded rows decoded in lockstep against one KV cache.

    Attributes:
        next_logprobs: ``(R, V)`` float32, log p(next token | row's prompt and tokens so far).
        past_key_values: the model's cache, batch size R.
        attention_mask: ``(R, L + t)`` long, 0 on the left padding.
        next_positions: ``(R, 1)`` long, position id of the next token of each row.
        scored: ``(R, T)`` float32, teacher-forced log p(ids_i | prompt_r, ids_<i) of the fixed continuation
            ``ids`` a prefill was asked to score (``score_ids``; computed in the prefill's own forward, the
            cache holding only the prompts), or None. Row selection and concatenation drop it.
    """

    next_logprobs: torch.Tensor
    past_key_values: DynamicCache
    attention_mask: torch.Tensor
    next_positions: torch.Tensor
    scored: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return self.next_logprobs.shape[0]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep / repeat / reorder rows: row ``r`` of the result is old row ``rows[r]``.

        Args:
            rows: ``(R',)`` long indices into the current R rows (may repeat, any length).
        """
        rows = rows.to(self.attention_mask.device)
        self.past_key_values.reorder_cache(rows)  # type: ignore[arg-type]  # transformers says LongTensor; a long Tensor is what it takes
        self.next_logprobs = self.next_logprobs.index_select(0, rows.to(self.next_logprobs.device))
        self.attention_mask = self.attention_mask.index_select(0, rows)
        self.next_positions = self.next_positions.index_select(0, rows)
        self.scored = None


def _forward(model: torch.nn.Module, keep: int = 1, **kwargs: object) -> torch.Tensor:
    """One forward; returns float32 logits of the last position, ``(R, V)``, or of the last ``keep > 1``
    positions, ``(R, keep, V)``."""
    # a PeftModel's forward takes **kwargs and hands them to the wrapped model: ask the wrapped model,
    # or a prefill with an adapter would project every prompt position through the vocabulary head
    inner: torch.nn.Module = cast(Any, model).get_base_model() if hasattr(model, "get_base_model") else model
    if _accepts_logits_to_keep(type(inner)):  # type: ignore[arg-type]  # torch's Module.__hash__ stub: classes are hashable
        kwargs["logits_to_keep"] = keep
    out = model(**kwargs, use_cache=True)
    return out.logits[:, -1, :].float() if keep == 1 else out.logits[:, -keep:, :].float()


@torch.inference_mode()
def prefill(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int | None = None,
    prefix: PrefixSpec | None = None,
    score_ids: Sequence[int] | None = None,
) -> PrefillState:
    """Run the K prompts once, as one left-padded batch, and keep their KV cache.

    Args:
        model: a causal LM (``AutoModelForCausalLM``).
        prompt_ids: K lists of token ids.
        prefix: reuse cached KV states of the prompts' leading ``prefix.lengths[k]`` tokens
            (see :func:`_assemble_prefix_cache`); the rest runs as one forward. None: no reuse.
        score_ids: a fixed continuation (e.g. the abstention reply) to teacher-force after every prompt in
            the same forward: ``state.scored`` gets its ``(K, T)`` log-probabilities and the cache is cut
            back to the prompts (see :func:`_prefill_rows`). None: nothing scored.

    Returns:
        :class:`PrefillState` with ``next_logprobs`` ``(K, V)``: log p(first answer token | prompt_k),
        equal (float tolerance) to running prompt k alone without padding. With ``prefix`` the layout
        (left padding, attention mask, positions) is exactly that of the uncached path.
    """
    _check_prompts(prompt_ids)
    rows = None if prefix is None else _row_prefixes(prompt_ids, prefix)
    return _prefill_rows(model, prompt_ids, rows, pad_token_id, score_ids)


@torch.inference_mode()
def prefill_many(
    model: torch.nn.Module,
    requests: Sequence[tuple[Sequence[Sequence[int]], PrefixSpec | None]],
    *,
    pad_token_id: int | None = None,
    score_ids: Sequence[int] | None = None,
) -> PrefillState:
    """Prefill the prompts of several requests as ONE left-padded batch: one forward for all of them.

    Args:
        requests: ``(prompt_ids, prefix)`` per request (``prefix`` as in :func:`prefill`, None = no reuse).
        score_ids: a fixed continuation scored after every row in the same forward (as in :func:`prefill`).

    Returns:
        One :class:`PrefillState` whose rows are the requests' prompts in order (request 0's K_0 rows,
        then request 1's, ...). Row r equals (float tolerance) the same row of :func:`prefill` of its
        request alone: the rows only get more left padding, masked, with positions counted from the
        mask. With prefixes, each row's cached prefix KV is reused exactly as :func:`prefill` does and
        the forward runs only the columns that hold some row's uncached tokens. The forward always
        uses the full-precision weights (like a cached prefill; see :func:`_full_weights`).
    """
    if not requests:
        raise ValueError("prefill_many needs at least one request.")
    prompt_ids: list[Sequence[int]] = []
    rows: list[_RowPrefix] = []
    for prompts, spec in requests:
        _check_prompts(prompts)
        prompt_ids.extend(prompts)
        rows.extend(_row_prefixes(prompts, spec) if spec is not None else [_RowPrefix(None, 0, 0)] * len(prompts))
    with _full_weights():
        return _prefill_rows(model, prompt_ids, rows, pad_token_id, score_ids)


@dataclass(frozen=True)
class _RowPrefix:
    """How one prompt row reuses a cached prefix: ``spec`` (None = no reuse), cacheable and shared lengths."""

    spec: PrefixSpec | None
    length: int
    shared: int


def _row_prefixes(prompt_ids: Sequence[Sequence[int]], spec: PrefixSpec) -> list[_RowPrefix]:
    if len(spec.lengths) != len(prompt_ids):
        raise ValueError(
            f"prefix.lengths has {len(spec.lengths)} entries for {len(prompt_ids)} prompts; pass one per prompt."
        )
    shared = spec.shared_lengths if spec.shared_lengths is not None else [0] * len(prompt_ids)
    if len(shared) != len(prompt_ids):
        raise ValueError(f"prefix.shared_lengths has {len(shared)} entries for {len(prompt_ids)} prompts.")
    return [_RowPrefix(spec, int(n), int(s)) for n, s in zip(spec.lengths, shared)]


def _prefill_rows(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    rows: Sequence[_RowPrefix] | None,
    pad_token_id: int | None,
    score_ids: Sequence[int] | None = None,
) -> PrefillState:
    """The prefill of :func:`prefill` / :func:`prefill_many`: ``rows`` None = the plain uncached path.

    With ``score_ids`` (T tokens) the forward also reads ``score_ids[:-1]`` after every prompt and keeps
    the logits of the last T positions: the prompt's last one gives ``next_logprobs`` and, with the
    others, the continuation's log-probabilities (causal attention: appended tokens never reach the
    prompt's positions). The T - 1 appended cache columns are cropped off again. One forward instead of
    a prefill plus a teacher-forced one, which also copied the whole cache to append T - 1 columns.
    """
    device = _model_device(model)
    input_ids, attention_mask = left_pad(prompt_ids, _pad_token_id(model, pad_token_id), device)
    extra = len(score_ids) - 1 if score_ids else 0
    if extra:
        appended = torch.as_tensor(list(score_ids[:-1]), dtype=torch.long, device=device)  # type: ignore[index]
        input_ids = torch.cat([input_ids, appended.unsqueeze(0).expand(input_ids.shape[0], -1)], dim=-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], extra))], dim=-1)
    position_ids = _positions_from_mask(attention_mask)
    cache: DynamicCache | None
    if rows is None:
        cache, cached = _new_cache(model), 0
        logits = _forward(
            model,
            keep=extra + 1,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
        )
    else:
        with _full_weights():
            cache, cached = _assemble_rows(model, prompt_ids, rows)
            if cache is None:
                cache = _new_cache(model)
            logits = _forward(
                model,
                keep=extra + 1,
                input_ids=input_ids[:, cached:],
                attention_mask=attention_mask,
                position_ids=position_ids[:, cached:],
                past_key_values=cache,
            )
    scored = None
    if extra:
        cache.crop(-extra)
        attention_mask, position_ids = attention_mask[:, :-extra], position_ids[:, :-extra]
        logprobs = torch.log_softmax(logits, dim=-1)  # (R, T, V)
        ids = torch.as_tensor(list(score_ids), dtype=torch.long, device=logprobs.device)  # type: ignore[arg-type]
        scored = logprobs.gather(-1, ids.expand(logprobs.shape[0], -1).unsqueeze(-1)).squeeze(-1)
        next_logprobs = logprobs[:, 0].contiguous()
    else:
        next_logprobs = torch.log_softmax(logits, dim=-1)
        if score_ids:  # a one-token continuation: the prompt's own next-token distribution scores it
            scored = next_logprobs[:, list(score_ids)]
    return PrefillState(
        next_logprobs=next_logprobs,
        past_key_values=cache,
        attention_mask=attention_mask,
        next_positions=position_ids[:, -1:] + 1,
        scored=scored,
    )


# --------------------------------------------------------------------------- prefix KV reuse


@contextmanager
def _full_weights() -> Iterator[None]:
    """Forwards inside use the model's full-precision weights even when short.

    :mod:`rag.int8_decode` serves short forwards from an int8 copy (:func:`rag.int8_decode.reads_int8`:
    bf16, at most ``MAX_INT8_ROWS`` token rows; float32, one token per sequence); an uncached prefill
    never is one. The cached path's forwards (a prefix alone, the question suffix) can be short, and
    must use the weights the uncached prefill uses to stay lossless. The model runs in one thread, so
    switching the module's threshold is safe.
    """
    from rag import int8_decode

    previous = int8_decode.MAX_INT8_ROWS
    int8_decode.MAX_INT8_ROWS = 0
    try:
        yield
    finally:
        int8_decode.MAX_INT8_ROWS = previous


def _has_int8_layers(model: torch.nn.Module) -> bool:
    from rag.int8_decode import Int8DecodeLinear

    return any(isinstance(m, Int8DecodeLinear) for m in model.modules())


def _plain_dynamic_cache(model: torch.nn.Module) -> bool:
    """True when every layer of the model's cache is a plain growing KV layer (no sliding window,
    no recurrent state): only then is a prompt prefix's KV a slice of the longer prompt's KV."""
    try:
        layers = _new_cache(model).layers
    except (AttributeError, TypeError, ValueError):
        return False
    return bool(layers) and all(type(layer) in PLAIN_LAYER_TYPES for layer in layers)


def _prefix_kv(model: torch.nn.Module, ids: Sequence[int], spec: PrefixSpec, shared: int) -> PrefixKV:
    """The KV of the prefix ``ids`` from ``spec.cache``, or computed alone (batch 1) and stored.

    With ``0 < shared < len(ids)`` the first ``shared`` tokens' KV is itself looked up / stored and
    the rest is computed by continuing from it (the shared system prompt is computed once).
    """
    kv = spec.cache.get(spec.namespace, ids, count=spec.count_lookups)
    if kv is not None:
        return kv
    device = _model_device(model)
    cache = _new_cache(model)
    start = 0
    if 0 < shared < len(ids):
        for layer, (k, v) in zip(_dynamic_layers(cache), _prefix_kv(model, ids[:shared], spec, 0)):
            layer.update(k.unsqueeze(0), v.unsqueeze(0))  # the next update concatenates: stored tensors stay
        start = shared
    _forward(
        model,
        input_ids=torch.tensor([list(ids[start:])], dtype=torch.long, device=device),
        attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
        position_ids=torch.arange(start, len(ids), device=device).unsqueeze(0),
        past_key_values=cache,
    )
    parts = []
    for layer in _dynamic_layers(cache):
        if layer.keys is None or layer.values is None:
            raise RuntimeError("the prefix forward left a cache layer empty.")
        parts.append((layer.keys[0], layer.values[0]))
    kv = tuple(parts)
    spec.cache.put(spec.namespace, ids, kv)
    return kv


def warm_prefix_cache(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], spec: PrefixSpec, budget: int, start: int = 0
) -> tuple[int, int]:
    """Look up the cacheable prefixes of ``prompt_ids[start:]`` in order, computing and storing the
    missing ones, one whole prefix at a time, while their tokens fit in ``budget`` (the first missing
    one is computed whenever ``budget > 0``).

    This is the chunked part of a prefill: each prefix is looked up (and counted) once over the
    calls; a :func:`prefill` with ``spec`` afterwards (``count_lookups=False``) only runs the suffixes.

    Returns:
        ``(tokens computed, next row)``: call again with ``start = next row`` until it is
        ``len(prompt_ids)`` (at once when nothing is cacheable: cache off, a model whose cache is
        not plain KV).
    """
    rows = _row_prefixes(prompt_ids, spec)
    if not spec.cache.enabled or not _plain_dynamic_cache(model):
        return 0, len(prompt_ids)
    spent = 0
    for index in range(start, len(prompt_ids)):
        n = max(0, min(rows[index].length, len(prompt_ids[index]) - 1))
        if n == 0:
            continue
        ids = list(prompt_ids[index][:n])
        if (spec.namespace, ids) not in spec.cache:
            if budget <= 0 or (spent > 0 and spent + n > budget):
                return spent, index
            spent += n
        with _full_weights(), torch.inference_mode():
            _prefix_kv(model, ids, spec, rows[index].shared)  # a counted hit, or a counted miss computed and stored
    return spent, len(prompt_ids)


def _assemble_prefix_cache(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], spec: PrefixSpec
) -> tuple[DynamicCache | None, int]:
    """A batched cache of the first ``C`` columns of the left-padded batch, from per-prompt prefix KVs.

    Layout: the uncached batch is ``(K, L)`` with prompt k right-aligned (``L = max_k L_k``). The
    uncached tokens of the rows (``L_k - P_k``, ``P_k`` = cacheable length, at most ``L_k - 1`` so
    that a forward remains) fit in the last ``W = max_k (L_k - P_k)`` columns; the first
    ``C = L - W`` columns hold, for row k, its first ``max(0, L_k - W) <= P_k`` tokens, whose KV is
    a slice of its prefix KV (a position's key and value depend only on the tokens up to it). Those
    slices are left-padded with zeros (masked) to ``C``. The caller runs columns ``C:`` as one
    forward with the full attention mask and position ids, so the result equals the uncached
    layout exactly.

    Returns:
        ``(cache, C)`` with the cache's batch size K and length C, or ``(None, 0)`` when nothing is
        reusable (cache off, no cacheable tokens, or a model whose cache is not plain KV).
    """
    return _assemble_rows(model, prompt_ids, _row_prefixes(prompt_ids, spec))


def _assemble_rows(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], rows: Sequence[_RowPrefix]
) -> tuple[DynamicCache | None, int]:
    """:func:`_assemble_prefix_cache` with a prefix spec per row (rows of several requests in one batch)."""
    enabled = any(r.spec is not None and r.spec.cache.enabled for r in rows)
    if not enabled or not _plain_dynamic_cache(model):
        return None, 0
    total = [len(p) for p in prompt_ids]
    cacheable = [
        max(0, min(r.length, t - 1)) if r.spec is not None and r.spec.cache.enabled else 0 for r, t in zip(rows, total)
    ]
    window = max(t - n for t, n in zip(total, cacheable))
    columns = max(total) - window
    if columns <= 0:
        return None, 0
    used = [max(0, t - window) for t in total]  # cached tokens of each row in the first C columns
    kvs = [
        _prefix_kv(model, list(p[:n]), cast(PrefixSpec, r.spec), r.shared) if u > 0 else None
        for p, n, r, u in zip(prompt_ids, cacheable, rows, used)
    ]
    ref = next(kv for kv in kvs if kv is not None)
    cache = _new_cache(model)
    for i, layer in enumerate(_dynamic_layers(cache)):
        heads, _, dim = ref[i][0].shape
        parts = []
        for which in (0, 1):
            out = ref[i][which].new_zeros((len(prompt_ids), heads, columns, dim))
            for row, (kv, u) in enumerate(zip(kvs, used)):
                if kv is not None:
                    out[row, :, columns - u :] = kv[i][which][:, :u]
            parts.append(out)
        layer.update(parts[0], parts[1])
    return cache, columns


@torch.inference_mode()
def _advance(model: torch.nn.Module, state: PrefillState, tokens: torch.Tensor) -> None:
    """Append one token to every row and update ``state.next_logprobs`` in place.

    Args:
        tokens: ``(R,)`` long, the token appended to each row.
    """
    mask = torch.cat([state.attention_mask, state.attention_mask.new_ones((state.num_rows, 1))], dim=-1)
    logits = _forward(
        model,
        input_ids=tokens.view(-1, 1).to(state.attention_mask.device),
        attention_mask=mask,
        position_ids=state.next_positions,
        past_key_values=state.past_key_values,
    )
    state.attention_mask = mask
    state.next_positions = state.next_positions + 1
    state.next_logprobs = torch.log_softmax(logits, dim=-1)


# --------------------------------------------------------------------------- teacher forcing


@torch.inference_mode()
def score_continuations(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    continuation_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int | None = None,
    max_rows_per_forward: int = 64,
    prefix: PrefixSpec | None = None,
) -> torch.Tensor:
    """Teacher-forced log-probabilities of C candidate continuations under each of K prompts.

    Strategy: the K prompts are prefilled ONCE as a left-padded batch; the prompt cache is then
    repeated for the candidates (row ``k*C' + c``) and the right-padded candidates run in one
    forward per chunk of ``C' = max(1, max_rows_per_forward // K)`` candidates, with position ids
    continuing each prompt's own positions. Right padding of the candidates is harmless because
    attention is causal: padded positions come after every real one and are masked in the output.
    Cost: one prefill of K prompts + ``ceil(C / C')`` forwards of ``K*C'`` rows of T tokens,
    instead of ``K*C`` prompt+candidate forwards.

    Args:
        model: a causal LM.
        prompt_ids: K lists of token ids.
        continuation_ids: C lists of token ids (lengths T_c, may be 0).
        max_rows_per_forward: memory bound on rows per candidate forward (logits are rows x T x V).
        prefix: reuse cached prompt-prefix KV states in the prefill (see :func:`prefill`).

    Returns:
        ``(K, C, T)`` float32 with ``T = max_c T_c``: entry ``[k, c, i]`` is
        log p(y_ci | prompt_k, y_c<i); 0.0 where ``i >= T_c``.
    """
    _check_prompts(prompt_ids)
    n_docs, n_cands = len(prompt_ids), len(continuation_ids)
    length = max((len(c) for c in continuation_ids), default=0)
    state = prefill(model, prompt_ids, pad_token_id=pad_token_id, prefix=prefix)
    device = state.attention_mask.device
    result = torch.zeros((n_docs, n_cands, length), dtype=torch.float32, device=device)
    if n_cands == 0 or length == 0:
        return result

    pad = _pad_token_id(model, pad_token_id)
    cands = torch.full((n_cands, length), pad, dtype=torch.long)
    cand_mask = torch.zeros((n_cands, length), dtype=torch.bool)
    for c, ids in enumerate(continuation_ids):
        if len(ids):
            cands[c, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
            cand_mask[c, : len(ids)] = True
    cands, cand_mask = cands.to(device), cand_mask.to(device)

    chunk = max(1, max_rows_per_forward // n_docs)
    offsets = torch.arange(length, device=device)
    for start in range(0, n_cands, chunk):
        stop = min(start + chunk, n_cands)
        n = stop - start
        cache = state.past_key_values if (start == 0 and stop == n_cands) else copy.deepcopy(state.past_key_values)
        cache.batch_repeat_interleave(n)  # row k*n + c
        batch_ids = cands[start:stop].repeat(n_docs, 1)  # (K*n, T)
        attn = torch.cat(
            [state.attention_mask.repeat_interleave(n, dim=0), state.attention_mask.new_ones((n_docs * n, length))],
            dim=-1,
        )
        positions = state.next_positions.repeat_interleave(n, dim=0) + offsets  # (K*n, T)
        logits = model(
            input_ids=batch_ids, attention_mask=attn, position_ids=positions, past_key_values=cache, use_cache=True
        ).logits  # (K*n, T, V): position i predicts token i+1
        first = state.next_logprobs.repeat_interleave(n, dim=0).gather(-1, batch_ids[:, :1])  # (K*n, 1)
        rest = logits[:, :-1, :].float()
        rest = rest.gather(-1, batch_ids[:, 1:, None]).squeeze(-1) - torch.logsumexp(rest, dim=-1)  # (K*n, T-1)
        scores = torch.cat([first, rest], dim=-1).view(n_docs, n, length)
        result[:, start:stop] = torch.where(cand_mask[start:stop], scores, 0.0)
    return result


# --------------------------------------------------------------------------- RAG-Sequence


def advance(model: torch.nn.Module, state: PrefillState, tokens: torch.Tensor) -> None:
    """One decoding step after :func:`prefill`: append ``tokens`` ``(R,)`` (one per row) to the rows of
    ``state`` and update ``state.next_logprobs`` ``(R, V)`` in place."""
    _advance(model, state, tokens)


def _truncate_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    for i, tok in enumerate(ids):
        if tok in eos:
            return ids[: i + 1]
    return ids


@torch.inference_mode()
def rag_sequence_generate(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    doc_logprobs: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: int | Sequence[int],
    num_beams: int = 1,
    decoding: Literal["thorough", "fast"] = "thorough",
    pad_token_id: int | None = None,
    reference_ids: Sequence[int] | None = None,
    stop: Callable[[list[int]], bool] | None = None,
    prefix: PrefixSpec | None = None,
) -> list[RagSequenceHypothesis]:
    """RAG-Sequence decoding: candidates per document, ranked by the marginal over documents.

    1. Candidates: one ``model.generate`` call on the left-padded batch of the K prompts, greedy
       (``num_beams=1``, one candidate per document) or beam search (``num_beams`` candidates per
       document). Candidates are de-duplicated across documents.
    2. ``"thorough"``: every candidate is re-scored under every document with
       :func:`score_continuations` and ranked by ``log sum_k p(z_k|x) p(y|x,z_k)``.
       ``"fast"``: no extra forward; a candidate gets p(y|x,z_k)=0 under documents whose beam did
       not produce it, so only the scores recorded during generation (log-softmax of the raw
       logits, i.e. not altered by the model's logits processors) are used.

    Args:
        model: a causal LM.
        prompt_ids: K lists of token ids, one prompt per document.
        doc_logprobs: ``(K,)`` log p(z|x).
        max_new_tokens: at most this many generated tokens per candidate.
        eos_token_ids: id(s) that end an answer (kept as the last token of a candidate).
        num_beams: beam width per document (1 = greedy).
        decoding: ``"thorough"`` or ``"fast"``.
        reference_ids: a fixed continuation (e.g. the abstention text, with its eos) scored with the
            candidates in thorough decoding (one more candidate row); its marginal is returned as
            every hypothesis' ``reference_logprob``. It is a hypothesis only if it was also generated.
        stop: called with a row's generated tokens after each step; True ends that row (its tokens so
            far are the candidate).
        prefix: reuse cached prompt-prefix KV states (the candidates' generation and the thorough
            re-scoring both start from them; see :func:`prefill`).

    Returns:
        Hypotheses sorted by decreasing ``logprob``.
    """
    _check_prompts(prompt_ids, doc_logprobs)
    if decoding not in ("thorough", "fast"):
        raise ValueError(f"decoding must be 'thorough' or 'fast', got {decoding!r}.")
    if max_new_tokens < 1 or num_beams < 1:
        raise ValueError("max_new_tokens and num_beams must be >= 1.")
    eos = _eos_list(eos_token_ids)
    if not eos:
        raise ValueError("rag_sequence_generate needs at least one eos token id (the model's end-of-turn token).")
    device = _model_device(model)
    pad = _pad_token_id(model, pad_token_id)
    doc_logprobs = doc_logprobs.to(device=device, dtype=torch.float32)

    out, generated = _generate_candidates(
        model,
        prompt_ids,
        max_new_tokens=max_new_tokens,
        eos=eos,
        pad=pad,
        num_beams=num_beams,
        record_logits=decoding == "fast",
        stop=stop,
        prefix=prefix,
    )
    cands = _SequenceCandidates.from_generated(generated, eos, num_beams)
    ref_index = cands.add_reference(reference_ids) if reference_ids and decoding == "thorough" else None
    mask = cands.mask(device)
    if decoding == "thorough":
        marginal, posterior, token_lp = _thorough_scores(model, prompt_ids, cands.ids, doc_logprobs, mask, pad, prefix)
    else:
        marginal, posterior, token_lp = _fast_scores(out, generated, cands, doc_logprobs, mask, len(prompt_ids))
    reference = float(marginal[ref_index]) if ref_index is not None else None
    return _ranked_hypotheses(cands, marginal, posterior, reference, token_lp)


def rag_sequence_sample(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    doc_logprobs: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: int | Sequence[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
    reference_ids: Sequence[int] | None = None,
    stop: Callable[[list[int]], bool] | None = None,
    prefix: PrefixSpec | None = None,
) -> RagSequenceHypothesis:
    """One RAG-Sequence answer drawn by ancestral sampling: z ~ p(z|x), then y ~ p(y|x,z) token by token.

    At ``temperature=1`` and ``top_p=1`` the answer is an exact draw from the RAG-Sequence marginal
    p(y|x) = sum_z p(z|x) p(y|x,z). The document is drawn first, then the tokens, both from ``generator``
    (so a seeded generator gives the same answer). The answer is then scored under every document as
    thorough decoding scores its candidates: ``logprob`` is the marginal log p(y|x), ``doc_posterior``
    p(z|x,y), ``reference_logprob`` the marginal of ``reference_ids``.

    Args:
        prompt_ids: K lists of token ids, one prompt per document.
        doc_logprobs: ``(K,)`` log p(z|x).
        prefix: cached prompt prefixes of the K prompts, used by the scoring pass.
    """
    _check_prompts(prompt_ids, doc_logprobs)
    eos = _eos_list(eos_token_ids)
    if not eos:
        raise ValueError("rag_sequence_sample needs at least one eos token id (the model's end-of-turn token).")
    device = _model_device(model)
    pad = _pad_token_id(model, pad_token_id)
    doc_logprobs = doc_logprobs.to(device=device, dtype=torch.float32)
    prior = doc_logprobs.float().exp().cpu()
    doc = int(torch.multinomial(prior / prior.sum(), 1, generator=generator))
    drawn = rag_token_generate(  # RAG-Token over one document is plain sampling from p(y|x,z)
        model,
        [prompt_ids[doc]],
        torch.zeros(1),
        max_new_tokens=max_new_tokens,
        eos_token_ids=eos,
        strategy="sample",
        temperature=temperature,
        top_p=top_p,
        generator=generator,
        pad_token_id=pad,
        stop=stop,
    )
    cands = _SequenceCandidates([list(drawn.token_ids)], {tuple(drawn.token_ids): 0}, [], 1)
    ref_index = cands.add_reference(reference_ids) if reference_ids else None
    with torch.inference_mode():
        marginal, posterior, token_lp = _thorough_scores(
            model, prompt_ids, cands.ids, doc_logprobs, cands.mask(device), pad, prefix
        )
    reference = float(marginal[ref_index]) if ref_index is not None else None
    return _ranked_hypotheses(cands, marginal, posterior, reference, token_lp)[0]


@dataclass
class _SequenceCandidates:
    """De-duplicated RAG-Sequence candidates.

    Attributes:
        ids: candidate token ids; the first ``n_generated`` were generated, a reference may follow.
        index: candidate ids (as a tuple) -> position in ``ids``.
        origin: ``(output row, document, candidate)`` for every row of the generate output.
        n_generated: how many candidates came out of generation.
    """

    ids: list[list[int]]
    index: dict[tuple[int, ...], int]
    origin: list[tuple[int, int, int]]
    n_generated: int

    @classmethod
    def from_generated(cls, generated: torch.Tensor, eos: Sequence[int], num_beams: int) -> _SequenceCandidates:
        """Candidates of ``generated`` ``(K*num_beams, T')`` (row ``k*num_beams + j``), cut after their eos."""
        eos_set = set(eos)
        ids: list[list[int]] = []
        index: dict[tuple[int, ...], int] = {}
        origin: list[tuple[int, int, int]] = []
        for row in range(generated.shape[0]):
            row_ids = _truncate_at_eos(generated[row].tolist(), eos_set)
            key = tuple(row_ids)
            if key not in index:
                index[key] = len(ids)
                ids.append(row_ids)
            origin.append((row, row // num_beams, index[key]))
        return cls(ids, index, origin, len(ids))

    def add_reference(self, reference_ids: Sequence[int]) -> int:
        """The position of ``reference_ids`` among the candidates (appended when not generated)."""
        key = tuple(reference_ids)
        if key not in self.index:
            self.index[key] = len(self.ids)
            self.ids.append(list(reference_ids))
        return self.index[key]

    def mask(self, device: torch.device) -> torch.Tensor:
        """``(C, T)`` bool, True on each candidate's real tokens (``T`` = the longest candidate)."""
        length = max(len(c) for c in self.ids)
        mask = torch.zeros((len(self.ids), length), dtype=torch.bool, device=device)
        for c, ids in enumerate(self.ids):
            mask[c, : len(ids)] = True
        return mask


def _generate_candidates(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos: list[int],
    pad: int,
    num_beams: int,
    record_logits: bool,
    stop: Callable[[list[int]], bool] | None,
    prefix: PrefixSpec | None = None,
) -> tuple[object, torch.Tensor]:
    """One ``model.generate`` call on the left-padded batch of the K prompts: greedy (``num_beams=1``)
    or beam search with ``num_beams`` candidates per document.

    Returns:
        transformers' generate output (with the raw logits when ``record_logits``) and the generated
        ids ``(K*num_beams, T')``, row ``k*num_beams + j``.
    """
    input_ids, attention_mask = left_pad(prompt_ids, pad, _model_device(model))
    out = cast(Any, model).generate(  # nn.Module.__getattr__ types generate as Tensor | Module
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad,
        return_dict_in_generate=True,
        output_logits=record_logits,
        stopping_criteria=_row_stopping(stop, input_ids.shape[1]) if stop is not None else None,
        **_generate_prefix_kwargs(model, prompt_ids, prefix, num_beams),
    )
    return out, out.sequences[:, input_ids.shape[1] :]


def _thorough_scores(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    candidates: list[list[int]],
    doc_logprobs: torch.Tensor,
    mask: torch.Tensor,
    pad: int,
    prefix: PrefixSpec | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every candidate re-scored under every document (:func:`score_continuations`).

    Returns:
        the marginal ``(C,)`` log sum_k p(z_k|x) p(y|x,z_k), the posterior ``(C, K)`` p(z_k|x,y) and
        the token log-probs ``(C, K, T)``.
    """
    token_lp = score_continuations(model, prompt_ids, candidates, pad_token_id=pad, prefix=prefix).permute(
        1, 0, 2
    )  # (C, K, T)
    marginal = rag_sequence_logprob(token_lp, doc_logprobs, mask)
    return marginal, rag_sequence_doc_posterior(token_lp, doc_logprobs, mask), token_lp


def _fast_scores(
    out: object,
    generated: torch.Tensor,
    cands: _SequenceCandidates,
    doc_logprobs: torch.Tensor,
    mask: torch.Tensor,
    n_docs: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores recorded while generating, no extra forward: p(y|x,z_k)=0 under the documents whose
    beam did not produce y.

    Returns:
        the marginal ``(C,)``, the posterior ``(C, K)`` (0 for documents that did not generate y) and
        the token log-probs ``(C, K, T)`` (``-inf`` under documents that did not generate y).
    """
    token_lp, generated_by = _generation_scores(out, generated, cands.origin, cands.ids, n_docs)
    marginal = rag_sequence_fast_logprob(token_lp, doc_logprobs, generated_by, mask)  # (C,)
    joint = torch.where(generated_by, doc_logprobs + token_lp.sum(-1), float("-inf"))
    known = torch.where(generated_by.unsqueeze(-1), token_lp, float("-inf"))
    return marginal, torch.softmax(joint, dim=-1), known


def _ranked_hypotheses(
    cands: _SequenceCandidates,
    marginal: torch.Tensor,
    posterior: torch.Tensor,
    reference: float | None,
    token_lp: torch.Tensor,
) -> list[RagSequenceHypothesis]:
    """The generated candidates sorted by decreasing marginal (a reference that was not generated is left
    out). ``token_lp``: ``(C, K, T)``; each hypothesis keeps its ``(K, len)`` slice, on the CPU."""
    order = [c for c in torch.argsort(marginal, descending=True).tolist() if c < cands.n_generated]
    return [
        RagSequenceHypothesis(
            token_ids=cands.ids[c],
            logprob=float(marginal[c]),
            doc_posterior=posterior[c].tolist(),
            reference_logprob=reference,
            token_logprobs=token_lp[c, :, : len(cands.ids[c])].float().cpu(),
        )
        for c in order
    ]


def _generate_prefix_kwargs(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], prefix: PrefixSpec | None, num_beams: int
) -> dict[str, object]:
    """``model.generate`` keyword arguments that start candidate generation from cached prompt
    prefixes: ``past_key_values`` holding the first C columns of the left-padded batch (rows repeated
    ``num_beams`` times, as generate expands the prompts), so generate prefills only the rest."""
    if prefix is None:
        return {}
    with _full_weights():
        cache, columns = _assemble_prefix_cache(model, prompt_ids, prefix)
    if cache is None:
        return {}
    if _reads_int8(model, len(prompt_ids), max(len(p) for p in prompt_ids) - columns) and _has_int8_layers(model):
        # generate's first forward would be short enough for the int8 decode weights, unlike the
        # uncached prompt forward: not lossless, so generate prefills the prompts itself
        return {}
    if num_beams > 1:
        cache.batch_repeat_interleave(num_beams)
    return {"past_key_values": cache}


def _reads_int8(model: torch.nn.Module, sequences: int, tokens: int) -> bool:
    """Whether a forward of ``sequences`` x ``tokens`` new tokens reads the int8 decode weights (if it has them)."""
    from rag.int8_decode import reads_int8

    return reads_int8(sequences, tokens, _model_dtype(model))


def _row_stopping(stop: Callable[[list[int]], bool], prompt_len: int):
    """A transformers StoppingCriteriaList that ends each row once ``stop(its generated ids)``."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
            done = [stop(row[prompt_len:].tolist()) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


def _generation_scores(
    out: Any,
    generated: torch.Tensor,
    origin: list[tuple[int, int, int]],
    candidates: list[list[int]],
    n_docs: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-document log-probs recorded while generating (fast decoding).

    ``out.logits[t]`` holds the raw logits of the rows alive at step t; for beam search
    ``out.beam_indices[r, t]`` names the row that produced output row r's token t (greedy: row r).
    Only the first ``len(candidate)`` steps of a row are read: after its eos a greedy row keeps
    running on pad tokens that are not part of the answer.

    Returns:
        ``token_lp`` ``(C, K, T)`` (0 where not generated) and ``generated_by`` ``(C, K)`` bool.
    """
    device = generated.device
    steps = len(out.logits)
    logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in out.logits])  # (steps, rows, V)
    beam_indices = getattr(out, "beam_indices", None)
    if beam_indices is None:
        beam_indices = torch.arange(generated.shape[0], device=device)[:, None].expand(-1, steps)
    length = max(len(c) for c in candidates)
    token_lp = torch.zeros((len(candidates), n_docs, length), dtype=torch.float32, device=device)
    generated_by = torch.zeros((len(candidates), n_docs), dtype=torch.bool, device=device)
    for row, doc, cand in origin:
        if generated_by[cand, doc]:
            continue
        n_tok = len(candidates[cand])
        rows = beam_indices[row, :n_tok].to(device)
        if bool((rows < 0).any()):
            raise RuntimeError("transformers returned beam indices shorter than the generated sequence.")
        token_lp[cand, doc, :n_tok] = logprobs[torch.arange(n_tok, device=device), rows, generated[row, :n_tok]]
        generated_by[cand, doc] = True
    return token_lp, generated_by


# --------------------------------------------------------------------------- RAG-Token


def _sample_token(mixed: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Sample from ``softmax(mixed / temperature)`` restricted to the top-p nucleus.

    Args:
        mixed: ``(V,)`` log-probabilities.
    """
    logits = mixed / temperature
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked before it already cover top_p (the first is always kept)
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, sorted_idx, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def _score_fixed(model: torch.nn.Module, state: PrefillState, ids: Sequence[int]) -> torch.Tensor:
    """Teacher-forced ``(R, T)`` log p(ids_i | prompt_r, ids_<i) for every row of a fresh prefill,
    leaving ``state`` as it was: the T-1 appended cache positions are cropped off again."""
    ids_t = torch.as_tensor(list(ids), dtype=torch.long, device=state.attention_mask.device)
    first = state.next_logprobs[:, ids_t[0]].unsqueeze(-1)  # (R, 1)
    if len(ids) == 1:
        return first
    rows, extra = state.num_rows, len(ids) - 1
    mask = torch.cat([state.attention_mask, state.attention_mask.new_ones((rows, extra))], dim=-1)
    offsets = torch.arange(extra, device=mask.device).unsqueeze(0)
    logits = model(
        input_ids=ids_t[:-1].unsqueeze(0).expand(rows, -1),
        attention_mask=mask,
        position_ids=state.next_positions + offsets,
        past_key_values=state.past_key_values,
        use_cache=True,
    ).logits.float()  # (R, T-1, V)
    state.past_key_values.crop(-extra)
    rest = torch.log_softmax(logits, dim=-1).gather(-1, ids_t[1:].expand(rows, -1).unsqueeze(-1)).squeeze(-1)
    return torch.cat([first, rest], dim=-1)


def rag_token_reference_logprob(
    model: torch.nn.Module, state: PrefillState, reference_ids: Sequence[int], doc_logprobs: torch.Tensor
) -> float:
    """log p(reference|x) under RAG-Token, teacher-forced from a fresh prefill (``state`` is left as it was).

    Args:
        state: the K rows right after :func:`prefill` (no token appended yet).
        reference_ids: the T token ids of the fixed continuation (e.g. the abstention reply), T >= 1.
        doc_logprobs: ``(K,)`` log p(z|x), on the device of ``state``.
    """
    return float(rag_token_sequence_logprob(_score_fixed(model, state, reference_ids), doc_logprobs))


def prefill_reference_logprob(scored: torch.Tensor | None, doc_logprobs: torch.Tensor) -> float | None:
    """log p(reference|x) under RAG-Token from a prefill that scored the reference (``score_ids``), else None.

    Args:
        scored: one request's K rows of ``PrefillState.scored`` (``(K, T)``), or None when nothing was scored.
        doc_logprobs: ``(K,)`` log p(z|x), on the same device.
    """
    if scored is None:
        return None
    return float(rag_token_sequence_logprob(scored, doc_logprobs))


def choose_rag_token(
    next_logprobs: torch.Tensor,
    doc_logprobs: torch.Tensor,
    *,
    strategy: Literal["greedy", "sample"] = "greedy",
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> int:
    """The next RAG-Token token: argmax (greedy) or a draw (temperature + top-p) of the mixture.

    Args:
        next_logprobs: ``(K, V)`` log p(.|x, z_k, y_<i), one row per document.
        doc_logprobs: ``(K,)`` log p(z|x).
    """
    mixed = rag_token_next_logprobs(next_logprobs, doc_logprobs)  # (V,)
    if strategy == "greedy":
        return int(torch.argmax(mixed))
    return _sample_token(mixed, temperature, top_p, generator)


class RagTokenStepper:
    """The bookkeeping of one greedy / sampled RAG-Token answer, one step at a time.

    Shared by :func:`rag_token_generate` (one answer) and :mod:`rag.scheduler` (many answers in one
    batch), so both choose, stream and stop identically. The caller owns the model: after each
    :meth:`step` that returns a token it appends that token to the answer's K rows and calls
    :meth:`step` again with the rows' new next-token log-probs.
    """

    def __init__(
        self,
        doc_logprobs: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_ids: int | Collection[int] | None,
        strategy: Literal["greedy", "sample"] = "greedy",
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        stream_callback: Callable[[int], None] | None = None,
        stop: Callable[[list[int]], bool] | None = None,
    ) -> None:
        self.doc = doc_logprobs
        self.max_new_tokens = max_new_tokens
        self.eos = set(_eos_list(eos_token_ids))
        self.strategy, self.temperature, self.top_p, self.generator = strategy, temperature, top_p, generator
        self.stream_callback, self.stop = stream_callback, stop
        self.tokens: list[int] = []
        self._chosen_lp: list[torch.Tensor] = []  # each (K,): log p(y_i | x, z_k, y_<i)

    def step(self, next_logprobs: torch.Tensor) -> int | None:
        """Choose the next token from ``next_logprobs`` ``(K, V)``.

        Returns:
            The token to append to every row before the next step, or None when the answer is
            complete (eos, ``stop`` or ``max_new_tokens``); the chosen token is recorded either way.
        """
        token = choose_rag_token(
            next_logprobs,
            self.doc,
            strategy=self.strategy,
            temperature=self.temperature,
            top_p=self.top_p,
            generator=self.generator,
        )
        self.tokens.append(token)
        self._chosen_lp.append(next_logprobs[:, token])
        if token in self.eos:
            return None
        if self.stream_callback is not None:
            self.stream_callback(token)
        if self.stop is not None and self.stop(self.tokens):
            return None
        if len(self.tokens) >= self.max_new_tokens:
            return None
        return token

    def output(self, reference_logprob: float | None = None) -> RagTokenOutput:
        """The answer so far (call after :meth:`step` returned None)."""
        out = _token_output(self.tokens, torch.stack(self._chosen_lp, dim=-1), self.doc)
        return dataclasses.replace(out, reference_logprob=reference_logprob)


def rag_token_generate(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    doc_logprobs: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: int | Sequence[int] | None,
    strategy: Literal["greedy", "beam", "sample"] = "greedy",
    num_beams: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stream_callback: Callable[[int], None] | None = None,
    length_penalty: float = 1.0,
    pad_token_id: int | None = None,
    reference_ids: Sequence[int] | None = None,
    stop: Callable[[list[int]], bool] | None = None,
    prefix: PrefixSpec | None = None,
) -> RagTokenOutput:
    """RAG-Token decoding: mix the K documents' next-token distributions at every step.

    The K prompts are prefilled once as a left-padded batch; every step mixes the K
    next-token log-distributions with :func:`rag.marginalize.rag_token_next_logprobs`
    (document prior p(z|x) at every step), chooses a token, appends it to every row and runs ONE
    forward of ``K`` rows x 1 token (``B*K`` rows for beam search) against the KV cache.

    Args:
        model: a causal LM.
        prompt_ids: K lists of token ids, one prompt per document.
        doc_logprobs: ``(K,)`` log p(z|x).
        max_new_tokens: at most this many tokens.
        eos_token_ids: id(s) that end the answer (kept as the last token); None / [] = never stop early.
        strategy: ``"greedy"`` (argmax of the mixture), ``"sample"`` (temperature + top-p on the
            mixture, drawn with ``generator``) or ``"beam"`` (``num_beams`` beams over the mixture).
        stream_callback: called with each chosen token id as soon as it is chosen (greedy / sample),
            except eos tokens; ignored for beam search, whose tokens are final only at the end.
        length_penalty: beam search ranks finished beams by ``logprob / len**length_penalty``.
        reference_ids: a fixed continuation (e.g. the abstention text) whose RAG-Token log-probability
            is computed in the prefill's own forward (``prefill(score_ids=...)``) and returned as
            ``reference_logprob``.
        stop: called with the tokens chosen so far after each step (greedy / sample); True ends the
            answer there, like an eos token (e.g. once the first sentence is complete).
        prefix: reuse cached prompt-prefix KV states in the prefill (see :func:`prefill`).

    Returns:
        :class:`RagTokenOutput` (for beam search, the best finished beam).
    """
    _check_prompts(prompt_ids, doc_logprobs)
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1.")
    if strategy not in ("greedy", "beam", "sample"):
        raise ValueError(f"strategy must be 'greedy', 'beam' or 'sample', got {strategy!r}.")
    if strategy == "sample" and not (temperature > 0.0 and 0.0 < top_p <= 1.0):
        raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1.")
    if strategy == "beam" and num_beams < 1:
        raise ValueError("num_beams must be >= 1.")
    eos = set(_eos_list(eos_token_ids))
    state = prefill(model, prompt_ids, pad_token_id=pad_token_id, prefix=prefix, score_ids=reference_ids or None)
    doc = doc_logprobs.to(device=state.next_logprobs.device, dtype=torch.float32)
    reference = prefill_reference_logprob(state.scored, doc)
    if strategy == "beam":
        out = _rag_token_beam(model, state, doc, max_new_tokens, eos, num_beams, length_penalty)
        return dataclasses.replace(out, reference_logprob=reference)

    n_docs = len(prompt_ids)
    stepper = RagTokenStepper(
        doc,
        max_new_tokens=max_new_tokens,
        eos_token_ids=eos,
        strategy=strategy,
        temperature=temperature,
        top_p=top_p,
        generator=generator,
        stream_callback=stream_callback,
        stop=stop,
    )
    while (token := stepper.step(state.next_logprobs)) is not None:
        _advance(model, state, torch.full((n_docs,), token, dtype=torch.long))
    return stepper.output(reference)


def _token_output(tokens: list[int], token_lp: torch.Tensor, doc: torch.Tensor) -> RagTokenOutput:
    """Package one answer. ``token_lp``: ``(K, T)`` per-document log-probs of the chosen tokens."""
    return RagTokenOutput(
        token_ids=list(tokens),
        logprob=float(rag_token_sequence_logprob(token_lp, doc)),
        doc_contributions=token_contributions(token_lp, doc).tolist(),
        token_logprobs=token_lp.float().cpu(),
    )


def _rag_token_beam(
    model: torch.nn.Module,
    state: PrefillState,
    doc: torch.Tensor,
    max_new_tokens: int,
    eos: set[int],
    num_beams: int,
    length_penalty: float,
) -> RagTokenOutput:
    """Beam search over the RAG-Token mixture; rows of ``state`` are ``beam * K + doc``.

    Each step takes the ``2 * num_beams`` best (beam, token) extensions by summed mixed log-prob;
    extensions ending in eos that rank in the top ``num_beams`` become finished hypotheses, the
    best ``num_beams`` others stay live. Stops when ``num_beams`` hypotheses are finished and no
    live beam can beat the worst of them at the current length (the usual heuristic), or at
    ``max_new_tokens`` (live beams then count as finished).
    """
    n_docs = doc.shape[0]
    device = state.next_logprobs.device
    vocab = state.next_logprobs.shape[-1]
    doc_range = torch.arange(n_docs, device=device)

    live_scores = torch.zeros(1, device=device)  # (n_live,) summed mixed log-probs
    live_tokens = torch.zeros((1, 0), dtype=torch.long, device=device)  # (n_live, t)
    live_doc_lp = torch.zeros((1, n_docs, 0), device=device)  # (n_live, K, t)
    finished: list[tuple[float, torch.Tensor, torch.Tensor]] = []  # (normalised score, tokens, doc_lp)

    def normalise(score: float, length: int) -> float:
        return score / (length**length_penalty)

    for step in range(max_new_tokens):
        n_live = live_scores.shape[0]
        per_doc = state.next_logprobs.view(n_live, n_docs, vocab)  # (n_live, K, V)
        mixed = rag_token_next_logprobs(per_doc, doc)  # (n_live, V)
        totals = (live_scores[:, None] + mixed).view(-1)
        top_scores, flat = totals.topk(min(2 * num_beams, totals.numel()))
        length = step + 1

        keep_beam, keep_token, keep_score = [], [], []
        for rank, (score, idx) in enumerate(zip(top_scores.tolist(), flat.tolist())):
            beam, token = divmod(idx, vocab)
            if token in eos:
                if rank < num_beams:
                    tokens = torch.cat([live_tokens[beam], torch.tensor([token], device=device)])
                    doc_lp = torch.cat([live_doc_lp[beam], per_doc[beam, :, token, None]], dim=-1)
                    finished.append((normalise(score, length), tokens, doc_lp))
                continue
            keep_beam.append(beam)
            keep_token.append(token)
            keep_score.append(score)
            if len(keep_beam) == num_beams:
                break

        finished.sort(key=lambda h: h[0], reverse=True)
        del finished[num_beams:]
        if not keep_beam:
            break
        beams = torch.tensor(keep_beam, device=device)
        new_tokens = torch.tensor(keep_token, device=device)
        live_scores = torch.tensor(keep_score, device=device)
        live_tokens = torch.cat([live_tokens[beams], new_tokens[:, None]], dim=-1)
        live_doc_lp = torch.cat([live_doc_lp[beams], per_doc[beams, :, new_tokens].unsqueeze(-1)], dim=-1)
        if len(finished) >= num_beams and normalise(keep_score[0], length) <= finished[-1][0]:
            break
        if step + 1 == max_new_tokens:
            finished.extend((normalise(s, length), live_tokens[b], live_doc_lp[b]) for b, s in enumerate(keep_score))
            break
        state.select_rows((beams[:, None] * n_docs + doc_range).reshape(-1))
        _advance(model, state, new_tokens.repeat_interleave(n_docs))

    if not finished:  # only reachable if every extension was a low-ranked eos
        finished = [(normalise(float(live_scores[0]), live_tokens.shape[1]), live_tokens[0], live_doc_lp[0])]
    best = max(finished, key=lambda h: h[0])
    return _token_output(best[1].tolist(), best[2], doc)
