"""Per-collection abstention calibration (rag.calibration): the probe set, the query maker, the rule, the
stored thresholds, and "I don't know" with default settings on a real collection."""

from __future__ import annotations

import json

import pytest

from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
from ingest.workspace import Workspace
from rag.abstention import AbstentionRule
from rag.calibration import (
    RULE_VERSION,
    Calibration,
    CalibrationRule,
    Threshold,
    answerable_queries,
    calibrate_collection,
    calibrate_if_stale,
    choose_min_score,
    is_current,
    load_probes,
    read_calibration,
    recalibrate,
)
from rag.config import QAConfig
from tests.conftest import DATA

SAMPLE = DATA / "sample"

PROSE = (
    "The lighthouse keeper climbed the spiral stairs every evening to light the lamp. "
    "Ships passing the rocky headland relied on its beam to find the harbour entrance. "
    "In winter storms the keeper stayed awake through the night to keep the lens clean."
)


def test_probe_set_splits_are_large_disjoint_and_plain_questions():
    cal, bench = load_probes("calibration"), load_probes("bench")
    assert len(cal) + len(bench) >= 200 and len(bench) == 50
    assert not set(cal) & set(bench) and len(set(cal)) == len(cal) and len(set(bench)) == len(bench)
    assert all(q.endswith("?") for q in cal + bench)
    lowered = " ".join(cal + bench).lower()
    assert "python" not in lowered and "software" not in lowered


def test_probe_file_errors_say_what_is_wrong(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text("What is this?\n")
    with pytest.raises(ValueError, match="before any"):
        load_probes(path=bad)
    with pytest.raises(FileNotFoundError, match="rag/probes"):
        load_probes(path=tmp_path / "missing.txt")


def test_answerable_queries_are_deterministic_questions_from_the_text():
    texts = [PROSE, "def f(x): return {x: 1}", "Too short."]
    first = answerable_queries(texts, 10, seed=3)
    assert first == answerable_queries(texts, 10, seed=3)
    assert len(first) == 3  # the three sentences of PROSE; code and short fragments give none
    q = first[0]
    assert q.endswith("?") and q.split()[0] in {"What", "How", "Why", "Which", "When"}
    words = set(PROSE.lower().replace(".", "").split())
    assert all(w.lower() in words for q in first for w in q[:-1].split()[1:])
    assert answerable_queries([PROSE] * 5, 2) and len(answerable_queries([PROSE] * 5, 2)) == 2


def test_rule_is_just_above_the_probes_but_never_above_weak_answerable_scores():
    rule = CalibrationRule(probe_quantile=1.0, cap_quantile=0.0, margin=0.02, min_answerable=3)
    # well separated: just above the best probe
    assert choose_min_score([0.6, 0.7, 0.8], [0.1, 0.2, 0.3], rule) == Threshold(0.32, 0.3, 0.6)
    # overlapping: capped by the weakest answerable score (favour answering)
    assert choose_min_score([0.25, 0.7, 0.8], [0.1, 0.2, 0.3], rule) == Threshold(0.25, 0.3, 0.25)
    # too few answerable queries: off
    assert choose_min_score([0.9], [0.1], rule) == Threshold(None)
    default = choose_min_score([0.5 + i / 100 for i in range(40)], [i / 200 for i in range(81)])
    assert default.min_score == default.probe_score == 0.39  # the probes' 97.5th percentile
    with pytest.raises(ValueError):
        CalibrationRule(probe_quantile=1.5)


def _calibration(min_score):
    return Calibration(min_score, 1, "e", 20, 160, 0.3, 0.5, 0.975, 0.25, 0.0, 0.1, 0.0)


def test_explicit_settings_win_over_the_calibration():
    cal = _calibration(0.4)
    assert AbstentionRule.for_collection(QAConfig(), cal).min_score == 0.4  # default: the collection's
    assert AbstentionRule.for_collection(QAConfig(abstain_min_score=0.1), cal).min_score == 0.1
    assert AbstentionRule.for_collection(QAConfig(auto_abstain=False), cal).min_score is None
    assert AbstentionRule.for_collection(QAConfig(), None).min_score is None
    assert AbstentionRule.for_collection(QAConfig(), _calibration(None)).min_score is None
    cfg = QAConfig(abstain_min_logprob=-2.0)
    assert AbstentionRule.for_collection(cfg, cal) == AbstentionRule(0.4, -2.0, None)


@pytest.fixture()
def tiny_ws(tmp_path, tiny_st_model):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"d{i}.txt").write_text(f"Part {i}. {PROSE} Keeper number {i} wrote the log in the evening.")
    ws = Workspace(
        tmp_path / "home",
        IngestConfig(
            embedder=EmbedderConfig(model=str(tiny_st_model)),
            chunking=ChunkingConfig(chunk_tokens=64, overlap_tokens=8),
        ),
    )
    assert ws.ingest([docs], "c").ok
    return ws, docs


