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

Exactness: attention reads the same numbers in the same order (a strided view instead of a
contiguous copy), so logits equal the plain layer's (tested bit for bit). ``crop`` and the other
inherited methods keep working: a cropped view of the buffer is recognised and the next step
overwrites the dropped columns.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

#: Spare columns given to a buffer when a decode step has to (re)allocate it: 32 steps per copy.
DECODE_HEADROOM = 32


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
        key_buffer, value_buffer = self._key_buffer, self._value_buffer
        if (
            key_buffer is None
            or value_buffer is None
            or not _is_buffer_view(keys, key_buffer, length)
            or not _is_buffer_view(values, value_buffer, length)
        ):
            key_buffer = self._key_buffer = _grow(keys)
            value_buffer = self._value_buffer = _grow(values)
        key_buffer[:, :, length : length + 1].copy_(key_states)
        value_buffer[:, :, length : length + 1].copy_(value_states)
        self.keys = key_buffer[:, :, : length + 1]
        self.values = value_buffer[:, :, : length + 1]
        return self.keys, self.values

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


def _is_buffer_view(tensor: torch.Tensor, buffer: torch.Tensor, length: int) -> bool:
    """True when ``tensor`` is the first ``length`` columns of ``buffer`` and one more column fits."""
    return (
        tensor.data_ptr() == buffer.data_ptr()
        and tensor.dtype == buffer.dtype
        and tensor.device == buffer.device
        and tensor.shape[:2] == buffer.shape[:2]
        and tensor.shape[3] == buffer.shape[3]
        and tensor.stride() == buffer.stride()
        and length < buffer.shape[-2]
    )


def _grow(tensor: torch.Tensor) -> torch.Tensor:
    """A new buffer holding ``tensor`` ``(R, H, L, D)`` in its first L columns, with spare columns after."""
    rows, heads, length, dim = tensor.shape
    buffer = tensor.new_empty((rows, heads, length + DECODE_HEADROOM, dim))
    buffer[:, :, :length].copy_(tensor)
    return buffer


def _install(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
    """Make the first ``length`` columns of ``keys`` / ``values`` the layer's cache (their spare columns
    become an :class:`InPlaceAppendLayer`'s buffer)."""
    if isinstance(layer, InPlaceAppendLayer):
        layer._key_buffer, layer._value_buffer = keys, values
    layer.keys, layer.values = keys[:, :, :length], values[:, :, :length]


def _spare(layer: DynamicLayer) -> int:
    return DECODE_HEADROOM if isinstance(layer, InPlaceAppendLayer) else 0


def gather_rows(layer: DynamicLayer, rows: torch.Tensor, first: int = 0) -> None:
    """Keep ``rows`` (in that order, repeats allowed) and drop the first ``first`` columns, in ONE copy.

    For an :class:`InPlaceAppendLayer` the copy lands in a buffer with spare columns, so the next decode
    step does not copy again; the result equals ``index_select`` then slicing.
    """
    keys, values = layer.keys, layer.values
    if keys is None or values is None:
        raise RuntimeError("gather_rows needs a filled cache layer.")
    length = keys.shape[-2] - first
    out = []
    for tensor in (keys, values):
        buffer = tensor.new_empty((len(rows), tensor.shape[1], length + _spare(layer), tensor.shape[3]))
        torch.index_select(tensor[:, :, first:], 0, rows.to(tensor.device), out=buffer[:, :, :length])
        out.append(buffer)
    _install(layer, out[0], out[1], length)


def concat_rows(first: DynamicLayer, second: DynamicLayer) -> None:
    """The rows of ``first`` then those of ``second`` in ``first``, right-aligned, in ONE copy.

    The shorter layer's rows get zero columns on the left (the caller masks them), as
    ``torch.cat`` after left padding would give; ``second`` is left as it was.
    """
    k1, v1, k2, v2 = first.keys, first.values, second.keys, second.values
    if k1 is None or v1 is None or k2 is None or v2 is None:
        raise RuntimeError("concat_rows needs two filled cache layers.")
    rows1, length1, length2 = k1.shape[0], k1.shape[-2], k2.shape[-2]
    length = max(length1, length2)
    out = []
    for a, b in ((k1, k2), (v1, v2)):
        buffer = a.new_empty((rows1 + b.shape[0], a.shape[1], length + _spare(first), a.shape[3]))
        buffer[:rows1, :, : length - length1].zero_()
        buffer[:rows1, :, length - length1 : length].copy_(a)
        buffer[rows1:, :, : length - length2].zero_()
        buffer[rows1:, :, length - length2 : length].copy_(b)
        out.append(buffer)
    _install(first, out[0], out[1], length)


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
