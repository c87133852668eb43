"""bench/finetune.py --pref-split: the questions kept aside for preference training never reach SFT."""

from __future__ import annotations

import json

from bench.finetune import split_for_preferences
from finetune.squad import squad_training_data
from tests.conftest import SQUAD


def _questions(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_split_is_disjoint_seeded_and_keeps_unanswerable_in_sft(tmp_path):
    data = squad_training_data(SQUAD, tmp_path, held_out=[2], unanswerable=0.5, seed=0)
    train, aside = split_for_preferences(data.sft_path, 0.4)
    train_rows, aside_rows = _questions(train), _questions(aside)
    assert len(aside_rows) == round(0.4 * data.answerable)
    assert len(train_rows) + len(aside_rows) == data.answerable + data.unanswerable
    assert not {r["question"] for r in train_rows} & {r["question"] for r in aside_rows}
    assert all(r["answer"] != "I don't know." for r in aside_rows)  # aside: answerable questions only
    assert sum(r["answer"] == "I don't know." for r in train_rows) == data.unanswerable
    again_train, again_aside = split_for_preferences(data.sft_path, 0.4)
    assert _questions(again_aside) == aside_rows and _questions(again_train) == train_rows


def test_no_split_returns_the_sft_file(tmp_path):
    data = squad_training_data(SQUAD, tmp_path, held_out=[2], seed=0)
    assert split_for_preferences(data.sft_path, 0.0) == (data.sft_path, None)
