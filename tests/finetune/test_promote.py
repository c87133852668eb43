"""The eval gate on tiny models: a trained adapter is promoted over the bare model, a noise adapter is
refused against it, ``ask`` follows the promoted default, ``--force`` and ``rollback`` work through the
CLI, and the comparison is the real evaluation (``rag.evaluate``)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from api.cli import app
from finetune.gate import GateEvaluator, GateOptions, GateRefused, load_eval_examples, promote, run_gate
from rag.adapter_defaults import AdapterDefaults
from tests.finetune.conftest import PARIS_QUESTIONS, finetune_workspace, gate_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def cli(args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
    assert result.exit_code in ok, f"{args} -> {result.exit_code}\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_gate_promotes_the_better_adapter_refuses_noise_and_ask_follows(gate_home, gate_base, tiny_st_model, tiny_llm):
    env = gate_env(gate_home, tiny_st_model, tiny_llm)
    question = PARIS_QUESTIONS[0][0]
    before = cli(["ask", question, "-c", "facts"], env)
    assert before["adapter"] is None and before["adapter_source"] == "none"

    # the trained adapter beats the bare model on the held-out questions: promoted
    out = cli(["adapters", "promote", "good", "-c", "facts", "--eval", str(gate_base["heldout"])], env)
    gate = out["gate"]
    assert out["promoted"] and gate["passed"]
    assert gate["current"]["adapter"] is None and gate["current"]["source"] == "none"
    assert gate["candidate"]["metrics"]["f1"] == pytest.approx(1.0)
    assert gate["current"]["metrics"]["f1"] < 0.5
    assert gate["candidate"]["metrics"]["n"] == 4 and gate["candidate"]["metrics"]["n_unanswerable"] == 1

    after = cli(["ask", question, "-c", "facts"], env)
    assert after["adapter"] == "good" and after["adapter_source"] == "collection"
    assert after["answer"].strip().rstrip(".") == "Paris"
    bare = cli(["ask", question, "-c", "facts", "--adapter", "none"], env)  # "none": the bare model
    assert bare["adapter"] is None and bare["answer"] == before["answer"]
    # (a named adapter still wins: test_rest_api_uses_the_default_and_none_means_bare)

    # the noise adapter is worse than the default: refused, exit 1, nothing changed
    pointer = (gate_home / "adapter_defaults.json").read_bytes()
    refused = cli(["adapters", "promote", "noise", "-c", "facts", "--eval", str(gate_base["heldout"])], env, ok=(1,))
    assert refused["ok"] is False and not refused["promoted"]
    assert refused["gate"]["current"]["adapter"] == "good"
    assert refused["gate"]["candidate"]["metrics"]["f1"] < refused["gate"]["current"]["metrics"]["f1"]
    assert "does not reach" in refused["error"]
    assert (gate_home / "adapter_defaults.json").read_bytes() == pointer

    # --force skips the gate (recorded); rollback restores the previous default, and ask follows
    forced = cli(["adapters", "promote", "noise", "-c", "facts", "--force"], env)
    assert forced["promoted"] and forced["entry"]["action"] == "force" and forced["gate"] is None
    assert cli(["ask", question, "-c", "facts"], env)["adapter"] == "noise"
    listed = {a["name"]: a for a in cli(["adapters", "list"], env)["adapters"]}
    assert listed["noise"]["default_for"] == ["collection facts"] and listed["good"]["default_for"] == []
    back = cli(["adapters", "rollback", "-c", "facts"], env)
    assert back["entry"]["adapter"] == "good" and back["answers_with"] == "good"
    assert cli(["ask", question, "-c", "facts"], env)["adapter"] == "good"
    log = AdapterDefaults(gate_home).scope("facts")["log"]
    assert [e["action"] for e in log] == ["promote", "force", "rollback"]
    assert log[0]["gate"]["candidate_f1"] == pytest.approx(1.0)


def test_server_default_and_bad_requests(gate_home, gate_base, tiny_st_model, tiny_llm):
    env = gate_env(gate_home, tiny_st_model, tiny_llm)
    wide = {**env, "COLUMNS": "250"}
    heldout = str(gate_base["heldout"])
    # neither or both scopes: a clear error
    assert "one of them" in cli(["adapters", "promote", "good", "--eval", heldout], env, ok=(2,))["error"]
    assert "not found" in cli(["adapters", "promote", "nope", "--server", "--eval", heldout], env, ok=(2,))["error"]
    assert "--eval" in cli(["adapters", "promote", "noise", "--server"], env, ok=(2,))["error"]
    assert "no previous default" in cli(["adapters", "rollback", "--server"], env, ok=(2,))["error"]
    # server-wide (human output): the training collection of 'good' answers the questions without --eval-collection
    human = CliRunner().invoke(app, ["adapters", "promote", "good", "--server", "--eval", heldout], env=wide)
    assert human.exit_code == 0, human.output
    assert "passes" in human.stdout and "F1" in human.stdout and "abstain R" in human.stdout
    assert "promoted 'good' to the default of the server" in human.stdout
    assert "via 'facts'" in human.stdout  # the training collection of 'good' answered the questions
    assert AdapterDefaults(gate_home).current(None) == "good"
    table = CliRunner().invoke(app, ["adapters", "list"], env=wide)
    assert table.exit_code == 0 and "default for" in table.stdout and "server" in table.stdout
    ans = cli(["ask", PARIS_QUESTIONS[1][0], "-c", "facts"], env)
    assert ans["adapter"] == "good" and ans["adapter_source"] == "server"
    again = cli(["adapters", "promote", "good", "--server", "--eval", heldout], env, ok=(2,))
    assert "already answers" in again["error"]


def test_gate_api_in_process(gate_home, gate_base, tiny_st_model, tiny_llm):
    """The library side: run_gate + promote refuse noise against the bare model (F1 0 vs 0 < margin)."""
    ws = finetune_workspace(gate_home, tiny_st_model, tiny_llm)
    evaluator = GateEvaluator.from_workspace(ws)
    examples = load_eval_examples(gate_base["heldout"])
    assert sum(e.impossible for e in examples) == 1
    result = run_gate(evaluator, "noise", "facts", GateOptions(eval=gate_base["heldout"], margin=0.01))
    assert not result.passed and result.current.adapter is None
    with pytest.raises(GateRefused):
        promote(AdapterDefaults(gate_home), "noise", "facts", result)
    assert AdapterDefaults(gate_home).current("facts") is None
    table = result.rows()
    assert [r[0] for r in table][:2] == ["F1", "EM"] and table[-1][1] == "4 / 1"


def make_shipped(gate_base, tiny_llm, dest):
    """A shipped-adapter folder as the repository holds one: PEFT files + meta with recipe and data hashes."""
    import hashlib
    import shutil

    shutil.copytree(gate_base["home"] / "adapters" / "good", dest)
    recipe = "sft:\n  data: train.jsonl\n  lora: {r: 8}\n"
    meta = {
        "kind": "sft",
        "base_model": str(tiny_llm),
        "recipe": {
            "path": "recipes/reader.yaml",
            "text": recipe,
            "sha256": hashlib.sha256(recipe.encode()).hexdigest(),
        },
        "data": {"train": {"path": "train.jsonl", "sha256": "ab" * 32}},
    }
    (dest / "ragqa_adapter.json").write_text(json.dumps(meta))
    return meta


def test_models_prepare_installs_the_shipped_default(gate_home, gate_base, tiny_st_model, tiny_llm, tmp_path):
    shipped = tmp_path / "shipped" / "reader"
    meta = make_shipped(gate_base, tiny_llm, shipped)
    env = {**gate_env(gate_home, tiny_st_model, tiny_llm), "RAGQA_SHIPPED_ADAPTER": str(shipped)}
    prepared = cli(["models", "prepare"], env)
    assert prepared["shipped_adapter"]["status"] == "installed"
    shown = cli(["adapters", "show", "reader"], env)
    assert shown["meta"]["shipped"] is True
    assert shown["meta"]["recipe"]["sha256"] == meta["recipe"]["sha256"] and shown["meta"]["data"] == meta["data"]
    question = PARIS_QUESTIONS[0][0]
    ans = cli(["ask", question, "-c", "facts"], env)
    assert ans["adapter"] == "reader" and ans["adapter_source"] == "shipped"
    assert ans["answer"].strip().rstrip(".") == "Paris"  # the shipped adapter loads and answers
    listed = {a["name"]: a for a in cli(["adapters", "list"], env)["adapters"]}
    assert listed["reader"]["default_for"] == ["shipped"]
    assert cli(["models", "prepare"], env)["shipped_adapter"]["status"] == "up-to-date"
    # a promoted default comes first
    cli(["adapters", "promote", "noise", "-c", "facts", "--force"], env)
    assert cli(["ask", question, "-c", "facts"], env)["adapter"] == "noise"
    # for another base model it is not installed, and an installed copy no longer answers

    from finetune.shipped import install_shipped

    report = install_shipped(shipped, tmp_path / "other-home" / "adapters", "SmolLM2-135M-Instruct")
    assert report.status == "skipped" and "configured generator" in report.reason
    assert not (tmp_path / "other-home" / "adapters" / "reader").exists()

    # an incomplete shipped folder is reported, not installed
    (shipped / "adapter_model.safetensors").unlink()
    broken = cli(["models", "prepare"], {**env, "RAGQA_HOME": str(tmp_path / "h2")})
    assert broken["shipped_adapter"]["status"] == "error" and "lacks" in broken["shipped_adapter"]["reason"]


def test_rest_api_uses_the_default_and_none_means_bare(gate_home, tiny_st_model, tiny_llm, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.auth import open_key_store
    from api.settings import Settings

    for name, value in gate_env(gate_home, tiny_st_model, tiny_llm).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    store = open_key_store(gate_home)
    _, key = store.create("admin")
    store.close()
    AdapterDefaults(gate_home).set("facts", "good", action="promote")
    h = {"Authorization": f"Bearer {key}"}
    body = {"collection": "facts", "question": PARIS_QUESTIONS[0][0]}
    with TestClient(create_app(settings, start_worker=False)) as client:
        r = client.post("/v1/ask", json=body, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["adapter"] == "good" and r.json()["adapter_source"] == "collection"
        assert r.json()["answer"].strip().rstrip(".") == "Paris"
        bare = client.post("/v1/ask", json={**body, "adapter": "none"}, headers=h).json()
        assert bare["adapter"] is None and bare["adapter_source"] == "none"
        named = client.post("/v1/ask", json={**body, "adapter": "noise"}, headers=h).json()
        assert named["adapter"] == "noise" and named["adapter_source"] == "request"
        assert client.post("/v1/ask", json={**body, "adapter": "nope"}, headers=h).status_code == 404
