"""A KV cache layer whose decode steps append in place instead of copying the whole cache.

transformers' :class:`~transformers.cache_utils.DynamicLayer` appends a step's keys and values with
``torch.cat``: every decode step copies the entire cache of every layer. For a batch of R rows of
length L that is ``R * L * 2 * layers * kv_heads * head_dim`` elements per token. SmolLM2-135M in
float32 holds ~46 KB per row-token, so 32 rows of 400 tokens copy ~590 MB per step, more than the
weights a step reads (540 MB).

:class:`InPlaceAppendLayer` keeps a buffer with spare columns: a one-token update writes into the
next free column and exposes ``keys`` / ``values`` as views of the filled part, so a step copies
only its own token. When the spare columns run out, or when someone replaced ``keys`` (row
selection, concatenation of two batches, a left slice), the next one-token update moves the cache
into a new buffer with :data:`DECODE_HEADROOM` spare columns: one copy per ``DECODE_HEADROOM`` steps
instead of one per step. Multi-token updates (prefill, teacher forcing) keep ``torch.cat``
semantics, so tensors taken from a prefill (e.g. the prompt-prefix cache's entries) never share a
buffer that a later step writes into.

Rows work the same way for the scheduler's batch (:mod:`rag.scheduler`): :func:`concat_rows` and
:func:`gather_rows` give the buffer :data:`ROW_HEADROOM` spare rows, and a request whose prompt is no
longer than the batch's columns joins by writing its rows into them (left-padded with zeros) instead
of copying every row of the batch into a new buffer; one that leaves is closed up by moving the rows
after it up within the buffer.

Exactness: attention reads the same numbers in the same order (a strided view instead of a
contiguous copy), so logits equal the plain layer's (tested bit for bit). ``crop`` and the other
inherited methods keep working: a cropped view of the buffer is recognised and the next step
overwrites the dropped columns.
"""

from __future__ import annotations

import contextlib
from typing import Any, cast

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

#: Spare columns given to a buffer when a decode step has to (re)allocate it: 32 steps per copy.
DECODE_HEADROOM = 32
#: Spare rows given to a batch's buffer when rows join or leave: two RAG-Token answers over 4 chunks join in place.
ROW_HEADROOM = 8


class InPlaceAppendLayer(DynamicLayer):
    """A :class:`DynamicLayer` whose one-token updates write in place into a buffer with spare columns."""

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if key_states.shape[-2] != 1 or not self.is_initialized or self.keys is None or self.keys.numel() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        keys, values = self.keys, self.values
        if values is None:
            raise RuntimeError("an initialised cache layer has keys but no values.")
        length = keys.shape[-2]
        rows = keys.shape[0]
        key_buffer, value_buffer = self._key_buffer, self._value_buffer
        if (
            key_buffer is None
            or value_buffer is None
            or not _is_buffer_view(keys, key_buffer, length)
            or not _is_buffer_view(values, value_buffer, length)
        ):
            spare_rows = _spare_rows(key_buffer, rows)  # a batch keeps its spare rows when its columns run out
            key_buffer = self._key_buffer = _grow(keys, spare_rows)
            value_buffer = self._value_buffer = _grow(values, spare_rows)
        with _writable(key_buffer):
            key_buffer[:rows, :, length : length + 1].copy_(key_states)
            value_buffer[:rows, :, length : length + 1].copy_(value_states)
        self.keys = key_buffer[:rows, :, : length + 1]
        self.values = value_buffer[:rows, :, : length + 1]
        return self.keys, self.values

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


