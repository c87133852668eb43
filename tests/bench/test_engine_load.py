"""bench/engine_load.py on tiny in-process models: recorded retrievals replay exactly, and both engines answer
the same questions (batched greedy answers equal the serialised ones)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from bench import engine_load
from ingest import hardware
from rag.config import RetrieverConfig
from rag.retriever import Retriever
from tests.rag.capitals import capitals_workspace

QUESTIONS = ["What is the capital of France?", "Where is the Colosseum?", "What lies at the head of the Oslofjord?"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory, tiny_st_model):
    root = tmp_path_factory.mktemp("engine")
    ws = capitals_workspace(root, tiny_st_model)
    retriever = Retriever(ws.embedder, RetrieverConfig(k=3))
    with ws.open("c", readonly=True) as coll:
        live = {q: retriever.retrieve(coll, q, 3) for q in QUESTIONS}
        data = engine_load.make_recording(QUESTIONS, lambda q: live[q], 3, coll.calibration())
    path = root / "retrievals.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path, live


def test_a_recorded_retrieval_replays_as_the_live_one(recording):
    path, live = recording
    data = json.loads(path.read_text(encoding="utf-8"))
    replay = engine_load.ReplayRetriever(
        {r["question"]: engine_load.retrieval_from_json(r) for r in data["retrievals"]}
    )
    for question, want in live.items():
        got = replay.retrieve(None, f"  {question} ", 3)  # QAPipeline strips the question; so does the lookup
        assert [c.text for c in got.chunks] == [c.text for c in want.chunks]
        assert [c.source for c in got.chunks] == [c.source for c in want.chunks]
        np.testing.assert_allclose(got.log_posterior, want.log_posterior, atol=1e-12)
        assert got.max_dense_score == pytest.approx(want.max_dense_score, abs=1e-6)
    with pytest.raises(KeyError, match="record again"):
        replay.retrieve(None, "a question never recorded")


def test_both_engines_answer_and_batched_equals_serialised(recording, tiny_llm, tmp_path, monkeypatch):
    # float32 on every CPU: with bf16 (AMX / AVX512-BF16 CPUs) and its int8 decode copy, a batch of more rows than
    # rag.int8_decode.MAX_INT8_ROWS reads the bf16 weights, so batched answers need not be token-identical there
    monkeypatch.setenv(hardware.ENV_OVERRIDE, "0")
    path, _ = recording
    args = argparse.Namespace(
        retrievals=str(path),
        model=str(tiny_llm),
        gguf_file=None,
        device="cpu",
        models_dir=str(tmp_path / "models"),
        clients="1,2",
        engines="serialised,batched",
        duration=2.0,
        check=3,
        seed=0,
        json=str(tmp_path / "out.json"),
        write=False,
    )
    assert engine_load.run(args) == 0
    results = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    for clients in ("1", "2"):
        for name in ("serialised", "batched"):
            phase = results["phases"][clients][name]
            assert phase["errors"] == 0 and phase["answers"] >= 1 and phase["p95_s"] >= phase["p50_s"] > 0
        assert results["phases"][clients]["batched"]["steps"] > 0  # the scheduler decoded them
        assert results["phases"][clients]["serialised"]["steps"] == 0
    assert results["check"] == {"checked": 3, "identical": 3, "differ_examples": []}
    assert results["batched"]["device"] == "cpu"
    table = engine_load.render(results)
    assert "| 2 |" in table and "3/3 identical" in table
