"""rag.kv_cache: decode steps append in place, and every result equals transformers' DynamicLayer."""

from __future__ import annotations

import torch
from transformers import DynamicCache, MistralConfig
from transformers.cache_utils import DynamicLayer

from rag.decoding import PrefillState, _advance, _new_cache, prefill
from rag.kv_cache import DECODE_HEADROOM, InPlaceAppendLayer, concat_rows, gather_rows, new_cache
from tests.rag.tiny_llama import tiny_llama


def _kv(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, length, 4, generator=g), torch.randn(rows, 2, length, 4, generator=g)


def _same(a: DynamicLayer, b: DynamicLayer) -> None:
    assert a.keys is not None and b.keys is not None and a.values is not None and b.values is not None
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_every_kind_of_update_matches_the_plain_layer_bit_for_bit() -> None:
    plain, in_place = DynamicLayer(), InPlaceAppendLayer()
    seed = 0

    def update(rows: int, length: int) -> None:
        nonlocal seed
        seed += 1
        k, v = _kv(rows, length, seed)
        out_plain, out_in_place = plain.update(k, v), in_place.update(k, v)
        assert all(torch.equal(x, y) for x, y in zip(out_plain, out_in_place))
        _same(plain, in_place)

    update(3, 7)  # prefill
    for _ in range(DECODE_HEADROOM + 5):  # past one buffer's spare columns
        update(3, 1)
    for layer in (plain, in_place):
        layer.crop(-4)  # as teacher forcing leaves it
    _same(plain, in_place)
    update(3, 1)
    for layer in (plain, in_place):
        layer.reorder_cache(torch.tensor([2, 0, 0]))  # row selection, repeats included
    update(3, 1)
    update(3, 5)  # a multi-token forward in the middle
    update(3, 1)
    for layer in (plain, in_place):  # a left slice, as the scheduler drops all-padding columns
        assert layer.keys is not None and layer.values is not None
        layer.keys, layer.values = layer.keys[:, :, 2:], layer.values[:, :, 2:]
    update(3, 1)
    update(3, 1)


def test_decode_steps_write_into_one_buffer_and_leave_earlier_tensors_alone() -> None:
    layer = InPlaceAppendLayer()
    layer.update(*_kv(2, 6, 0))
    prefilled = layer.keys
    assert prefilled is not None
    before = prefilled.clone()
    layer.update(*_kv(2, 1, 1))
    assert layer.keys is not None
    buffer = layer.keys.data_ptr()
    snapshot, snapshot_copy = layer.keys, layer.keys.clone()
    for step in range(DECODE_HEADROOM - 1):  # the first step made DECODE_HEADROOM columns, it used one
        layer.update(*_kv(2, 1, 2 + step))
        assert layer.keys is not None and layer.keys.data_ptr() == buffer  # no copy of the cache
    assert torch.equal(prefilled, before)  # the prefill's tensor is not the buffer
    assert torch.equal(snapshot, snapshot_copy)  # a step writes after what an earlier view holds
    layer.update(*_kv(2, 1, 99))  # the spare columns are used up: a new buffer
    assert layer.keys is not None and layer.keys.data_ptr() != buffer
    assert layer.keys.shape[-2] == 6 + DECODE_HEADROOM + 1


def test_a_multi_token_update_never_writes_into_the_buffer() -> None:
    """Prefix-cache entries are slices of a prefill's keys: later decode steps must not touch them."""
    layer = InPlaceAppendLayer()
    layer.update(*_kv(1, 4, 0))
    layer.update(*_kv(1, 1, 1))  # now a buffer with spare columns
    layer.update(*_kv(1, 3, 2))  # teacher forcing / a prefill chunk: concatenated
    stored = layer.keys[0] if layer.keys is not None else None
    assert stored is not None
    stored_copy = stored.clone()
    for step in range(3):
        layer.update(*_kv(1, 1, 10 + step))
    assert torch.equal(stored, stored_copy)


def test_models_get_in_place_layers_and_special_layers_are_left_alone() -> None:
    model = tiny_llama()
    cache = _new_cache(model)
    assert cache.layers and all(type(layer) is InPlaceAppendLayer for layer in cache.layers)
    sliding = MistralConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        sliding_window=8,
    )
    assert all(type(layer) is not InPlaceAppendLayer for layer in new_cache(sliding).layers)


def test_greedy_decoding_gives_the_same_logits_as_the_plain_cache() -> None:
    model = tiny_llama(seed=3)
    prompts = [[1, 5, 7, 9, 2], [4, 4, 8], [3, 11, 12, 13, 14, 15, 6]]
    state = prefill(model, prompts, pad_token_id=0)
    assert all(type(layer) is InPlaceAppendLayer for layer in state.past_key_values.layers)
    plain = DynamicCache()
    for layer_index, layer in enumerate(state.past_key_values.layers):
        assert layer.keys is not None and layer.values is not None
        plain.update(layer.keys.clone(), layer.values.clone(), layer_index)
    reference = PrefillState(
        next_logprobs=state.next_logprobs.clone(),
        past_key_values=plain,
        attention_mask=state.attention_mask.clone(),
        next_positions=state.next_positions.clone(),
    )
    assert not any(type(layer) is InPlaceAppendLayer for layer in plain.layers)
    for _ in range(DECODE_HEADROOM + 8):
        tokens = state.next_logprobs.argmax(-1)
        assert torch.equal(tokens, reference.next_logprobs.argmax(-1))
        _advance(model, state, tokens)
        _advance(model, reference, tokens)
        assert torch.equal(state.next_logprobs, reference.next_logprobs)


