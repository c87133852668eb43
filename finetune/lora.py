"""LoRA adapter algebra: merging an adapter into a base copy, stacking two adapters into one, and storing one
in a smaller float type.

Preference training (DPO, RLHF) starts from an SFT adapter and must stay close to it, so the SFT
model is the reference. We merge the SFT adapter into an in-memory copy of the base weights, train
a fresh LoRA on top (its "adapter off" view is then exactly the SFT model, the reference TRL uses
for PEFT models), and save the sum as one ordinary adapter over the base by stacking the two:

    s1 B1 A1 + s2 B2 A2 = [s1 B1 | s2 B2] [A1 ; A2]      (rank r1 + r2, scaling 1)

so ``ragqa ask --adapter NAME`` loads it like any other.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from finetune.errors import LoraStackError

logger = logging.getLogger(__name__)


def _scaling(cfg: dict) -> float:
    r = cfg["r"]
    alpha = cfg["lora_alpha"]
    return alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r


def _load(dir_: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    cfg = json.loads((dir_ / "adapter_config.json").read_text())
    weights = load_file(str(dir_ / "adapter_model.safetensors"))
    return cfg, weights


def stack_adapters(first: Path, second: Path, out: Path) -> None:
    """Write to ``out`` one LoRA adapter equal to applying ``first`` then ``second`` (both over the same base).

    Modules adapted by only one of the two keep a zero block for the other. Rank-pattern
    configs (per-module ranks) and non-LoRA saved modules are not supported.
    """
    from safetensors.torch import save_file

    cfg1, w1 = _load(Path(first))
    cfg2, w2 = _load(Path(second))
    for cfg in (cfg1, cfg2):
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            raise LoraStackError("adapters with per-module rank or alpha patterns cannot be stacked")
        if cfg.get("peft_type", "LORA") != "LORA":
            raise LoraStackError(f"only LoRA adapters can be stacked, got {cfg.get('peft_type')}")
    s1, s2 = _scaling(cfg1), _scaling(cfg2)
    r1, r2 = cfg1["r"], cfg2["r"]
    prefixes = sorted({k[: -len(".lora_A.weight")] for k in list(w1) + list(w2) if k.endswith(".lora_A.weight")})
    merged: dict[str, torch.Tensor] = {}
    for p in prefixes:
        a1, b1 = w1.get(f"{p}.lora_A.weight"), w1.get(f"{p}.lora_B.weight")
        a2, b2 = w2.get(f"{p}.lora_A.weight"), w2.get(f"{p}.lora_B.weight")
        ref_a, ref_b = (a1, b1) if a1 is not None else (a2, b2)
        assert ref_a is not None and ref_b is not None, f"{p}: lora_A without lora_B"
        in_f, out_f = ref_a.shape[1], ref_b.shape[0]
        dtype = ref_a.dtype
        if a1 is None:
            a1, b1 = torch.zeros(r1, in_f, dtype=dtype), torch.zeros(out_f, r1, dtype=dtype)
        if a2 is None:
            a2, b2 = torch.zeros(r2, in_f, dtype=dtype), torch.zeros(out_f, r2, dtype=dtype)
        assert b1 is not None and b2 is not None, f"{p}: lora_A without lora_B"
        merged[f"{p}.lora_A.weight"] = torch.cat([a1, a2], dim=0).contiguous()
        merged[f"{p}.lora_B.weight"] = torch.cat([b1 * s1, b2 * s2], dim=1).contiguous()
    others = {k: v for k, v in {**w1, **w2}.items() if ".lora_A." not in k and ".lora_B." not in k}
    if others:
        raise LoraStackError(f"adapters carry non-LoRA weights ({sorted(others)[:3]}...) and cannot be stacked")
    cfg = dict(cfg2)
    cfg["r"] = r1 + r2
    cfg["lora_alpha"] = r1 + r2  # scaling 1: the scales are folded into B
    cfg["use_rslora"] = False
    cfg["target_modules"] = sorted(set(cfg1.get("target_modules") or []) | set(cfg2.get("target_modules") or []))
    l1, l2 = cfg1.get("layers_to_transform"), cfg2.get("layers_to_transform")
    cfg["layers_to_transform"] = None if (l1 is None or l2 is None) else sorted(set(l1) | set(l2))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))


def cast_adapter(dir_: Path, dtype: torch.dtype) -> int:
    """Rewrite the adapter folder's weights in ``dtype`` (e.g. bfloat16: half the file of float32); returns the new
    file size in bytes. The loader casts them to the model's dtype, so only the stored precision changes."""
    from safetensors.torch import save_file

    dir_ = Path(dir_)
    _, weights = _load(dir_)
    path = dir_ / "adapter_model.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
    return path.stat().st_size


def merge_adapter(model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    """``model`` (a plain causal LM) with the adapter's weights merged in; returns a plain model."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return peft_model.merge_and_unload()


def adapter_lora_options(adapter_dir: Path) -> dict:
    """The LoRA options an adapter was trained with (to train its continuation alike)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return {
        "r": cfg["r"],
        "alpha": cfg["lora_alpha"],
        "target_modules": sorted(cfg.get("target_modules") or []),
        "layers_to_transform": cfg.get("layers_to_transform"),
    }
