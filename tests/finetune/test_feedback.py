"""Feedback export: the REST API's answer log and feedback -> sft.jsonl and preferences.jsonl."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from api.answers import AnswerLog
from api.db import server_db_path
from finetune.data import read_jsonl
from finetune.feedback import FeedbackError, export_feedback, write_feedback_files
from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
from ingest.workspace import Workspace
from tests.conftest import ragqa_cmd


def answer(
    answer_id: str, question: str, text: str, citations: list[dict], collection: str = "c", abstained: bool = False
) -> dict:
    """An answer as ``rag.qa.Answer.to_dict()`` gives it to the server's log."""
    return {
        "answer_id": answer_id,
        "question": question,
        "answer": text,
        "raw_answer": text,
        "abstained": abstained,
        "abstain_reason": None,
        "mode": "stuff",
        "model": "tiny",
        "adapter": None,
        "collection": collection,
        "citations": citations,
        "timings": {"total_s": 0.1},
    }


def cite(text: str | None, chunk_id: str = "x", index: int = 1) -> dict:
    c = {
        "index": index,
        "chunk_id": chunk_id,
        "doc_id": "d",
        "title": "t",
        "source": "s",
        "score": 0.5,
        "posterior": 1.0,
        "contribution": 1.0,
    }
    if text is not None:
        c["text"] = text
    return c


@pytest.fixture()
def env(home):
    e = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    e["RAGQA_HOME"] = str(home)
    return e


def run(args, env):
    proc = subprocess.run(ragqa_cmd() + args, env=env, capture_output=True, text=True, timeout=300)
    return proc


