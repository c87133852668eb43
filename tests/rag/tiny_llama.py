"""The tiny random Llama the decoding, prefix-cache and scheduler tests run on (built in-process, no download)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(
    vocab_size: int = 32, seed: int = 0, *, max_positions: int = 64, dtype: torch.dtype = torch.float32
) -> LlamaForCausalLM:
    """2 layers, hidden 16; the head is scaled x8 so that greedy / beam choices are not near-ties."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
    )
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model.to(dtype)
