"""rag.int8_decode: int8 weights for few-row forwards, bf16 for long ones, parameters shared."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from rag.config import GeneratorConfig
from rag.decoding import _advance, prefill, rag_token_generate
from rag.generator import Generator
from rag.int8_decode import MAX_INT8_ROWS, Int8DecodeLinear, convert_for_int8_decode, quantize_rows, refresh_int8


def _linear(n_in: int = 64, n_out: int = 48, bias: bool = False) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(n_in, n_out, bias=bias).to(torch.bfloat16)


def _dequantised(layer: Int8DecodeLinear) -> torch.Tensor:
    return layer.weight_int8.float() * layer.weight_scale.float()[:, None]


def test_quantize_rows_error_is_at_most_half_a_step():
    w = torch.randn(7, 33) * torch.linspace(0.01, 3, 7)[:, None]  # rows of very different magnitude
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (7,)
    assert int(q.abs().max()) == 127
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())


@pytest.mark.parametrize("bias", [False, True])
def test_few_rows_read_int8_many_rows_read_bf16(bias):
    lin = _linear(bias=bias)
    layer = Int8DecodeLinear.from_linear(lin)
    assert layer.weight is lin.weight and layer.bias is lin.bias  # shared, not copied
    assert set(layer.state_dict()) == set(lin.state_dict())  # the int8 copy is not saved

    few = torch.randn(4, 1, 64).to(torch.bfloat16)  # a decode step of 4 rows
    expected = few.float() @ _dequantised(layer).T + (lin.bias.float() if bias else 0)
    got = layer(few)
    assert got.shape == (4, 1, 48) and got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), expected, atol=0.03, rtol=0.02)
    assert not torch.equal(got, lin(few))  # really the int8 weights

    many = torch.randn(2, MAX_INT8_ROWS, 64).to(torch.bfloat16)  # a prefill: bf16 weights, bit for bit
    assert torch.equal(layer(many), lin(many))


def test_unaligned_input_is_copied_not_crashed():
    layer = Int8DecodeLinear.from_linear(_linear())
    x = torch.randn(3, 64).to(torch.bfloat16)
    buffer = torch.zeros(3 * 64 + 1, dtype=torch.bfloat16)
    shifted = buffer[1:].view(3, 64)  # 2 bytes off the allocator's alignment
    shifted.copy_(x)
    assert torch.equal(layer(shifted), layer(x))


def test_refresh_follows_a_changed_weight():
    layer = Int8DecodeLinear.from_linear(_linear())
    x = torch.randn(2, 64).to(torch.bfloat16)
    before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(2)
    assert torch.equal(layer(x), before)  # stale until refreshed
    refresh_int8(nn.Sequential(layer))
    assert torch.allclose(layer(x).float(), 2 * before.float(), atol=0.05, rtol=0.02)


def _tiny_bf16_llama(hidden: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def test_convert_keeps_tied_weights_and_skips_unsupported_shapes():
    model = _tiny_bf16_llama()
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert convert_for_int8_decode(model) == n_linear
    assert isinstance(model.lm_head, Int8DecodeLinear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert convert_for_int8_decode(model) == 0  # idempotent

    odd = _tiny_bf16_llama(hidden=40)  # K = 40 is not a multiple of 16: the kernel would be wrong
    converted = convert_for_int8_decode(odd)
    assert not isinstance(odd.model.layers[0].self_attn.q_proj, Int8DecodeLinear)
    assert isinstance(odd.model.layers[0].mlp.down_proj, Int8DecodeLinear)  # K = 80
    assert converted == 2  # the two down projections
    f32 = _tiny_bf16_llama(hidden=40).float()  # float32 weights: fbgemm's kernel takes any K
    assert convert_for_int8_decode(f32) == n_linear
    assert f32.lm_head.weight is f32.model.embed_tokens.weight


@torch.inference_mode()
def test_decoding_with_int8_weights_stays_close_to_bf16():
    prompts = [list(range(1, 15)), list(range(20, 32)), list(range(40, 56))]  # 3 x 16 padded rows > MAX_INT8_ROWS
    reference = _tiny_bf16_llama()
    model = _tiny_bf16_llama()
    convert_for_int8_decode(model)
    ref, got = prefill(reference, prompts), prefill(model, prompts)
    for a, b in zip(ref.past_key_values.layers, got.past_key_values.layers):  # prefill: bf16 weights in both
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # ... except the head, which only sees the last position of each row (logits_to_keep=1)
    assert (ref.next_logprobs.exp() - got.next_logprobs.exp()).abs().max() < 0.02
    for token in (17, 40):
        _advance(reference, ref, torch.full((3,), token))
        _advance(model, got, torch.full((3,), token))
        assert (ref.next_logprobs.exp() - got.next_logprobs.exp()).abs().max() < 0.02
    doc = torch.log_softmax(torch.tensor([0.5, 0.1, -0.2]), dim=0)
    out = rag_token_generate(model, prompts, doc, max_new_tokens=4, eos_token_ids=None)
    assert len(out.token_ids) == 4 and out.logprob < 0


def test_lora_wraps_an_int8_layer():
    from peft import LoraConfig, get_peft_model

    model = _tiny_bf16_llama()
    convert_for_int8_decode(model)
    x = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        plain = model(input_ids=x).logits
    torch.manual_seed(1)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).to(torch.bfloat16)
    base = peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base, Int8DecodeLinear)
    with torch.inference_mode():
        adapted = peft_model(input_ids=x).logits
        with peft_model.disable_adapter():
            off = peft_model(input_ids=x).logits
    assert not torch.allclose(adapted, plain)
    assert torch.equal(off, plain)


def test_generator_setting(tiny_llm, tmp_path, caplog):
    def layers(**cfg) -> int:
        gen = Generator(GeneratorConfig(model=str(tiny_llm), **cfg), tmp_path / "models")
        gen.warm_up()
        return gen.int8_layers

    assert layers(dtype="bfloat16", int8_decode="auto") > 0
    assert layers(dtype="bfloat16", int8_decode="off") == 0
    assert layers(dtype="float32", int8_decode="auto") == 0  # float32 keeps batched answers equal to solo ones
    assert layers(dtype="float32", int8_decode="on") > 0
    with caplog.at_level(logging.WARNING, logger="rag.generator"):
        assert layers(dtype="float16", int8_decode="on") == 0
    assert "needs a bfloat16 or float32 model" in caplog.text


@torch.inference_mode()
def test_float32_decode_steps_read_int8_and_decoding_stays_close():
    """float32 models: every one-token-per-sequence forward (a decode step, any batch size) uses fbgemm's dynamic
    int8 linear; prefill keeps the float32 weights bit for bit."""
    prompts = [list(range(1, 15)), list(range(20, 32)), list(range(40, 56))]
    reference = _tiny_bf16_llama().float()
    model = _tiny_bf16_llama().float()
    convert_for_int8_decode(model)
    layer = model.model.layers[0].mlp.down_proj
    for rows in (2, MAX_INT8_ROWS + 1, 64):
        step = torch.randn(rows, 1, layer.in_features)
        plain = torch.nn.functional.linear(step, layer.weight, layer.bias)
        assert not torch.equal(layer(step), plain)  # really int8, at any batch size
        assert torch.allclose(layer(step), plain, atol=0.05, rtol=0.05)
    chunk = torch.randn(2, 3, layer.in_features)  # several tokens per sequence: a prefill, float32 weights
    assert torch.equal(layer(chunk), torch.nn.functional.linear(chunk, layer.weight, layer.bias))
    ref, got = prefill(reference, prompts), prefill(model, prompts)
    for a, b in zip(ref.past_key_values.layers, got.past_key_values.layers):  # prefill: float32 weights in both
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    for token in (17, 40):
        _advance(reference, ref, torch.full((3,), token))
        _advance(model, got, torch.full((3,), token))
        assert (ref.next_logprobs.exp() - got.next_logprobs.exp()).abs().max() < 0.02


@pytest.mark.parametrize("bias", [False, True])
@torch.inference_mode()
def test_float32_int8_rows_do_not_depend_on_their_batch(bias):
    """Per-row activation scales: a row's int8 result is bit-identical alone and in any batch, whatever the other
    rows' magnitudes (fbgemm alone would quantise the whole batch with one scale)."""
    torch.manual_seed(0)
    layer = Int8DecodeLinear.from_linear(nn.Linear(96, 40, bias=bias))
    batch = torch.randn(37, 1, 96) * torch.logspace(-3, 2, 37)[:, None, None]  # rows of very different magnitude
    together = layer(batch)
    for start, rows in ((0, 1), (3, 1), (5, 4), (36, 1), (10, 17)):
        assert torch.equal(layer(batch[start : start + rows].clone()), together[start : start + rows])
    reference = torch.nn.functional.linear(batch, layer.weight, layer.bias)
    error = (together - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert float(error.max()) < 0.05  # per-token 7-bit activations and int8 weights: close to float32
    assert torch.equal(layer(torch.zeros(2, 1, 96)), layer.bias.expand(2, 1, 40) if bias else torch.zeros(2, 1, 40))


def test_the_int8_row_limit_follows_the_cpu_bf16_unit():
    from rag.int8_decode import default_max_rows

    assert default_max_rows("amx_bf16") == 32
    assert default_max_rows("avx512_bf16") == 4  # bf16 matmuls beat int8 past ~6 rows there
    assert default_max_rows(None) == 4
