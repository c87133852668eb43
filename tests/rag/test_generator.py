"""rag.generator's device set-up: attention kernels on a GPU, dtypes on a CPU."""

from __future__ import annotations

import pytest
import torch

from ingest import hardware
from rag.config import GeneratorConfig
from rag.generator import configure_attention, pick_dtype


@pytest.fixture
def cudnn_switch(monkeypatch):
    """torch's process-wide cuDNN-attention switch, recorded instead of flipped (no GPU here)."""
    state = {"enabled": True, "calls": []}

    def enable(on: bool) -> None:
        state["calls"].append(on)
        state["enabled"] = on

    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", enable)
    monkeypatch.setattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: state["enabled"])
    return state


def test_generation_on_a_gpu_turns_cudnn_attention_off_once(cudnn_switch):
    cfg = GeneratorConfig()
    assert cfg.cudnn_attention is False
    assert configure_attention(torch.device("cuda", 0), cfg) is True
    assert configure_attention(torch.device("cuda", 0), cfg) is True  # a second generator: already off
    assert cudnn_switch["calls"] == [False]


def test_cudnn_attention_stays_where_asked_or_off_the_gpu(cudnn_switch):
    assert configure_attention(torch.device("cuda"), GeneratorConfig(cudnn_attention=True)) is False
    assert configure_attention(torch.device("cpu"), GeneratorConfig()) is False
    assert cudnn_switch["calls"] == [] and cudnn_switch["enabled"] is True


@pytest.mark.parametrize(("flags", "dtype"), [({"avx512_bf16"}, torch.bfloat16), ({"avx2"}, torch.float32)])
def test_auto_dtype_on_a_cpu_follows_its_bf16_unit(monkeypatch, flags, dtype):
    monkeypatch.delenv(hardware.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert pick_dtype("auto", torch.device("cpu")) == dtype
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float32", torch.device("cpu")) == torch.float32
