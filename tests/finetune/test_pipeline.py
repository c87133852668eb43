"""``ragqa finetune pipeline`` on the tiny model: a 3-step recipe (sft -> gate -> promote) end to end,
a rerun that skips the trained step, a held-out split kept by the data step, and bad recipes."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

from api.cli import app
from finetune.errors import ConfigError
from finetune.pipeline import PREFS_STEP, OptionalStep, load_recipe
from tests.finetune.conftest import GOOD_TRAIN, PARIS_QUESTIONS, gate_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def cli(args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
    assert result.exit_code in ok, f"{args} -> {result.exit_code}\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def write_recipe(path, recipe: dict):
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_three_step_recipe_trains_gates_promotes_and_resumes(bare_home, gate_files, tiny_st_model, tiny_llm, tmp_path):
    env = gate_env(bare_home, tiny_st_model, tiny_llm)
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        {
            "name": "tiny",
            "sft": {
                "data": str(gate_files["train"]),
                "output": "tiny-sft",
                "collection": "facts",
                "k": 2,
                "lora": {"r": 8},
                "train": GOOD_TRAIN,
            },
            "gate": {"eval": str(gate_files["heldout"]), "margin": 0.05},
            "promote": {"collection": "facts"},
        },
    )
    t0 = time.perf_counter()
    report = cli(["finetune", "pipeline", "--config", str(recipe)], env)
    seconds = time.perf_counter() - t0
    assert report["ok"] and report["promoted"] and report["adapter"] == "tiny-sft"
    assert [(s["step"], s["status"]) for s in report["steps"]] == [
        ("sft", "done"),
        ("gate", "done"),
        ("promote", "done"),
    ]
    assert report["gate"]["candidate"]["metrics"]["f1"] > report["gate"]["current"]["metrics"]["f1"] + 0.05
    assert seconds < 120, f"the 3-step pipeline took {seconds:.0f} s"
    meta = cli(["adapters", "show", "tiny-sft"], env)["meta"]
    assert len(meta["pipeline"]["config_sha256"]) == 64 and meta["pipeline"]["recipe"]["path"] == str(recipe)
    ans = cli(["ask", PARIS_QUESTIONS[0][0], "-c", "facts"], env)
    assert ans["adapter"] == "tiny-sft" and ans["adapter_source"] == "collection"

    # a rerun skips the trained step (same config hash) and finds it already promoted
    again = cli(["finetune", "pipeline", "--config", str(recipe)], env)
    assert [s["status"] for s in again["steps"]] == ["skipped", "skipped", "skipped"]

    # human output: one line per step with its time, then the report table
    result = CliRunner().invoke(app, ["finetune", "pipeline", "--config", str(recipe)], env={**env, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[1/3] sft: skipped in" in result.stderr and "pipeline tiny" in result.stdout


def test_data_step_keeps_a_heldout_split_and_a_refusal_exits_1(
    bare_home, gate_files, tiny_st_model, tiny_llm, tmp_path
):
    env = gate_env(bare_home, tiny_st_model, tiny_llm)
    rows = [json.loads(line) for line in gate_files["train"].read_text().splitlines()]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        {
            "name": "weak",
            "workdir": "work",
            "data": {"source": "file", "path": "pairs.jsonl", "heldout": 0.25, "collection": "facts"},
            # one step at a tiny learning rate: no better than the bare model
            "sft": {"output": "weak-sft", "k": 2, "train": {**GOOD_TRAIN, "max_steps": 1, "learning_rate": 1e-6}},
            "gate": {"margin": 0.05},
            "promote": {"collection": "facts"},
        },
    )
    report = cli(["finetune", "pipeline", "--config", str(recipe)], env, ok=(1,))
    assert not report["ok"] and not report["promoted"]
    statuses = {s["step"]: s for s in report["steps"]}
    assert statuses["data"]["train"] == 6 and statuses["data"]["heldout"] == 2
    assert statuses["gate"]["status"] == "refused" and "promote" not in statuses
    heldout = tmp_path / "work" / "heldout.jsonl"
    assert report["gate"]["eval"] == str(heldout) and len(heldout.read_text().splitlines()) == 2
    meta = cli(["adapters", "show", "weak-sft"], env)["meta"]
    assert meta["heldout"]["path"] == str(heldout)  # `ragqa adapters promote weak-sft -c facts` finds it later
    assert not (bare_home / "adapter_defaults.json").exists()


def test_rlhf_step_takes_the_data_steps_questions_and_the_sft_adapter(
    bare_home, gate_files, tiny_st_model, tiny_llm, tmp_path
):
    env = gate_env(bare_home, tiny_st_model, tiny_llm)
    rows = [json.loads(line) for line in gate_files["train"].read_text().splitlines()]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_step = {**GOOD_TRAIN, "max_steps": 1}
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        {
            "name": "rl",
            "workdir": "work",
            "data": {"source": "file", "path": "pairs.jsonl", "collection": "facts"},
            "sft": {"output": "rl-sft", "k": 2, "train": one_step},
            "rlhf": {
                "output": "rl-rlhf",
                "reward": "f1",
                "max_completion_length": 4,
                "train": {**one_step, "batch_size": 4},
            },
        },
    )
    report = cli(["finetune", "pipeline", "--config", str(recipe)], env)
    assert [s["step"] for s in report["steps"]] == ["data", "sft", "rlhf"]
    assert all(s["status"] == "done" for s in report["steps"]), report["steps"]
    meta = cli(["adapters", "show", "rl-rlhf"], env)["meta"]
    options = meta["options"]
    assert options["prompts"] == str(tmp_path / "work" / "train.jsonl") and options["from_adapter"] == "rl-sft"
    assert options["reward"] == "f1" and meta["metrics"]["steps"] == 1
    # The data step's collection shows the prompts' passages as retrieval does (their title line), as for SFT.
    assert options["collection"] == "facts" and meta["metrics"]["prompts_retrieved_form"] == len(rows)


def test_bad_recipes_are_clear_errors(tmp_path):
    cases = [
        ({"sft": {"data": "x.jsonl", "output": "a", "epochz": 1}}, "unknown field"),
        ({"dpo": {"data": "p.jsonl"}, "rlhf": {"prompts": "q.jsonl", "reward_model": "rm"}}, "dpo or rlhf"),
        ({"sft": {"data": "x.jsonl"}, "promote": {"collection": "c"}}, "needs a gate"),
        ({"promote": {"force": True}}, "exactly one of"),
        ({"data": {"source": "synth"}}, "needs data.collection"),
        ({"stf": {}}, "stf"),
        ({}, "no step"),
    ]
    for i, (recipe, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            load_recipe(write_recipe(tmp_path / f"r{i}.yaml", recipe))
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_prefs_step_dispatch():
    """The prefs step loads finetune.prefs when installed; a missing module is reported as None (skipped)."""
    assert OptionalStep("finetune.no_such_module:run", "finetune.config:SFTJob").load() is None
    loaded = PREFS_STEP.load()
    assert loaded is None or callable(loaded[0])
