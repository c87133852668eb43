"""Training data from a SQuAD file (finetune.squad) on a tiny hand-written SQuAD 2.0 file."""

from __future__ import annotations

import json

import pytest

from finetune.data import DataError, read_jsonl
from finetune.squad import majority_answer, sentence_around, squad_training_data
from ingest.squad import SquadAnswer, SquadQuestion, iter_questions, read_squad
from rag.prompts import ABSTAIN_TEXT

PARIS = "Paris is the capital of France. The Eiffel Tower was finished in 1889 for the World's Fair. It is tall."
ROME = "Rome is the capital of Italy. The Colosseum was finished in the year 80 under the emperor Titus."
BERLIN = "Berlin is the capital of Germany. The wall fell in 1989."


def qa(qid: str, question: str, *answers: tuple[str, int]) -> dict:
    return {
        "id": qid,
        "question": question,
        "is_impossible": not answers,
        "answers": [{"text": t, "answer_start": s} for t, s in answers],
    }


TINY = {"version": "v2.0", "data": [
    {"title": "Paris", "paragraphs": [{"context": PARIS, "qas": [
        qa("p1", "What is the capital of France?", ("Paris", 0), ("Paris", 0), ("Paris is", 0)),
        qa("p2", "When was the Eiffel Tower finished?", ("1889", 65)),
        qa("p3", "What is the capital of Spain?"),
        qa("p4", "Who painted the Eiffel Tower?"),
        qa("p5", "How is the tower?", ("tall", 98)),
    ]}]},
    {"title": "Rome", "paragraphs": [{"context": ROME, "qas": [
        qa("r1", "Under which emperor was the Colosseum finished?", ("Titus", 90), ("the emperor Titus", 78)),
        qa("r2", "What is the capital of Greece?"),
    ]}]},
    {"title": "Berlin", "paragraphs": [{"context": BERLIN, "qas": [
        qa("b1", "When did the wall fall?", ("1989", 51)),
        qa("b2", "When was the wall built?"),
    ]}]},
]}  # fmt: skip


