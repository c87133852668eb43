"""`ragqa finetune sft|reward|dpo|rlhf|rag` (options generated from the job models) and `ragqa adapters`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

from api.cli import app
from api.cli import finetune as finetune_cli
from api.cli.job_options import job_options
from finetune.config import SFTJob
from tests.conftest import DATA

ROOT = Path(__file__).resolve().parents[2]
TRAINERS = {t.kind: t for t in finetune_cli.TRAINERS}


def command(kind: str):
    """The click command Typer builds for ``ragqa finetune KIND``."""
    group = typer.main.get_command(app)
    return group.commands["finetune"].commands[kind]


def flags_of(kind: str) -> set[str]:
    return {flag for p in command(kind).params for flag in (*p.opts, *p.secondary_opts)}


def readme_flags() -> dict[str, set[str]]:
    """Flags the README's fine-tuning section shows per command, plus the options listed for all of them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Fine-tuning") : text.index("### Fine-tuning on GPUs")]
    per_kind: dict[str, set[str]] = {kind: set() for kind in TRAINERS}
    for kind, rest in re.findall(r"ragqa finetune (sft|reward|dpo|rlhf|rag) ([^\n]*)", section):
        per_kind[kind] |= set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])\b", rest))
    options = section[section.index("- **Options**") : section.index("- **Bad input**")]
    common = set(re.findall(r"--[a-z][a-z-]*", options)) | {"--config", "--resume", "--overwrite", "--json"}
    return {kind: flags | common for kind, flags in per_kind.items()}


@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_every_job_field_is_an_option(kind):
    flags = flags_of(kind)
    for opt in job_options(TRAINERS[kind].job):
        assert set(opt.flags) <= flags, f"{opt.key} has no option {opt.flags} on `ragqa finetune {kind}`"
    assert {"--config", "--json"} <= flags


@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_the_readme_flags_still_work(kind):
    missing = readme_flags()[kind] - flags_of(kind)
    assert not missing, f"`ragqa finetune {kind}` lost {sorted(missing)} (documented in README.md)"


