"""bench/decode_step.py on the CPU: the step breakdown and the linear-layer kernels, on a tiny Llama of the same code."""

from __future__ import annotations

import pytest

from bench import decode_step as D


@pytest.fixture
def tiny(monkeypatch):
    from transformers import LlamaConfig

    def config():
        return LlamaConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        )  # fmt: skip

    monkeypatch.setattr(D, "smollm2_135m_config", config)


def test_cpu_breakdown_splits_the_step_time_into_its_parts(tiny):
    b = D.cpu_breakdown(rows=3, steps=2)
    assert b["dtype"] in ("bfloat16", "float32")
    assert b["wall_ms"] > 0 and b["linear_ms"] > 0 and b["attention_ms"] > 0 and b["other_ms"] >= 0
    assert b["linear_ms"] + b["attention_ms"] + b["other_ms"] == pytest.approx(b["wall_ms"], rel=1e-6)


def test_int8_kernels_are_timed_at_every_row_count(tiny):
    rows = D.int8_against_bf16([1, 5])
    assert [r[0] for r in rows] == [1.0, 5.0]
    assert all(len(r) == 6 and all(t > 0 for t in r[1:]) for r in rows)


def test_float32_int8_kernels_are_timed_at_every_row_count():
    rows = D.int8_against_float32([1, 3])
    assert [r[0] for r in rows] == [1.0, 3.0]
    assert all(len(r) == 4 and all(t > 0 for t in r[1:]) for r in rows)


def test_invariance_checks_count_bit_identical_rows():
    """--invariance: a row with no padding is its own reference; the counts cover every row count and pad."""
    import torch

    from bench.decode_step import attention_invariance, linear_invariance

    li = linear_invariance(torch.float32, [1, 2, 64], shapes=[(8, 16)])
    assert li["checks"] == 3 and li["equal"] >= 1  # 64 rows is the reference itself
    a = attention_invariance(torch.bfloat16, 40, [0, 16, 3])
    assert a["pads"] == 3 and a["equal"] >= 1 and a["max_diff"] >= 0.0  # pad 0 is the reference itself


def test_a_step_is_timed_in_the_main_thread_and_in_a_worker_thread(tiny):
    ms = D.step_ms_by_thread(rows=2, steps=2)
    assert set(ms) == {"main thread", "worker thread"} and all(v > 0 for v in ms.values())
