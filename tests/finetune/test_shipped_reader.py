"""The reader adapter shipped in data/adapters/reader: it records its recipe and data, installs for the
bundled model, and changes what the bundled model says (the real SmolLM2-135M; slow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from finetune.data import file_sha256
from finetune.shipped import REPO_DIR, install_shipped, read_shipped
from rag.config import GeneratorConfig
from rag.generator import Generator

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_reader_records_its_recipe_and_data():
    meta = read_shipped(REPO_DIR)
    assert meta["base_model"] == "SmolLM2-135M-Instruct" and meta["kind"] in ("sft", "rlhf")
    recipe = ROOT / meta["recipe"]["path"]
    assert file_sha256(recipe) == meta["recipe"]["sha256"], "the recipe changed: retrain with `make adapter`"
    assert meta["recipe"]["text"] == recipe.read_text(encoding="utf-8")
    squad = ROOT / "data" / "benchmarks" / meta["data"]["squad_file"]
    assert file_sha256(squad) == meta["data"]["squad_sha256"]
    assert meta["data"]["held_out_article"] not in meta["data"]["train_articles"]
    ev = meta["evaluation"]
    assert ev["heldout_article"] == meta["data"]["held_out_article"] and ev["heldout_f1"] > 0.3
    if meta["kind"] == "rlhf":  # SFT then RLHF: both steps are recorded, and RLHF's gain over its SFT step
        assert "rlhf" in meta["recipe"]["text"] and meta["sft"]["steps"] > 0
        assert len(meta["data"]["rlhf_prompts_sha256"]) == 64
        assert ev["heldout_f1"] == pytest.approx(ev["sft_heldout_f1"] + ev["rlhf_vs_sft_f1"]["diff"])
    # It is the shipped default only for answer styles it was trained on.
    assert "short" in meta["default_styles"]
    assert "full" not in meta["default_styles"] or meta["options"].get("full_style_rate", 0) > 0


def test_shipped_reader_installs_and_changes_the_bundled_models_output(tmp_path):
    adapters = tmp_path / "adapters"
    assert install_shipped(REPO_DIR, adapters, "Other-Model").status == "skipped"
    assert install_shipped(REPO_DIR, adapters, "SmolLM2-135M-Instruct").status == "installed"
    assert install_shipped(REPO_DIR, adapters, "SmolLM2-135M-Instruct").status == "up-to-date"
    # A metadata-only change of the shipped folder (same weights) reaches the installed copy.
    meta_file = adapters / "reader" / "ragqa_adapter.json"
    stale = json.loads(meta_file.read_text())
    stale.pop("default_styles")
    meta_file.write_text(json.dumps(stale))
    assert install_shipped(REPO_DIR, adapters, "SmolLM2-135M-Instruct").status == "installed"
    assert json.loads(meta_file.read_text())["default_styles"] == ["short"]

    home = Path(os.environ.get("RAGQA_HOME", "~/.ragqa")).expanduser()
    gen = Generator(GeneratorConfig(device="cpu", dtype="float32", int8_decode="off"), home / "models", adapters)
    context = (
        "Southern California contains a Mediterranean climate, with infrequent rain and many sunny days. "
        "Summers are hot and dry, while winters are a bit warm or mild and wet."
    )
    ids = torch.tensor([gen.prompt_ids("What kind of climate does Southern California have?", [context])])
    with torch.no_grad():
        with gen.session(None) as model:
            bare = model(input_ids=ids).logits[0, -1]
        with gen.session("reader") as model:
            tuned = model(input_ids=ids).logits[0, -1]
    assert not torch.allclose(bare, tuned, atol=1e-3)
    # Trained to copy the span from the context: the gold span's first token gains probability.
    gold = gen.tokenizer.encode("Mediterranean", add_special_tokens=False)[0]
    assert torch.log_softmax(tuned, -1)[gold] > torch.log_softmax(bare, -1)[gold]