def _filled(layer: DynamicLayer, rows: int, length: int, seed: int) -> DynamicLayer:
    layer.update(*_kv(rows, length, seed))
    layer.update(*_kv(rows, 1, seed + 1))  # an in-place layer now has its buffer
    return layer


def test_gather_rows_is_one_select_and_slice_and_the_next_step_does_not_copy() -> None:
    rows = torch.tensor([3, 0, 0, 2])
    for kind in (DynamicLayer, InPlaceAppendLayer):
        layer = _filled(kind(), 4, 9, 0)
        assert layer.keys is not None and layer.values is not None
        want_k, want_v = layer.keys.index_select(0, rows)[:, :, 2:], layer.values.index_select(0, rows)[:, :, 2:]
        gather_rows(layer, rows, first=2)
        assert torch.equal(layer.keys, want_k) and torch.equal(layer.values, want_v)
        pointer = layer.keys.data_ptr()
        layer.update(*_kv(4, 1, 5))
        assert (layer.keys.data_ptr() == pointer) == (kind is InPlaceAppendLayer)


def test_concat_rows_right_aligns_with_zero_columns_either_way_round() -> None:
    for kind in (DynamicLayer, InPlaceAppendLayer):
        for length1, length2 in ((9, 5), (5, 9), (7, 7)):
            a, b = _filled(kind(), 2, length1, 0), _filled(kind(), 3, length2, 10)
            assert a.keys is not None and b.keys is not None and a.values is not None and b.values is not None
            length = max(length1, length2) + 1

            def padded(t: torch.Tensor, length: int = length) -> torch.Tensor:
                return torch.cat([t.new_zeros((*t.shape[:2], length - t.shape[2], t.shape[3])), t], dim=2)

            want_k = torch.cat([padded(a.keys), padded(b.keys)])
            want_v = torch.cat([padded(a.values), padded(b.values)])
            b_keys = b.keys.clone()
            concat_rows(a, b)
            assert torch.equal(a.keys, want_k) and torch.equal(a.values, want_v)
            assert torch.equal(b.keys, b_keys)  # the second layer is read, not changed
            pointer = a.keys.data_ptr()
            a.update(*_kv(5, 1, 20))
            assert (a.keys.data_ptr() == pointer) == (kind is InPlaceAppendLayer)


def test_rows_join_a_batch_in_place_while_its_spare_rows_last() -> None:
    """After one copy (which leaves ROW_HEADROOM spare rows), a request no longer than the batch joins by writing
    only its own rows; the result equals the copying join's, and decode steps go on in the same buffer."""
    batch, copied = _filled(InPlaceAppendLayer(), 2, 9, 0), _filled(DynamicLayer(), 2, 9, 0)
    seed = 100
    joined_in_place = 0
    for rows, length in ((2, 6), (3, 10), (1, 4), (2, 11), (4, 3), (2, 12), (1, 12)):
        seed += 2
        new, new_copy = _filled(InPlaceAppendLayer(), rows, length, seed), _filled(DynamicLayer(), rows, length, seed)
        assert batch.keys is not None
        pointer, capacity = batch.keys.data_ptr(), batch._key_buffer.shape[0] if batch._key_buffer is not None else 0
        fits = batch.keys.shape[0] + rows <= capacity and new.keys.shape[-2] <= batch.keys.shape[-2]
        concat_rows(batch, new)
        concat_rows(copied, new_copy)
        _same(batch, copied)
        assert (batch.keys.data_ptr() == pointer) == fits
        joined_in_place += fits
        step = _kv(batch.keys.shape[0], 1, seed + 1)
        batch.update(*step)
        copied.update(*step)
        _same(batch, copied)
    assert joined_in_place >= 3


def test_rows_leave_a_batch_by_moving_the_later_rows_up_in_its_buffer() -> None:
    for kept in ([0, 1, 3, 4, 6], [2, 3, 4, 5, 6], [0, 1, 2], [1, 6], [5]):
        batch = _filled(InPlaceAppendLayer(), 7, 9, 0)
        assert batch.keys is not None and batch.values is not None
        rows = torch.tensor(kept)
        want_k, want_v = batch.keys.index_select(0, rows), batch.values.index_select(0, rows)
        pointer = batch.keys.data_ptr()
        gather_rows(batch, rows)
        assert torch.equal(batch.keys, want_k) and torch.equal(batch.values, want_v)
        assert batch.keys.data_ptr() == pointer  # compacted within the buffer, no new one
        step = _kv(len(kept), 1, 3)
        batch.update(*step)
        assert torch.equal(batch.keys[:, :, -1:], step[0]) and batch.keys.data_ptr() == pointer
    # reordering, repeats or dropped columns still go through one copy into a new buffer
    for kept, first in (([2, 0], 0), ([1, 1], 0), ([0, 2], 3)):
        batch = _filled(InPlaceAppendLayer(), 3, 9, 0)
        assert batch.keys is not None
        want = batch.keys.index_select(0, torch.tensor(kept))[:, :, first:]
        pointer = batch.keys.data_ptr()
        gather_rows(batch, torch.tensor(kept), first)
        assert torch.equal(batch.keys, want) and batch.keys.data_ptr() != pointer
