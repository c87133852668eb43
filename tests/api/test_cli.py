"""The `ragqa` command line end to end, in-process with Typer's CliRunner, on the sample corpus in data/
(one subprocess test checks the installed entry points)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from tests.conftest import DATA, SQUAD, ragqa_cmd

SAMPLE = DATA / "sample"


class Result:
    """What a command left: exit status, stdout and stderr (as a subprocess would see them)."""

    def __init__(self, result) -> None:
        self.returncode = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr


def run(args, env, ok=(0,)):
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    proc = Result(result)
    assert proc.returncode in ok, f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_json(args, env, ok=(0,)):
    proc = run(args + ["--json"], env, ok)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json must print exactly one JSON object, got:\n{proc.stdout}"
    return json.loads(lines[0]), proc.returncode


@pytest.fixture()
def env(home):
    """Variables for the command (the ``home`` fixture already cleared the caller's RAGQA_*)."""
    return {"RAGQA_HOME": str(home)}


@pytest.mark.parametrize("cmd", [ragqa_cmd(), [sys.executable, "-m", "api.cli"]], ids=["ragqa", "python-m"])
def test_entry_points_start(cmd, env):
    proc = subprocess.run(
        cmd + ["finetune", "--help"], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("sft", "reward", "dpo", "rlhf", "rag", "synth"):
        assert name in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ingest_search_documents_collections(env, tmp_path):
    corpus = tmp_path / "sample"
    shutil.copytree(SAMPLE, corpus)
    report, _ = run_json(["ingest", str(corpus), "-c", "s"], env)
    assert report["added"] == 7 and report["failed"] == [] and report["skipped_unsupported"] == 1
    assert report["chunks"] > 10 and report["ok"]

    again, _ = run_json(["ingest", str(corpus), "-c", "s"], env)
    assert again["unchanged"] == 7 and again["chunks_embedded"] == 0

    found, _ = run_json(["search", "graph-based approximate nearest neighbour index", "-c", "s", "-k", "3"], env)
    assert len(found["hits"]) == 3
    assert found["hits"][0]["source"].endswith("faiss-index-types.html")
    zh, _ = run_json(["search", "检索增强生成", "-c", "s", "-k", "1"], env)
    assert zh["hits"][0]["source"].endswith("rag-overview-zh.txt")

    listing, _ = run_json(["collections", "list"], env)
    assert [c["name"] for c in listing["collections"]] == ["s"]
    shown, _ = run_json(["collections", "show", "s"], env)
    assert (
        shown["embedder"] == "sentence-transformers/all-MiniLM-L6-v2"
        and shown["dim"] == 384
        and shown["index"] == "flat"
    )

    docs, _ = run_json(["documents", "list", "-c", "s"], env)
    faq = [d for d in docs["data"] if d["source"].endswith("faq.jsonl")]
    assert len(faq) == 8 and docs["count"] == shown["documents"]
    deleted, _ = run_json(["documents", "delete", "-c", "s", "--id", faq[0]["doc_id"]], env)
    assert deleted["deleted"] == 1
    deleted, _ = run_json(["documents", "delete", "-c", "s", "--source", str(corpus / "faq.jsonl")], env)
    assert deleted["deleted"] == 7
    after, _ = run_json(["search", "How do I choose the chunk size?", "-c", "s", "-k", "20"], env)
    assert all(not h["source"].endswith("faq.jsonl") for h in after["hits"])

    # Human-readable output too.
    text = run(["search", "crash safety", "-c", "s", "-k", "2"], env).stdout
    assert "1." in text and "ingestion-guide.md" in text

    run_json(["collections", "delete", "s", "--yes"], env)
    listing, _ = run_json(["collections", "list"], env)
    assert listing["count"] == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bad_input_is_reported_and_the_rest_lands(env, tmp_path):
    good = tmp_path / "good.md"
    good.write_text("# Good\n\nThis file is fine and should be searchable.")
    corrupt = tmp_path / "corrupt.docx"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a real docx")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    report, code = run_json(
        ["ingest", str(good), str(corrupt), str(empty), str(tmp_path / "nope.pdf"), "-c", "b"], env, ok=(1,)
    )
    assert code == 1 and report["added"] == 1 and not report["ok"]
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failed"]}
    assert set(reasons) == {"corrupt.docx", "empty.txt", "nope.pdf"}
    hits, _ = run_json(["search", "searchable file", "-c", "b", "-k", "1"], env)
    assert hits["hits"][0]["source"] == str(good.resolve())

    missing, code = run_json(["search", "x", "-c", "missing"], env, ok=(2,))
    assert missing["ok"] is False and "not found" in missing["error"]
    err = run(["search", "x", "-c", "missing"], env, ok=(2,)).stderr
    assert "ragqa ingest" in err  # says what to do
    bad, _ = run_json(["ingest", str(good), "-c", "../evil"], env, ok=(2,))
    assert "invalid collection name" in bad["error"]
    nothing, _ = run_json(["documents", "delete", "-c", "b"], env, ok=(2,))
    assert "--id" in nothing["error"]


@pytest.mark.slow
def test_models_command(env):
    shown, _ = run_json(["models"], env)
    roles = {m["role"]: m for m in shown["models"]}
    assert roles["embedder"]["ready"] is True
    assert roles["generator"]["model"] == "SmolLM2-135M-Instruct" and roles["generator"]["kind"] == "bundled-gguf"
    assert roles["generator"]["ready"] is False  # not converted yet in an empty workspace


@pytest.mark.integration
def test_ask_and_eval_with_tiny_models(env, tmp_path, tiny_st_model, tiny_llm):
    env = dict(
        env,
        RAGQA_INGEST__EMBEDDER__MODEL=str(tiny_st_model),
        RAGQA_GENERATOR__MODEL=str(tiny_llm),
        RAGQA_QA__MAX_NEW_TOKENS="3",
        RAGQA_QA__FULL_MAX_NEW_TOKENS="8",
    )
    mini = {
        "version": "v2.0",
        "data": [
            {
                "title": "Paris",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {
                                "id": "1",
                                "question": "What is the capital of France?",
                                "is_impossible": False,
                                "answers": [{"text": "Paris", "answer_start": 0}],
                            },
                            {
                                "id": "2",
                                "question": "What is the capital of Mars?",
                                "is_impossible": True,
                                "answers": [],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    data = tmp_path / "mini.json"
    data.write_text(json.dumps(mini))
    run_json(["ingest", str(data), "-c", "q"], env)
    ans, _ = run_json(["ask", "What is the capital of France?", "-c", "q", "--mode", "rag-sequence", "-k", "1"], env)
    assert ans["mode"] == "rag-sequence" and ans["citations"][0]["title"] == "Paris" and "answer" in ans
    assert ans["style"] == "full" and ans["generated_tokens"] <= 8  # the default style and its budget
    short, _ = run_json(["ask", "What is the capital of France?", "-c", "q", "--style", "short", "-k", "1"], env)
    assert short["style"] == "short" and short["generated_tokens"] <= 3
    assert short["abstained"] or [s["text"] for s in short["sentences"]] == [short["answer"]]
    run(["ask", "hi", "-c", "q", "--style", "long"], env, ok=(2,))  # click refuses the choice
    streamed = run(["ask", "What is the capital of France?", "-c", "q", "--stream", "-k", "1"], env).stdout
    assert streamed.startswith("answer: ") and "sources:" in streamed
    metrics, _ = run_json(["eval", "--data", str(data), "-c", "q", "--mode", "stuff", "-k", "1", "--calibrate"], env)
    for key in (
        "f1",
        "em",
        "recall_at_k",
        "abstain_precision",
        "abstain_recall",
        "p50_s",
        "p95_s",
        "tokens_per_s",
        "n",
    ):
        assert key in metrics
    assert metrics["n"] == 1 and metrics["recall_at_k"] == 1.0 and "calibration" in metrics
    bad, _ = run_json(["ask", "hi", "-c", "q", "--mode", "nonsense"], env, ok=(2,))
    assert "unknown mode" in bad["error"]
    bad, _ = run_json(["eval", "--data", str(SQUAD.parent / "README.md"), "-c", "q"], env, ok=(2,))
    assert "cannot read SQuAD" in bad["error"]