def test_help_lists_the_generated_options():
    result = CliRunner().invoke(app, ["finetune", "rlhf", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    for flag in (
        "--reward-model",
        "--prompts",
        "--num-generations",
        "--algorithm",
        "--lora-r",
        "--lr",
        "--epochs",
        "--target-modules",
        "--config",
        "--json",
    ):
        assert flag in result.stdout
    assert "KL penalty coefficient" in result.stdout  # the help text comes from the field's description


def test_a_new_job_field_gets_an_option():
    class WiderSFTJob(SFTJob):
        label_smoothing: float = Field(0.0, ge=0, description="Label smoothing of the answer loss.")

    opts = {o.key: o for o in job_options(WiderSFTJob)}
    assert opts["label_smoothing"].flags == ("--label-smoothing",)
    assert "Label smoothing" in opts["label_smoothing"].help and "default 0.0" in opts["label_smoothing"].help
    assert opts["lora.r"].flags == ("--lora-r",) and opts["train.learning_rate"].flags == ("--lr",)
    assert opts["lora.target_modules"].value("q_proj, v_proj,") == ["q_proj", "v_proj"]


def test_a_clashing_field_name_is_refused():
    class Clash(SFTJob):
        config: str = ""  # would be --config, which every command declares itself

    with pytest.raises(TypeError, match="--config"):
        job_options(Clash)


def test_bad_values_exit_2_with_a_clear_error(home, tmp_path):
    runner = CliRunner()
    data = str(DATA / "finetune" / "sft.jsonl")
    typed = runner.invoke(app, ["finetune", "sft", "--data", data, "--output", "x", "--lora-r", "abc"])
    assert typed.exit_code == 2 and "--lora-r" in typed.output
    for args, field in (
        (["--lora-r", "0"], "lora.r"),
        (["--prompt-style", "sideways"], "prompt_style"),
        (["--eval-split", "1.5"], "train.eval_split"),
    ):
        result = runner.invoke(app, ["finetune", "sft", "--data", data, "--output", "x", *args, "--json"])
        assert result.exit_code == 2, result.output
        error = json.loads(result.stdout.strip().splitlines()[-1])
        assert error["ok"] is False and field in error["error"] and "invalid fine-tune options" in error["error"]
    bad_name = runner.invoke(app, ["finetune", "dpo", "--data", data, "--output", "no spaces please"])
    assert bad_name.exit_code == 2 and "adapter names use" in bad_name.stderr
    missing = runner.invoke(app, ["finetune", "rlhf", "--output", "x", "--json"])
    assert missing.exit_code == 2 and "prompts" in missing.stdout
    # the reward model is needed only for reward=model|both (reward=f1 scores against the gold answers)
    no_rm = runner.invoke(app, ["finetune", "rlhf", "--prompts", data, "--output", "x", "--reward", "both", "--json"])
    assert no_rm.exit_code == 2 and "--reward-model" in no_rm.stdout
    no_config = runner.invoke(app, ["finetune", "reward", "--config", str(tmp_path / "nope.yaml"), "--json"])
    assert no_config.exit_code == 2 and "does not exist" in no_config.stdout


def test_command_line_and_config_file_make_the_job(home, tmp_path, monkeypatch):
    """Dry run: every option reaches the validated job; command-line options win over --config."""
    seen = {}

    def record(trainer, job, workspace):
        seen["job"], seen["workspace"] = job, workspace
        raise typer.Exit(0)  # stop before training

    monkeypatch.setattr(finetune_cli.Trainer, "run", record)
    config = tmp_path / "job.yaml"
    config.write_text("output: from-file\nlora: {r: 4, alpha: 8}\ntrain: {epochs: 1, seed: 7}\ngold_fallback: true\n")
    data = DATA / "finetune" / "sft.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "sft",
            "--config",
            str(config),
            "--data",
            str(data),
            "--output",
            "cli-wins",
            "-c",
            "docs",
            "-k",
            "3",
            "--lora-r",
            "8",
            "--target-modules",
            "q_proj,v_proj",
            "--lr",
            "0.001",
            "--max-steps",
            "2",
            "--no-gold-fallback",
            "--resume",
            "--prompt-style",
            "stuffed",
        ],
    )
    assert result.exit_code == 0, result.output
    job = seen["job"]
    assert isinstance(job, SFTJob)
    assert (job.output, job.data, job.collection, job.k) == ("cli-wins", data, "docs", 3)
    assert (job.lora.r, job.lora.alpha, job.lora.target_modules) == (8, 8, ["q_proj", "v_proj"])
    assert (job.train.learning_rate, job.train.max_steps, job.train.epochs, job.train.seed) == (0.001, 2, 1, 7)
    assert job.gold_fallback is False and job.resume is True and job.prompt_style == "stuffed"
    assert job.overwrite is False  # not given: the model's default
    assert seen["workspace"].home == home


