"""On-policy preference pairs sampled through the real retrieval and RAG pipeline, paired by the F1 verifier
(tiny random models built in-process); the pure parts against brute force."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from finetune.config import PrefsJob
from finetune.data import DataError, read_jsonl
from finetune.prefs import meta_path, preference_pair, run_prefs, sample_seed
from finetune.verifier import answer_f1, make_f1_reward
from rag.evaluate import Record, compute_metrics, f1_score
from rag.prompts import ABSTAIN_TEXT
from tests.finetune.conftest import FACTS, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def env(training_env):
    return training_env("prefs", [ctx for _, _, ctx in FACTS])


# -- pure parts ------------------------------------------------------------------------------------
def test_preference_pair_is_best_against_worst_by_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        scores = [rng.choice([0.0, 0.25, 0.5, 1.0, rng.random()]) for _ in range(rng.randint(2, 6))]
        margin = rng.choice([0.0, 0.3])
        pair = preference_pair(scores, margin)
        spread = max(scores) - min(scores)
        if spread <= margin or spread == 0:
            assert pair is None
            continue
        assert pair is not None
        best = max(s for s in scores)
        assert pair.chosen == scores.index(best) and pair.rejected == scores.index(min(scores))
        assert pair.margin == pytest.approx(spread)
        assert all(pair.chosen_score >= s >= pair.rejected_score for s in scores)
    assert preference_pair([0.5, 0.5, 0.5]) is None
    assert preference_pair([1.0]) is None


def test_sample_seeds_are_distinct_within_a_run():
    seeds = [sample_seed(3, q, j, 4) for q, j in itertools.product(range(50), range(4))]
    assert len(set(seeds)) == len(seeds)


def _record(prediction: str, gold: str, abstained: bool) -> Record:
    return Record("q", "question", False, [gold], prediction, abstained, True, 0.9, -0.5, 0.1, 0.1, 3)


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("Paris", "Paris"),
        ("the city of Paris", "Paris"),
        ("Rome", "Paris"),
        ("head of the Oslofjord", "the head of the Oslofjord"),
        ("fifty thousand people", "fifty thousand"),
        (ABSTAIN_TEXT, "Paris"),
        ("", "Paris"),
    ],
)
def test_f1_verifier_is_the_benchmark_f1(prediction, gold):
    """rag.evaluate scores one answerable question as the verifier does (an abstention scores 0)."""
    abstained = prediction in (ABSTAIN_TEXT, "")
    expected = compute_metrics([_record(prediction, gold, abstained)]).f1
    assert answer_f1(prediction, gold) == pytest.approx(expected)
    if not abstained:
        assert answer_f1(prediction, gold) == pytest.approx(f1_score(prediction, gold))


def test_f1_verifier_on_unanswerable_questions_and_as_a_trl_reward():
    assert answer_f1(ABSTAIN_TEXT, ABSTAIN_TEXT) == 1.0 and answer_f1("Paris", ABSTAIN_TEXT) == 0.0
    reward = make_f1_reward()
    out = reward(
        prompts=[[], [], []],
        completions=[[{"role": "assistant", "content": "Paris."}], "The answer is: Rome", "Oslo"],
        answer=["Paris", "Paris", ""],
        question=["Capital?", "Capital?", "Where?"],
    )
    assert out == [1.0, 0.0, None]


# -- on-policy pairs through the pipeline ----------------------------------------------------------
def _replay_samples(ws, mode: str, samples: int, seed: int) -> list[list[str]]:
    """The short answers `finetune prefs` samples for the first two FACTS questions, drawn here the same way (the
    same pipeline, sampling settings and per-sample seeds), one list per question."""
    from ingest.workspace import Workspace as IW
    from rag.qa import QAPipeline
    from rag.retriever import Retriever

    gen = ws.base_generator()
    iws = IW(ws.home, ws.ingest)
    config = ws.qa.model_copy(update={"mode": mode, "strategy": "sample", "temperature": 1.0, "top_p": 0.95})
    groups: list[list[str]] = []
    with iws.open("facts", readonly=True) as coll:
        retriever = Retriever(iws.embedder, ws.retriever)
        for qi, (q, _, _) in enumerate(FACTS[:2]):
            groups.append(
                [
                    QAPipeline(retriever, gen, config.model_copy(update={"seed": sample_seed(seed, qi, j, samples)}))
                    .answer(coll, q, k=2, abstain=False, style="short")
                    .answer
                    for j in range(samples)
                ]
            )
    return groups


@pytest.mark.parametrize("mode", ["rag-sequence", "rag-token"])
def test_prefs_samples_through_the_pipeline_and_pairs_by_verifier_score(env, mode):

    ws, root = env
    samples = 3
    # The gold answer of each question is the policy's own first sample, so every group has a clear best.
    expected = _replay_samples(ws, mode, samples, seed=7)
    assert all(len({a.lower() for a in group}) >= 2 for group in expected), expected  # distinct-ish samples
    data = write_jsonl(
        root / f"q-{mode}.jsonl", [{"question": q, "answer": g[0]} for (q, _, _), g in zip(FACTS[:2], expected)]
    )
    out = root / f"pairs-{mode}.jsonl"
    job = PrefsJob(data=data, collection="facts", output=out, samples=samples, mode=mode, seed=7, k=2)
    result = run_prefs(job, ws)

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert result.metrics["pairs"] == len(rows) >= 1
    for row in rows:
        group = expected[[q for q, _, _ in FACTS].index(row["question"])]
        scores = [answer_f1(a, group[0]) for a in group]
        assert row["chosen"] == group[0] and row["chosen_score"] == pytest.approx(max(scores), abs=1e-4)
        assert row["rejected_score"] == pytest.approx(min(scores), abs=1e-4)
        assert row["rejected"] == group[scores.index(min(scores))]
        assert (
            row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"], abs=1e-4) and row["margin"] > 0
        )
        assert len(row["contexts"]) == 1 and row["verifier"] == "f1"
    assert len(read_jsonl(out, "preference", min_examples=1)) == len(rows)  # the trainers read it
    meta = json.loads(meta_path(out).read_text())
    assert meta["mode"] == mode and meta["policy"]["adapter"] is None and meta["sampling"]["seed"] == 7
    assert meta["counts"]["questions"] == 2 and meta["counts"]["answers"] == 2 * samples


def test_prefs_needs_a_verifier_for_every_question(env):
    ws, root = env
    data = write_jsonl(root / "nogold.jsonl", [{"question": q} for q, _, _ in FACTS])
    with pytest.raises(DataError, match="--reward-model"):
        run_prefs(PrefsJob(data=data, collection="facts", output=root / "x.jsonl"), ws)


def test_cli_prefs_bad_input_exits_2_with_a_clear_error(home, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    runner = CliRunner()
    base = ["finetune", "prefs", "-c", "facts", "--output", str(tmp_path / "p.jsonl"), "--json"]
    missing = runner.invoke(app, [*base, "--data", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "does not exist" in json.loads(missing.stdout.splitlines()[-1])["error"]
    one = runner.invoke(app, [*base, "--data", str(tmp_path / "nope.jsonl"), "--samples", "1"])
    assert one.exit_code == 2 and "samples" in one.stdout
    mode = runner.invoke(app, [*base, "--data", str(tmp_path / "nope.jsonl"), "--mode", "stuff"])
    assert mode.exit_code == 2 and "mode" in mode.stdout


def test_prefs_samples_short_answers_whatever_the_workspace_style(training_env):
    """A workspace answering in the full style by default (the CLI's) still gets short-style pairs: the answers
    `ragqa eval` scores and the F1 verifier compares with a gold span, never full sentences with [n] markers."""
    from rag.config import QAConfig

    ws, root = training_env(
        "prefs-full", [ctx for _, _, ctx in FACTS], qa=QAConfig(max_new_tokens=4, full_max_new_tokens=24)
    )
    assert ws.qa.answer_style == "full"
    samples, mode = 3, "rag-token"
    short = _replay_samples(ws, mode, samples, seed=5)
    data = write_jsonl(root / "q.jsonl", [{"question": q, "answer": g[0]} for (q, _, _), g in zip(FACTS[:2], short)])
    out = root / "pairs.jsonl"
    run_prefs(PrefsJob(data=data, collection="facts", output=out, samples=samples, mode=mode, seed=5, k=2), ws)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows
    for row in rows:
        group = short[[q for q, _, _ in FACTS].index(row["question"])]
        assert row["chosen"] == group[0] and row["rejected"] in group
