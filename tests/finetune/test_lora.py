"""Stacking two LoRA adapters into one equals applying them one after the other."""

from __future__ import annotations

import json

import pytest
import torch


def _random_adapter(model, path, r, alpha, seed, layers=None):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # B starts at zero; make the adapter do something
    pm.save_pretrained(str(path))
    return pm.unload()


def test_stacked_adapter_equals_sequential_merge(tmp_path, tiny_llm):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.lora import merge_adapter, stack_adapters

    base = AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
    _random_adapter(AutoModelForCausalLM.from_pretrained(tiny_llm), tmp_path / "a", r=4, alpha=8, seed=1)
    _random_adapter(AutoModelForCausalLM.from_pretrained(tiny_llm), tmp_path / "b", r=2, alpha=8, seed=2, layers=[1])
    stack_adapters(tmp_path / "a", tmp_path / "b", tmp_path / "ab")
    assert json.loads((tmp_path / "ab" / "adapter_config.json").read_text())["r"] == 6

    ids = torch.randint(5, 300, (2, 10))
    with torch.no_grad():
        sequential = merge_adapter(
            merge_adapter(AutoModelForCausalLM.from_pretrained(tiny_llm), tmp_path / "a"), tmp_path / "b"
        )
        expected = sequential(input_ids=ids).logits
        stacked = PeftModel.from_pretrained(base, str(tmp_path / "ab")).eval()(input_ids=ids).logits
        only_a = (
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llm), str(tmp_path / "a"))
            .eval()(input_ids=ids)
            .logits
        )
    assert torch.allclose(stacked, expected, atol=1e-4)
    assert not torch.allclose(only_a, expected, atol=1e-3)  # the second adapter really contributes


def test_stacking_refuses_rank_patterns(tmp_path, tiny_llm):
    from transformers import AutoModelForCausalLM

    from finetune.lora import LoraStackError, stack_adapters

    _random_adapter(AutoModelForCausalLM.from_pretrained(tiny_llm), tmp_path / "a", r=4, alpha=8, seed=1)
    _random_adapter(AutoModelForCausalLM.from_pretrained(tiny_llm), tmp_path / "b", r=4, alpha=8, seed=2)
    cfg = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {"q_proj": 2}
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoraStackError, match="rank"):
        stack_adapters(tmp_path / "a", tmp_path / "b", tmp_path / "ab")


def test_a_bfloat16_adapter_halves_the_file_and_loads_into_a_float32_model(tmp_path, tiny_llm):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from finetune.lora import cast_adapter

    _random_adapter(AutoModelForCausalLM.from_pretrained(tiny_llm), tmp_path / "a", r=4, alpha=8, seed=1)
    weights = tmp_path / "a" / "adapter_model.safetensors"
    before_size, before = weights.stat().st_size, load_file(str(weights))
    ids = torch.randint(5, 300, (2, 10))
    with torch.no_grad():
        f32 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llm), str(tmp_path / "a"))
        expected = f32.eval()(input_ids=ids).logits
        size = cast_adapter(tmp_path / "a", torch.bfloat16)
        after = load_file(str(weights))
        bf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llm), str(tmp_path / "a"))
        got = bf.eval()(input_ids=ids).logits
    assert {v.dtype for v in after.values()} == {torch.bfloat16} and set(after) == set(before)
    assert size == weights.stat().st_size < 0.6 * before_size
    assert next(p for n, p in bf.named_parameters() if "lora_A" in n).dtype == torch.float32  # cast on loading
    err = (got - expected).abs().max().item()
    assert 0 < err < 0.02 * expected.abs().max().item()  # bfloat16 rounding of the adapter only