@pytest.fixture()
def squad_file(tmp_path):
    path = tmp_path / "tiny-squad.json"
    path.write_text(json.dumps(TINY), encoding="utf-8")
    return path


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class TestSquadTrainingData:
    def test_answerable_questions_with_majority_answers_and_a_held_out_article(self, squad_file, tmp_path):
        out = squad_training_data(squad_file, tmp_path / "out", held_out=[2])
        assert (out.train_articles, out.held_out_articles) == (["Paris", "Rome"], ["Berlin"])
        assert (out.answerable, out.unanswerable, out.preference_pairs) == (4, 0, 0)
        assert lines(out.sft_path) == [
            {"question": "What is the capital of France?", "answer": "Paris", "context": PARIS},
            {"question": "When was the Eiffel Tower finished?", "answer": "1889", "context": PARIS},
            {"question": "How is the tower?", "answer": "tall", "context": PARIS},
            {"question": "Under which emperor was the Colosseum finished?", "answer": "Titus", "context": ROME},
        ]
        assert len(read_jsonl(out.sft_path, "sft")) == 4  # valid SFT data
        held = read_squad(out.held_out_path)  # valid SQuAD, for `ragqa eval --data`
        assert [q.qid for _, _, q in iter_questions(held)] == ["b1", "b2"]
        assert out.preferences_path is None and not (tmp_path / "out" / "preferences.jsonl").exists()

    def test_no_held_out_trains_on_everything(self, squad_file, tmp_path):
        out = squad_training_data(squad_file, tmp_path)
        assert out.held_out_path is None and out.answerable == 5 and out.held_out_articles == []

    def test_unanswerable_share_answers_i_dont_know_over_their_paragraph(self, squad_file, tmp_path):
        out = squad_training_data(squad_file, tmp_path, held_out=[2], unanswerable=0.5)
        assert out.unanswerable == 2  # round(0.5 * 4)
        idk = lines(out.sft_path)[4:]
        assert all(r["answer"] == ABSTAIN_TEXT for r in idk)
        by_question = {r["question"]: r["context"] for r in idk}
        assert set(by_question) <= {
            "What is the capital of Spain?",
            "Who painted the Eiffel Tower?",
            "What is the capital of Greece?",
        }
        assert by_question.get("What is the capital of Greece?", ROME) == ROME
        all_idk = squad_training_data(squad_file, tmp_path / "all", held_out=[2], unanswerable=5.0)
        assert all_idk.unanswerable == 3  # capped at the pool; the held-out article's ones never used

    def test_preferences_reject_the_sentence_around_the_gold_span(self, squad_file, tmp_path):
        out = squad_training_data(squad_file, tmp_path, held_out=[2], preferences=10, prompts=1)
        pairs = lines(out.preferences_path)
        assert out.preference_pairs == len(pairs) == 3  # "tall" in "It is tall." is too close to be worse
        assert {(p["chosen"], p["rejected"]) for p in pairs} == {
            ("Paris", "Paris is the capital of France."),
            ("1889", "The Eiffel Tower was finished in 1889 for the World's Fair."),
            ("Titus", "The Colosseum was finished in the year 80 under the emperor Titus."),
        }
        assert len(read_jsonl(out.preferences_path, "preference")) == 3
        prompts = lines(out.prompts_path)
        assert out.prompts == 1 and prompts == [{"question": pairs[0]["question"], "context": pairs[0]["context"]}]

    def test_same_seed_same_files(self, squad_file, tmp_path):
        a = squad_training_data(squad_file, tmp_path / "a", unanswerable=0.5, preferences=5, seed=3)
        squad_training_data(squad_file, tmp_path / "b", unanswerable=0.5, preferences=5, seed=3)
        for name in ("sft.jsonl", "preferences.jsonl", "prompts.jsonl"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        seeds = {
            tuple(
                r["question"]
                for r in lines(squad_training_data(squad_file, tmp_path / str(s), unanswerable=0.5, seed=s).sft_path)
            )
            for s in range(8)
        }
        assert a.unanswerable == 2 and len(seeds) > 1  # the unanswerable sample depends on the seed

    def test_bad_input_is_a_clear_error(self, squad_file, tmp_path):
        with pytest.raises(DataError, match=r"no article at position\(s\) 7.*0\.\.2"):
            squad_training_data(squad_file, tmp_path, held_out=[7])
        with pytest.raises(DataError, match="no answerable question"):
            squad_training_data(squad_file, tmp_path, held_out=[0, 1, 2])
        with pytest.raises(DataError, match="unanswerable must be a share"):
            squad_training_data(squad_file, tmp_path, unanswerable=-1)
        bad = tmp_path / "bad.json"
        bad.write_text('{"rows": []}', encoding="utf-8")
        with pytest.raises(DataError, match="not SQuAD format"):
            squad_training_data(bad, tmp_path)
        with pytest.raises(DataError, match="cannot read SQuAD data"):
            squad_training_data(tmp_path / "missing.json", tmp_path)


def test_majority_answer_prefers_the_most_given_then_the_shortest():
    q = SquadQuestion("1", "q?", (SquadAnswer("the emperor Titus"), SquadAnswer("Titus"), SquadAnswer(" Titus ")))
    assert majority_answer(q) == "Titus"
    tie = SquadQuestion("2", "q?", (SquadAnswer("Titus Caesar"), SquadAnswer("Titus")))
    assert majority_answer(tie) == "Titus"
    assert majority_answer(SquadQuestion("3", "q?", (SquadAnswer("  "),))) is None


def test_sentence_around():
    assert (
        sentence_around(PARIS, PARIS.index("1889"), "1889")
        == "The Eiffel Tower was finished in 1889 for the World's Fair."
    )
    assert sentence_around(PARIS, 0, "Paris") == "Paris is the capital of France."