def test_stored_with_the_collection_and_recalibrated_after_a_change(tiny_ws):
    ws, docs = tiny_ws
    cal = recalibrate(ws, "c")
    assert cal is not None and cal.n_answerable >= 10 and cal.n_unanswerable == len(load_probes())
    assert cal.min_score is not None and cal.generation > 0 and cal.embedder == ws.embedder.name
    with ws.open("c", readonly=True) as coll:  # survives reopening; not a content change
        assert read_calibration(coll) == cal and is_current(cal, coll)
        assert coll.store.generation == cal.generation and coll.info()["calibration"] == cal.to_dict()
    assert recalibrate(ws, "c") is None  # current: nothing to do

    (docs / "d0.txt").write_text("A new text about something else entirely, written for the test to change it.")
    assert ws.ingest([docs], "c").ok
    with ws.open("c") as coll:
        assert not is_current(read_calibration(coll), coll)
        again = calibrate_if_stale(coll, lambda: ws.embedder)
        assert again is not None and again.generation == coll.store.generation > cal.generation
        n = coll.delete_documents(sources=[str((docs / "d1.txt").resolve())])
        assert n == 1 and not is_current(read_calibration(coll), coll)
        assert calibrate_if_stale(coll, lambda: ws.embedder).generation == coll.store.generation
    assert recalibrate(ws, "c", force=True) is not None

    # a calibration stored by an older rule (rule 1 sampled 120 chunks) is stale: the next change recomputes it
    with ws.open("c") as coll:
        old = read_calibration(coll)
        coll.set_calibration({**old.to_dict(), "rule_version": RULE_VERSION - 1})
        assert not is_current(read_calibration(coll), coll)
        assert calibrate_if_stale(coll, lambda: ws.embedder).rule_version == RULE_VERSION


def test_a_large_collection_is_sampled_deterministically(tiny_ws):
    ws, _ = tiny_ws
    with ws.open("c") as coll:
        n_chunks = len(coll.store.faiss_ids())
        rule = CalibrationRule(max_chunks=n_chunks // 2, min_answerable=1)
        a = calibrate_collection(coll, ws.embedder, rule=rule, store=False)
        b = calibrate_collection(coll, ws.embedder, rule=rule, store=False)
    assert 0 < a.n_answerable <= n_chunks // 2 < n_chunks
    assert (a.n_answerable, a.min_score, a.cap_score) == (b.n_answerable, b.min_score, b.cap_score)


def test_a_failed_automatic_calibration_does_not_raise(tiny_ws):
    ws, _ = tiny_ws

    def broken():
        raise RuntimeError("no embedder today")

    with ws.open("c") as coll:
        assert calibrate_if_stale(coll, broken, quiet=True) is None
        with pytest.raises(RuntimeError):
            calibrate_if_stale(coll, broken)
        assert read_calibration(coll) is None
    assert recalibrate(ws, "missing", quiet=True) is None


def test_empty_collection_calibrates_to_off(tmp_path, tiny_st_model):
    ws = Workspace(tmp_path / "home", IngestConfig(embedder=EmbedderConfig(model=str(tiny_st_model))))
    ws.open_or_create("e").close()
    with ws.open("e") as coll:
        cal = calibrate_collection(coll, ws.embedder)
    assert cal.min_score is None and cal.n_answerable == 0


# -- the real embedder: "I don't know" with default settings ------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_default_settings_abstain_out_of_collection_and_answer_inside(tmp_path, monkeypatch, tiny_llm):
    """The bundled embedder on the sample corpus (ingested by the CLI, which calibrates); a tiny generator."""
    from typer.testing import CliRunner

    from api.cli import app
    from rag.config import GeneratorConfig, RetrieverConfig
    from rag.generator import Generator
    from rag.qa import QAPipeline
    from rag.retriever import Retriever

    for key in [k for k in __import__("os").environ if k.startswith("RAGQA_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "home"
    env = {"RAGQA_HOME": str(home)}
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(SAMPLE), "-c", "s", "--json"], env=env, catch_exceptions=False)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    cal = report["calibration"]
    assert cal is not None and cal["min_score"] is not None and cal["n_answerable"] >= 10

    shown = runner.invoke(app, ["collections", "show", "s", "--json"], env=env, catch_exceptions=False)
    assert json.loads(shown.stdout)["calibration"] == cal
    text = runner.invoke(app, ["collections", "show", "s"], env=env, catch_exceptions=False).stdout
    assert "abstention calibration" in text and f"abstain_min_score {cal['min_score']:.3f}" in text
    redo = runner.invoke(app, ["collections", "calibrate", "s", "--json"], env=env, catch_exceptions=False)
    assert json.loads(redo.stdout)["calibration"]["min_score"] == cal["min_score"]  # deterministic

    ws = Workspace(home, IngestConfig())
    gen = Generator(GeneratorConfig(model=str(tiny_llm)), home / "models", home / "adapters")
    # the tiny random generator's sentences are never supported: the guard (tested in test_qa) would answer them
    # with its fallback; this test is about the calibrated evidence gate
    config = QAConfig(max_new_tokens=3, full_min_support=0.0)
    qa = QAPipeline(Retriever(ws.embedder, RetrieverConfig()), gen, config)
    outside = load_probes("bench")[:10]
    inside = [
        "How do I choose the chunk size?",
        "What is a graph-based approximate nearest neighbour index?",
        "How does ingestion stay crash safe?",
    ]
    with ws.open("s", readonly=True) as coll:
        for q in outside:
            ans = qa.answer(coll, q)
            assert ans.abstained and "best evidence score" in (ans.abstain_reason or ""), (q, ans.max_retrieval_score)
        for q in inside:
            ans = qa.answer(coll, q)
            assert not ans.abstained, (q, ans.max_retrieval_score, ans.abstain_reason)
        # explicit settings win: a threshold of 0 answers everything; auto_abstain=False turns the default off
        for cfg in (
            config.model_copy(update={"abstain_min_score": 0.0}),
            config.model_copy(update={"auto_abstain": False}),
        ):
            qa.config = cfg
            assert not qa.answer(coll, outside[0]).abstained
        qa.config = config
        assert not qa.answer(coll, outside[0], abstain=False).abstained
