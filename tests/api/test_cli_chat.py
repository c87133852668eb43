"""``ragqa chat`` in-process (Typer's CliRunner, questions on stdin) with tiny models."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from api.cli import app

DOC = "Paris is the capital of France. The Seine flows through Paris.\n\nOslo is the capital of Norway.\n"


def test_chat_reads_questions_until_exit(home, tmp_path, tiny_st_model, tiny_llm):
    env = {
        "RAGQA_HOME": str(home),
        "RAGQA_INGEST__EMBEDDER__MODEL": str(tiny_st_model),
        "RAGQA_GENERATOR__MODEL": str(tiny_llm),
        "RAGQA_QA__MAX_NEW_TOKENS": "3",
    }
    doc = tmp_path / "cities.txt"
    doc.write_text(DOC)
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(doc), "-c", "cities"], env=env).exit_code == 0

    questions = "What is the capital of France?\n\nWhich river flows through it?\nexit\nNever asked?\n"
    r = runner.invoke(app, ["chat", "-c", "cities", "--method", "history", "-k", "2"], input=questions, env=env)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.count("answer:") == 2 and r.stdout.count("sources:") == 2
    assert "(as: What is the capital of France? Which river flows through it?)" in r.stdout
    assert "cities.txt" in r.stdout and "Never asked" not in r.stdout

    r = runner.invoke(
        app, ["chat", "-c", "cities", "--json"], input="Where is Oslo?\nWhat is it the capital of?", env=env
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    turns = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]  # EOF ends the chat
    assert [t["question"] for t in turns] == ["Where is Oslo?", "What is it the capital of?"]
    assert turns[0]["standalone_question"] == "Where is Oslo?" and turns[1]["citations"]

    r = runner.invoke(app, ["chat", "-c", "cities", "--method", "guess"], input="q?\n", env=env)
    assert r.exit_code == 2 and "unknown --method" in r.stderr
    r = runner.invoke(app, ["chat", "-c", "missing"], input="q?\n", env=env)
    assert r.exit_code == 2 and "missing" in r.stderr