def _writable(buffer: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Inference mode around in-place writes into an inference tensor (a buffer made by a forward or by the
    scheduler's row moves) when the caller is not already in it."""
    if buffer.is_inference() and not torch.is_inference_mode_enabled():
        return torch.inference_mode()
    return contextlib.nullcontext()


def _is_buffer_view(tensor: torch.Tensor, buffer: torch.Tensor, length: int) -> bool:
    """True when ``tensor`` is the first rows and first ``length`` columns of ``buffer`` and one more column fits."""
    return (
        tensor.data_ptr() == buffer.data_ptr()
        and tensor.dtype == buffer.dtype
        and tensor.device == buffer.device
        and tensor.shape[0] <= buffer.shape[0]
        and tensor.shape[1] == buffer.shape[1]
        and tensor.shape[3] == buffer.shape[3]
        and tensor.stride() == buffer.stride()
        and length < buffer.shape[-2]
    )


def _spare_rows(buffer: torch.Tensor | None, rows: int) -> int:
    return max(0, buffer.shape[0] - rows) if buffer is not None else 0


def _grow(tensor: torch.Tensor, spare_rows: int = 0) -> torch.Tensor:
    """A new buffer holding ``tensor`` ``(R, H, L, D)`` in its first R rows and L columns, with spare columns
    (and ``spare_rows`` rows) after."""
    rows, heads, length, dim = tensor.shape
    buffer = tensor.new_empty((rows + spare_rows, heads, length + DECODE_HEADROOM, dim))
    buffer[:rows, :, :length].copy_(tensor)
    return buffer


def _install(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor, rows: int, length: int) -> None:
    """Make the first ``rows`` rows and ``length`` columns of ``keys`` / ``values`` the layer's cache (their
    spare rows and columns become an :class:`InPlaceAppendLayer`'s buffer)."""
    if isinstance(layer, InPlaceAppendLayer):
        layer._key_buffer, layer._value_buffer = keys, values
    layer.keys, layer.values = keys[:rows, :, :length], values[:rows, :, :length]


def _spare(layer: DynamicLayer) -> int:
    return DECODE_HEADROOM if isinstance(layer, InPlaceAppendLayer) else 0


def _spare_row_count(layer: DynamicLayer) -> int:
    return ROW_HEADROOM if isinstance(layer, InPlaceAppendLayer) else 0


@torch.inference_mode()  # caches are inference tensors (made in prefills and decode steps): in place needs it
def gather_rows(layer: DynamicLayer, rows: torch.Tensor, first: int = 0) -> None:
    """Keep ``rows`` (in that order, repeats allowed) and drop the first ``first`` columns, in ONE copy.

    For an :class:`InPlaceAppendLayer` the copy lands in a buffer with spare columns, so the next decode
    step does not copy again; the result equals ``index_select`` then slicing. When the layer's cache is
    its buffer, ``first`` is 0 and ``rows`` only drops rows (strictly increasing), the kept rows move up
    within the buffer instead: only the rows after the first dropped one are copied.
    """
    keys, values = layer.keys, layer.values
    if keys is None or values is None:
        raise RuntimeError("gather_rows needs a filled cache layer.")
    kept = rows.tolist()
    if first == 0 and isinstance(layer, InPlaceAppendLayer) and _compact(layer, kept):
        return
    length = keys.shape[-2] - first
    out = []
    for tensor in (keys, values):
        buffer = tensor.new_empty(
            (len(rows) + _spare_row_count(layer), tensor.shape[1], length + _spare(layer), tensor.shape[3])
        )
        torch.index_select(tensor[:, :, first:], 0, rows.to(tensor.device), out=buffer[: len(rows), :, :length])
        out.append(buffer)
    _install(layer, out[0], out[1], len(rows), length)


def _compact(layer: InPlaceAppendLayer, kept: list[int]) -> bool:
    """Move the rows ``kept`` (strictly increasing) to the top of the layer's buffer, in order; False (nothing
    done) when the cache is not a view of its buffer or ``kept`` is not such a list."""
    keys, values = layer.keys, layer.values
    buffers = (layer._key_buffer, layer._value_buffer)
    if keys is None or values is None or buffers[0] is None or buffers[1] is None:
        return False
    length = keys.shape[-2]
    if not (
        _is_buffer_view(keys, buffers[0], length - 1)  # (length - 1: a full buffer is still its own view)
        and _is_buffer_view(values, buffers[1], length - 1)
        and kept
        and all(a < b for a, b in zip(kept, kept[1:]))
        and kept[-1] < keys.shape[0]
    ):
        return False
    runs: list[tuple[int, int, int]] = []  # (destination, source, rows) of each block of consecutive kept rows
    for destination, source in enumerate(kept):
        if runs and runs[-1][0] + runs[-1][2] == destination and runs[-1][1] + runs[-1][2] == source:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((destination, source, 1))
    for buffer in cast(tuple[torch.Tensor, torch.Tensor], buffers):
        for destination, source, n in runs:
            shift = source - destination
            # in pieces of at most ``shift`` rows, first to last: a piece never overlaps the rows it is copied to,
            # and the rows it overwrites were already moved
            for start in range(0, n if shift else 0, shift or 1):
                size = min(shift, n - start)
                buffer[destination + start : destination + start + size, :, :length].copy_(
                    buffer[source + start : source + start + size, :, :length]
                )
    _install(layer, buffers[0], buffers[1], len(kept), length)
    return True


@torch.inference_mode()
def concat_rows(first: DynamicLayer, second: DynamicLayer) -> None:
    """The rows of ``first`` then those of ``second`` in ``first``, right-aligned.

    The shorter layer's rows get zero columns on the left (the caller masks them), as
    ``torch.cat`` after left padding would give; ``second`` is left as it was. When ``first`` is an
    :class:`InPlaceAppendLayer` whose buffer has room for ``second``'s rows and ``second`` is no longer
    than ``first``, only ``second`` is copied (into the spare rows); otherwise every row is copied once,
    into a new buffer with :data:`ROW_HEADROOM` spare rows.
    """
    k1, v1, k2, v2 = first.keys, first.values, second.keys, second.values
    if k1 is None or v1 is None or k2 is None or v2 is None:
        raise RuntimeError("concat_rows needs two filled cache layers.")
    rows1, rows2, length1, length2 = k1.shape[0], k2.shape[0], k1.shape[-2], k2.shape[-2]
    if isinstance(first, InPlaceAppendLayer) and length2 <= length1:
        buffers = (first._key_buffer, first._value_buffer)
        if all(
            buffer is not None and _is_buffer_view(tensor, buffer, length1) and rows1 + rows2 <= buffer.shape[0]
            for tensor, buffer in zip((k1, v1), buffers)
        ):
            for buffer, b in zip(buffers, (k2, v2)):
                assert buffer is not None  # checked above
                buffer[rows1 : rows1 + rows2, :, : length1 - length2].zero_()
                buffer[rows1 : rows1 + rows2, :, length1 - length2 : length1].copy_(b)
            _install(first, *cast(tuple[torch.Tensor, torch.Tensor], buffers), rows1 + rows2, length1)
            return
    length = max(length1, length2)
    out = []
    for a, b in ((k1, k2), (v1, v2)):
        buffer = a.new_empty((rows1 + rows2 + _spare_row_count(first), a.shape[1], length + _spare(first), a.shape[3]))
        buffer[:rows1, :, : length - length1].zero_()
        buffer[:rows1, :, length - length1 : length].copy_(a)
        buffer[rows1 : rows1 + rows2, :, : length - length2].zero_()
        buffer[rows1 : rows1 + rows2, :, length - length2 : length].copy_(b)
        out.append(buffer)
    _install(first, out[0], out[1], rows1 + rows2, length)


#: Layer types that hold plain, growing keys and values (no sliding window, no recurrent state).
PLAIN_LAYER_TYPES: tuple[type[DynamicLayer], ...] = (DynamicLayer, InPlaceAppendLayer)


def new_cache(config: Any) -> DynamicCache:
    """An empty :class:`DynamicCache` for a model ``config``; plain layers become :class:`InPlaceAppendLayer`.

    Sliding-window or other special layers are left as transformers builds them.
    """
    cache = DynamicCache(config=config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [InPlaceAppendLayer() for _ in cache.layers]
    return cache
