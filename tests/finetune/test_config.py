"""Defaults of the fine-tune jobs (finetune/config.py): what a user gets without a recipe."""

from __future__ import annotations

from pathlib import Path

import yaml

from finetune.config import DPOJob, RLHFJob, SFTJob

ROOT = Path(__file__).resolve().parents[2]


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_sft_defaults_are_the_shipped_readers_recipe():
    """`ragqa finetune sft` with no options trains as the shipped reader was trained (its measured time and
    memory: BENCHMARKS.md, "Shipped reader adapter"), so the two cannot drift apart unnoticed."""
    recipe = yaml.safe_load((ROOT / "data" / "adapters" / "reader.recipe.yaml").read_text(encoding="utf-8"))
    job = _flatten(SFTJob(data=Path("x.jsonl"), output="a").model_dump())
    for key, value in _flatten(recipe["sft"]).items():
        assert job[key] == value, f"SFT default {key}={job[key]!r}, the shipped recipe has {value!r}"


def test_preference_jobs_keep_their_own_loops():
    dpo = DPOJob(data=Path("p.jsonl"), output="a")
    assert (dpo.train.batch_size, dpo.train.grad_accum, dpo.train.epochs) == (4, 2, 1.0)  # 8 pairs a step
    assert dpo.lora.top_layers is None
    rlhf = RLHFJob(prompts=Path("p.jsonl"), output="a")
    assert (rlhf.train.batch_size, rlhf.train.grad_accum) == (8, 1)  # 2 prompts x 4 samples a step
    assert SFTJob(data=Path("x"), output="a", lora={"top_layers": 0}).lora.top_layers == 0  # 0 = every block