def run_json(args, env):
    proc = run(args + ["--json"], env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"--json must print exactly one JSON object:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[0]), proc.returncode


@pytest.fixture()
def logged(home, tiny_st_model):
    """A server database with answers on collections c (real, for chunk look-ups) and other, and feedback."""
    docs = home.parent / "docs"
    docs.mkdir()
    (docs / "paris.txt").write_text("Paris is the capital of France. The Eiffel Tower was finished in 1889.")
    ws = Workspace(
        home,
        IngestConfig(
            embedder=EmbedderConfig(model=str(tiny_st_model)),
            chunking=ChunkingConfig(chunk_tokens=64, overlap_tokens=8),
        ),
    )
    assert ws.ingest([docs], "c").ok
    with ws.open("c", readonly=True) as coll:
        chunk = next(coll.store.iter_chunks())

    log = AnswerLog(server_db_path(home))
    ctx = "The Eiffel Tower was finished in 1889."
    log.log(
        answer("a1", "When was the Eiffel Tower finished?", "1889", [cite(ctx)]),
        generation=1,
        k=1,
        endpoint="ask",
        key_id="k",
    )
    log.log(
        answer("a2", "What is the capital of France?", "Lyon", [cite("Paris is the capital of France.")]),
        generation=1,
        k=1,
        endpoint="ask",
        key_id="k",
    )
    log.log(answer("a3", "Who built it?", "Nobody knows.", [cite(ctx)]), generation=1, k=1, endpoint="ask", key_id="k")
    log.log(
        answer("a4", "Which city is the capital?", "France", [cite(None, chunk.chunk_id)]),
        generation=1,
        k=1,
        endpoint="chat",
        key_id="k",
    )
    log.log(
        answer("a5", "What is in Rome?", "The Colosseum", [], collection="other"),
        generation=3,
        k=4,
        endpoint="ask",
        key_id="k",
    )
    log.add_feedback("a1", "up", None, "right", "k")
    log.add_feedback("a1", "up", None, "again", "k")  # duplicate example
    log.add_feedback("a2", "down", "Paris", "wrong city", "k")  # correction of a down-voted answer
    log.add_feedback("a3", "down", None, None, "k")  # nothing to learn from
    log.add_feedback("a4", "up", "Paris", "close", "k")  # corrected, context fetched by chunk id
    log.add_feedback("a5", "up", None, None, "k")  # no contexts logged at all
    log.close()
    return {"chunk_text": chunk.text, "ctx": ctx}


def test_export_function_rules():
    records = [
        {
            "question": "q1",
            "answer": "a1",
            "rating": "up",
            "correction": None,
            "contexts": ["c1"],
            "citations": [cite("c1")],
        },
        {
            "question": "q2",
            "answer": "bad",
            "rating": "down",
            "correction": "good",
            "contexts": ["c2"],
            "citations": [cite("c2")],
        },
        {"question": "q3", "answer": "meh", "rating": "down", "correction": None, "contexts": [], "citations": []},
        {"question": "q4", "answer": "same", "rating": "up", "correction": "Same.", "contexts": [], "citations": []},
        {
            "question": "q5",
            "answer": "old",
            "rating": "up",
            "correction": "new",
            "collection": "c",
            "contexts": [""],
            "citations": [cite(None, "id1"), cite(None, "gone", 2)],
        },
        {"question": " ", "answer": "x", "rating": "up", "correction": None},
    ]
    asked = []

    def fetch(collection, ids):
        asked.append((collection, ids))
        return {"id1": "fetched text"}

    ex = export_feedback(records, fetch_contexts=fetch)
    assert ex.sft == [
        {"question": "q1", "answer": "a1", "contexts": ["c1"]},
        {"question": "q2", "answer": "good", "contexts": ["c2"]},
        {"question": "q4", "answer": "Same."},
        {"question": "q5", "answer": "new", "contexts": ["fetched text"]},
    ]
    assert ex.preferences == [
        {"question": "q2", "chosen": "good", "rejected": "bad", "contexts": ["c2"]},
        {"question": "q5", "chosen": "new", "rejected": "old", "contexts": ["fetched text"]},
    ]
    assert asked == [("c", ["id1", "gone"])]
    r = ex.report
    assert r.records == 6 and r.sft == 4 and r.preferences == 2
    assert r.skipped == {"rated down without a correction": 1, "no question": 1}
    assert (r.contexts_logged, r.contexts_fetched, r.contexts_missing) == (2, 1, 1)
    with pytest.raises(FeedbackError, match="no feedback yet"):
        export_feedback([])


def test_export_writes_files_that_parse(tmp_path):
    records = [
        {
            "question": f"q{i}",
            "answer": f"a{i}",
            "rating": "down",
            "correction": f"c{i}",
            "contexts": ["ctx"],
            "citations": [cite("ctx")],
        }
        for i in range(3)
    ]
    paths = write_feedback_files(export_feedback(records), tmp_path / "out")
    assert [e.answer for e in read_jsonl(paths["sft"], "sft")] == ["c0", "c1", "c2"]
    prefs = read_jsonl(paths["preference" + "s"], "preference")
    assert [(e.chosen, e.rejected, e.contexts) for e in prefs] == [(f"c{i}", f"a{i}", ["ctx"]) for i in range(3)]


@pytest.mark.integration
def test_cli_export(logged, env, tmp_path):
    out = tmp_path / "fb"
    summary, code = run_json(["feedback", "export", "--output-dir", str(out)], env)
    assert code == 0 and summary["ok"]
    assert (
        summary["records"] == 6 and summary["sft"] == 4 and summary["preferences"] == 2 and summary["duplicates"] == 1
    )
    assert summary["skipped"] == {"rated down without a correction": 1}
    assert summary["collections"] == ["c", "other"]

    sft = read_jsonl(out / "sft.jsonl", "sft")
    assert [(e.question, e.answer) for e in sft] == [
        ("When was the Eiffel Tower finished?", "1889"),
        ("What is the capital of France?", "Paris"),
        ("Which city is the capital?", "Paris"),
        ("What is in Rome?", "The Colosseum"),
    ]
    assert sft[0].contexts == [logged["ctx"]]
    assert sft[2].contexts == [logged["chunk_text"]]  # citation logged without text: read from the collection
    assert sft[3].contexts == []
    prefs = read_jsonl(out / "preferences.jsonl", "preference")
    assert [(e.question, e.chosen, e.rejected) for e in prefs] == [
        ("What is the capital of France?", "Paris", "Lyon"),
        ("Which city is the capital?", "Paris", "France"),
    ]
    for line in (out / "preferences.jsonl").read_text().splitlines():
        assert set(json.loads(line)) == {"question", "chosen", "rejected", "contexts"}

    only_c, code = run_json(["feedback", "export", "--output-dir", str(tmp_path / "c"), "-c", "c"], env)
    assert code == 0 and only_c["records"] == 5 and only_c["collections"] == ["c"]

    text = run(["feedback", "export", "--output-dir", str(tmp_path / "h")], env)
    assert text.returncode == 0 and "preference pairs" in text.stdout

    none, code = run_json(["feedback", "export", "--output-dir", str(tmp_path / "n"), "-c", "nothing"], env)
    assert code == 2 and not none["ok"] and "no feedback yet on collection 'nothing'" in none["error"]


@pytest.mark.integration
def test_cli_errors(env, home, tmp_path):
    missing, code = run_json(["feedback", "export", "--output-dir", str(tmp_path / "x")], env)
    assert code == 2 and "no server database" in missing["error"]
    assert not (home / "server.sqlite").exists()  # the export never creates the database

    log = AnswerLog(server_db_path(home))
    empty, code = run_json(["feedback", "export", "--output-dir", str(tmp_path / "x")], env)
    assert code == 2 and "no feedback yet" in empty["error"]

    log.log(answer("d1", "q?", "wrong", []), generation=1, k=1, endpoint="ask", key_id=None)
    log.add_feedback("d1", "down", None, None, None)
    log.close()
    useless, code = run_json(["feedback", "export", "--output-dir", str(tmp_path / "x")], env)
    assert code == 2 and "none makes a training example" in useless["error"]
    assert not (tmp_path / "x").exists()
