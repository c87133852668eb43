"""bench/finetune.py --dpo-rounds: iterated DPO samples each round's pairs from the previous round's policy."""

from __future__ import annotations

import argparse
import json
import pathlib

from bench import finetune as B


class _FakeRunner:
    """Records the ragqa steps; answers as the real ones would (metrics JSON, seconds)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
        self.evaluated: list[str | None] = []

    def step(self, key, *args, inputs=()):
        self.steps.append((key, args, inputs))
        return {"metrics": {"pairs": 3}}, 1.0

    def evaluate(self, data, mode, n, adapter):
        self.evaluated.append(adapter)
        return {"f1": 0.5, "question_f1": {"q1": 0.5}}


def _arg(args: tuple[str, ...], name: str) -> str:
    return args[args.index(name) + 1]


def test_rounds_chain_policies_on_disjoint_questions(tmp_path, monkeypatch):
    questions = tmp_path / "onpolicy-questions.jsonl"
    rows = [{"question": f"q{i}?", "answer": f"a{i}", "context": "c"} for i in range(7)]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(B, "compare", lambda sft, other: {"delta": 0.0})
    args = argparse.Namespace(
        dpo_rounds=2, samples=4, prefs_mode=None, mode="rag-token", dpo_args="--epochs 2", eval_every_round=False,
        compare_n=200, n=200, json=None,
    )  # fmt: skip
    res = {"sft_name": "squad-sft", "after": {"f1": 0.4}}
    runner = _FakeRunner()
    B.run_iterated_dpo(runner, args, questions, tmp_path / "held.json", res)  # type: ignore[arg-type]

    keys = [k for k, _, _ in runner.steps]
    assert keys == ["prefs-r1", "dpo-r1", "prefs-r2", "dpo-r2"]
    (_, p1, _), (_, d1, _), (_, p2, _), (_, d2, _) = runner.steps
    assert _arg(p1, "--adapter") == "squad-sft" and _arg(d1, "--from-adapter") == "squad-sft"
    assert _arg(d1, "--output") == f"{B.OP_DPO_NAME}-r1"
    assert _arg(p2, "--adapter") == f"{B.OP_DPO_NAME}-r1" and _arg(d2, "--from-adapter") == f"{B.OP_DPO_NAME}-r1"
    assert _arg(d2, "--output") == B.OP_DPO_NAME
    parts = [{json.loads(line)["question"] for line in open(_arg(p, "--data"), encoding="utf-8")} for p in (p1, p2)]
    assert not parts[0] & parts[1] and parts[0] | parts[1] == {r["question"] for r in rows}
    assert runner.evaluated == [B.OP_DPO_NAME]  # only the last round unless --eval-every-round
    assert [r["round"] for r in res["onpolicy_rounds"]] == [1, 2] and res["onpolicy_dpo"]["rounds"] == 2
    assert res["onpolicy_dpo_eval"]["vs_sft"] == {"delta": 0.0}


def test_an_online_dpo_run_renders_as_online_dpo_with_its_pairs():
    """An RLHF-only result (no sampled pairs file) still gets its table; online DPO is named and its pairs shown."""
    vs = {"diff": 0.006, "low": -0.033, "high": 0.047, "questions": 180, "sft_f1": 0.417, "f1": 0.424}
    res = {
        "sft_name": "reader",
        "after": {"f1": 0.417, "em": 0.328, "wall_s": 120.0},
        "onpolicy_rlhf": {
            "algorithm": "online-dpo", "beta": 0.1, "ptx_coef": 0.5, "steps": 16, "wall_s": 600.0,
            "train_pairs_per_step": 1.98, "train_pair_accuracy": 0.45, "train_dpo_margin": -0.032,
        },
        "onpolicy_rlhf_eval": {"em": 0.333, "wall_s": 130.0, "vs_sft": {**vs, "better": 14, "worse": 12}},
    }  # fmt: skip
    text = "\n".join(B.render_on_policy(res))
    assert "SFT then online DPO (resampled every step), F1 reward" in text
    assert "+0.006 [-0.033, +0.047]" in text and "not met" in text
    assert "1.98 pairs a step" in text and "On-policy pairs" not in text


def test_synth_domain_questions_come_from_the_held_out_articles_chunks_only(tmp_path):
    """--onpolicy-synth: `finetune synth` runs over the collection; only pairs whose chunk is a held-out paragraph are
    kept (the domain's text, none of its questions), seeded, at most --onpolicy-n."""
    held = tmp_path / "held.json"
    held.write_text(
        json.dumps(
            {
                "version": "v2.0",
                "data": [
                    {
                        "title": "Southern_California",
                        "paragraphs": [
                            {
                                "context": f"Southern California paragraph {i} has  long text about Los Angeles.",
                                "qas": [],
                            }
                            for i in range(3)
                        ],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )

    class SynthRunner(_FakeRunner):
        def step(self, key, *args, inputs=()):
            super().step(key, *args, inputs=inputs)
            rows = [
                {"question": f"Where is paragraph {i}?", "answer": "Los Angeles", "contexts": [c]}
                for i, c in enumerate(
                    [f"Southern California paragraph {i} has long text about Los Angeles." for i in range(3)]
                    + ["The Normans lived in Normandy, a region of Los Angeles."]
                )
            ]
            pathlib.Path(_arg(args, "--output")).write_text("".join(json.dumps(r) + "\n" for r in rows))
            return {"pairs": len(rows)}, 0.1

    runner = SynthRunner()
    args = argparse.Namespace(onpolicy_n=2)
    out = B.synth_domain_questions(runner, args, held, tmp_path / "sft.jsonl")  # type: ignore[arg-type]
    ((key, step_args, _),) = runner.steps
    assert key == "synth" and step_args[:2] == ("finetune", "synth") and _arg(step_args, "-c") == B.COLLECTION
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == 2 and all("Southern California" in r["contexts"][0] for r in kept)
    assert out.read_text() == B.synth_domain_questions(runner, args, held, tmp_path / "sft.jsonl").read_text()