@pytest.mark.slow
def test_sft_trains_a_tiny_adapter(home, tiny_llm, tmp_path):
    """A real run through the command: two steps of SFT on the tiny model; the adapter is registered."""
    runner = CliRunner()
    env = {"RAGQA_GENERATOR__MODEL": str(tiny_llm)}
    result = runner.invoke(
        app,
        [
            "finetune",
            "sft",
            "--data",
            str(DATA / "finetune" / "sft.jsonl"),
            "--output",
            "tiny-sft",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--max-length",
            "128",
            "--lora-r",
            "2",
            "--json",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["kind"] == "sft"
    listed = json.loads(runner.invoke(app, ["adapters", "list", "--json"]).stdout)
    assert [a["name"] for a in listed["adapters"]] == ["tiny-sft"]


# -- ragqa adapters -------------------------------------------------------------------------------
@pytest.fixture()
def adapters_home(home: Path) -> Path:
    root = home / "adapters"
    (root / "demo-sft").mkdir(parents=True)
    (root / "demo-sft" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny", "r": 8}))
    (root / "demo-sft" / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
    (root / "demo-sft" / "ragqa_adapter.json").write_text(
        json.dumps(
            {
                "kind": "sft",
                "base_model": "tiny-llm",
                "created_at": 1_700_000_000.0,
                "metrics": {"train_loss": 1.25, "note": "not shown in the list"},
                "options": {"lora": {"r": 8}},
            }
        )
    )
    (root / "bare").mkdir()
    (root / "bare" / "adapter_config.json").write_text("{}")
    (root / "not-an-adapter").mkdir()
    return home


def test_adapters_list_show_delete(adapters_home):
    runner = CliRunner()
    listed = runner.invoke(app, ["adapters", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    adapters = {a["name"]: a for a in json.loads(listed.stdout)["adapters"]}
    assert set(adapters) == {"bare", "demo-sft"}
    assert adapters["demo-sft"]["kind"] == "sft" and adapters["demo-sft"]["base_model"] == "tiny-llm"
    assert adapters["bare"]["kind"] == "unknown" and adapters["demo-sft"]["size_bytes"] > 2048

    table = runner.invoke(app, ["adapters", "list"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "demo-sft" in table.stdout and "train_loss=1.25" in table.stdout
    assert "not shown" not in table.stdout

    shown = runner.invoke(app, ["adapters", "show", "demo-sft", "--json"])
    info = json.loads(shown.stdout)
    assert shown.exit_code == 0 and info["meta"]["options"] == {"lora": {"r": 8}}
    human = runner.invoke(app, ["adapters", "show", "demo-sft"])
    assert human.exit_code == 0 and json.loads(human.stdout)["name"] == "demo-sft"

    missing = runner.invoke(app, ["adapters", "show", "nope", "--json"])
    assert missing.exit_code == 2 and "not found" in json.loads(missing.stdout)["error"]

    refused = runner.invoke(app, ["adapters", "delete", "demo-sft"], input="n\n")
    assert refused.exit_code == 1 and (adapters_home / "adapters" / "demo-sft").is_dir()
    deleted = runner.invoke(app, ["adapters", "delete", "demo-sft", "--yes"])
    assert deleted.exit_code == 0 and "deleted adapter demo-sft" in deleted.stdout
    assert not (adapters_home / "adapters" / "demo-sft").exists()
    assert [a["name"] for a in json.loads(runner.invoke(app, ["adapters", "list", "--json"]).stdout)["adapters"]] == [
        "bare"
    ]
    again = runner.invoke(app, ["adapters", "delete", "demo-sft", "--yes", "--json"])
    assert again.exit_code == 2 and json.loads(again.stdout)["ok"] is False


def test_adapters_list_on_an_empty_workspace(home):
    result = CliRunner().invoke(app, ["adapters", "list"])
    assert result.exit_code == 0 and "no adapters yet" in result.stdout


def test_finetune_squad_writes_training_files(tmp_path):
    """`ragqa finetune squad` turns a SQuAD file into SFT + held-out files; bad input exits 2 with a reason."""
    runner = CliRunner()
    out = tmp_path / "train"
    squad = DATA / "benchmarks" / "squad2_dev_public.json"
    result = runner.invoke(
        app, ["finetune", "squad", str(squad), "-o", str(out), "--held-out", "2", "--unanswerable", "0.5", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["held_out_articles"] and summary["answerable"] > 0
    assert summary["unanswerable"] == round(0.5 * summary["answerable"])
    lines = (out / "sft.jsonl").read_text().splitlines()
    assert len(lines) == summary["answerable"] + summary["unanswerable"]
    assert (out / "heldout.json").exists()

    bad = tmp_path / "not-squad.json"
    bad.write_text('{"hello": 1}')
    result = runner.invoke(app, ["finetune", "squad", str(bad), "-o", str(tmp_path / "x"), "--json"])
    assert result.exit_code == 2
    assert "SQuAD" in json.loads(result.stdout.strip().splitlines()[-1])["error"]
