"""Preference training that guards against regressions: DPO with the RPO (SFT) term, RLHF with the verifiable
F1 reward, a KL to the reference and the PPO-ptx loss, on a tiny random model built in-process."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from finetune.config import DPOJob, RLHFJob
from rag.config import QAConfig
from tests.finetune.conftest import FACTS, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TRAIN = {
    "max_steps": 2,
    "grad_accum": 1,  # the tests set their own loop (the default accumulates 2)
    "batch_size": 2,
    "learning_rate": 5e-3,
    "logging_steps": 1,
    "save_steps": 50,
    "max_length": 256,
}


@pytest.fixture(scope="module")
def env(training_env):
    return training_env("preference-training", qa=QAConfig(max_new_tokens=4))


def _fact_pairs(path: Path) -> Path:
    """Preference pairs of the facts: the gold answer over "no idea at all", each twice."""
    return write_jsonl(
        path, [{"question": q, "chosen": a, "rejected": "no idea at all", "contexts": [c]} for q, a, c in FACTS] * 2
    )


def test_dpo_with_the_rpo_term_trains(env):
    from finetune.dpo import rpo_loss, run_dpo

    ws, root = env
    assert rpo_loss(0.0) == {"loss_type": ["sigmoid"]}
    assert rpo_loss(0.5) == {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}
    data = _fact_pairs(root / "dpo.jsonl")
    res = run_dpo(DPOJob(data=data, output="dpo-rpo", rpo_alpha=1.0, train=TRAIN), ws)
    assert res.metrics["steps"] == 2 and res.metrics["rpo_alpha"] == 1.0
    assert ws.adapters.get("dpo-rpo").kind == "dpo"


def test_dpo_precomputed_reference_trains_as_the_reference_forward_does(env, monkeypatch):
    """The reference log-probabilities computed once before training give the same losses as a reference
    forward pass in every step (the reference is frozen); it is the default."""
    from finetune.dpo import run_dpo
    from ingest import hardware

    # float32: bf16 autocast (CPUs with AMX / AVX512-BF16) rounds the two paths' forwards differently
    monkeypatch.setenv(hardware.ENV_OVERRIDE, "0")

    ws, root = env
    data = _fact_pairs(root / "dpo-ref.jsonl")
    train = {**TRAIN, "max_steps": 4}
    lora = {"dropout": 0.0}
    pre = run_dpo(DPOJob(data=data, output="dpo-pre", train=train, lora=lora), ws).metrics
    live = run_dpo(DPOJob(data=data, output="dpo-live", precompute_ref=False, train=train, lora=lora), ws).metrics
    assert DPOJob(data=data, output="x").precompute_ref
    assert pre["precompute_ref"] and not live["precompute_ref"]
    assert pre["steps"] == live["steps"] >= 2
    assert pre["train_loss"] == pytest.approx(live["train_loss"], abs=1e-3)
    assert pre["eval_loss"] == pytest.approx(live["eval_loss"], abs=1e-3)


def test_preference_jobs_default_to_a_gentle_loop():
    job = DPOJob(data=Path("x"), output="a")
    assert job.train.learning_rate < 4e-4 and job.train.epochs <= 1 and job.rpo_alpha > 0
    assert RLHFJob(prompts=Path("p"), output="a").reward == "f1"
    assert RLHFJob(prompts=Path("p"), output="a", reward_model="rm").reward == "model"


def _gold_prompts(root: Path) -> Path:
    return write_jsonl(root / "rl.jsonl", [{"question": q, "answer": a, "context": c} for q, a, c in FACTS])


def test_rlhf_with_the_f1_reward_and_ptx_trains_and_reports_kl(env):
    from finetune.rlhf import run_rlhf

    ws, root = env
    job = RLHFJob(
        prompts=_gold_prompts(root),
        output="rl-f1",
        reward="f1",
        ptx_coef=0.5,
        num_generations=2,
        max_completion_length=4,
        train={**TRAIN, "batch_size": 2},
    )
    m = run_rlhf(job, ws).metrics
    assert m["steps"] == 2 and m["reward"] == "f1" and m["ptx_examples"] == len(FACTS)
    assert m["kl_before"] == pytest.approx(0.0, abs=1e-4)
    assert isinstance(m["kl_after"], float) and isinstance(m["train_kl"], float)
    assert isinstance(m["train_ptx_sft_loss"], float) and m["train_ptx_sft_loss"] > 0


def test_rlhf_with_a_collection_trains_on_prompts_in_their_retrieved_form(training_env):
    """``finetune rlhf -c facts``: the prompts' passages are shown as the collection retrieves them (the file's title
    line), as the policy reads them at answer time; the run reports how many prompts that changed."""
    from finetune.rlhf import run_rlhf

    ws, root = training_env("rlhf-retrieved", docs=[c for _, _, c in FACTS], qa=QAConfig(max_new_tokens=4))
    job = RLHFJob(
        prompts=_gold_prompts(root),
        output="rl-retrieved",
        collection="facts",
        k=2,
        num_generations=2,
        max_completion_length=4,
        train={**TRAIN, "max_steps": 1},
    )
    m = run_rlhf(job, ws).metrics
    assert m["steps"] == 1 and m["prompts_collection"] == "facts" and m["prompts_retrieved_form"] == len(FACTS)
    # Without -c the prompts hold the passages as the file gives them.
    plain = run_rlhf(job.model_copy(update={"collection": None, "output": "rl-file"}), ws).metrics
    assert plain["prompts_retrieved_form"] == 0 and plain["prompts_collection"] is None


def _online_trainer(env, **fields):
    """A built (untrained) online trainer of the gold prompts, dropout off; returns (trainer, generator, records)."""
    from finetune.data import read_jsonl as read
    from finetune.rlhf import build_trainer
    from finetune.runner import start_policy

    ws, root = env
    job = RLHFJob(
        prompts=_gold_prompts(root),
        reward="f1",
        ptx_coef=0.0,
        num_generations=2,
        max_completion_length=4,
        lora={"dropout": 0.0},
        **fields,
    )
    records = read(job.prompts, "prompt")
    gen, model = start_policy(ws, None)
    trainer, _, _ = build_trainer(job, ws, gen, model, records, root / f"run-{job.output}")
    return trainer, gen, records


def test_ptx_adds_exactly_coef_times_the_sft_loss(env):
    from finetune.rlhf import collate_ptx, ptx_features, ptx_sft_loss

    ws, _ = env
    trainer, gen, records = _online_trainer(env, output="rl-ptx", train={**TRAIN, "batch_size": 2})
    policy = trainer.model
    policy.train()
    gold = ptx_features(gen, records, ws.qa.max_context_tokens, ws.qa.one_shot, 256)
    batch = collate_ptx(gold[:2], gen.tokenizer.pad_token_id)
    # A fixed rollout batch: two prompts' completions with hand-made advantages.
    prompt = gen.prompt_ids(FACTS[0][0], [FACTS[0][2]], one_shot=False)
    inputs = {
        "prompt_ids": torch.tensor([prompt, prompt]),
        "prompt_mask": torch.ones(2, len(prompt), dtype=torch.long),
        "completion_ids": torch.tensor([[300, 301, 302], [400, 401, gen.eos_token_ids[0]]]),
        "completion_mask": torch.tensor([[1, 1, 1], [1, 1, 1]]),
        "old_logps": torch.tensor([-20.0, -25.0]),
        "advantages": torch.tensor([0.7, -0.7]),
    }
    rl = trainer.compute_loss(policy, inputs)
    trainer.ptx_coef, trainer.ptx_iter = 0.3, itertools.repeat(batch)
    mixed = trainer.compute_loss(policy, inputs)
    sft = ptx_sft_loss(policy, batch)
    assert float(mixed - rl) == pytest.approx(0.3 * float(sft), rel=1e-5, abs=1e-6)
    # The SFT loss is the mean NLL of the answer tokens, from the full logits by brute force.
    with torch.no_grad():
        nll = []
        for ids, att, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            n = int(att.sum())
            logp = torch.log_softmax(policy(input_ids=ids[None, :n]).logits[0].float(), -1)
            nll += [-logp[t - 1, ids[t]].item() for t in range(1, n) if labels[t] != -100]
    assert float(sft) == pytest.approx(sum(nll) / len(nll), rel=1e-4)


def test_online_dpo_trains_with_the_f1_reward_and_reports_its_pairs(env):
    from finetune.rlhf import run_rlhf

    ws, root = env
    job = RLHFJob(
        prompts=_gold_prompts(root),
        output="odpo-f1",
        algorithm="online-dpo",
        beta=0.1,
        num_generations=2,
        max_completion_length=4,
        train={**TRAIN, "batch_size": 4, "grad_accum": 2},
    )
    m = run_rlhf(job, ws).metrics
    assert m["algorithm"] == "online-dpo" and m["steps"] == 2
    assert isinstance(m["train_pairs_per_step"], float) and 0 <= m["train_pairs_per_step"] <= 2
    assert isinstance(m["train_kl"], float) and m["train_kl"] >= 0
    assert ws.adapters.get("odpo-f1").kind == "rlhf"
    with pytest.raises(ValueError, match="beta > 0"):
        RLHFJob(prompts=job.prompts, output="x", algorithm="online-dpo", beta=0.0)


def test_online_dpo_loss_is_dpo_on_each_groups_best_and_worst_sampled_answer(env, monkeypatch):
    """The trainer's loss on a fixed rollout batch equals DPO computed by brute force from full forwards."""
    from ingest import hardware

    monkeypatch.setenv(hardware.ENV_OVERRIDE, "0")  # float32: compare the two forwards without bf16 rounding
    trainer, gen, _ = _online_trainer(
        env, output="odpo-loss", algorithm="online-dpo", beta=0.2, train={**TRAIN, "batch_size": 4}
    )
    assert trainer.args.steps_per_generation == 1
    policy = trainer.model
    policy.train()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer.train sets before the first step
    a = gen.prompt_ids(FACTS[0][0], [FACTS[0][2]], one_shot=False)
    b = gen.prompt_ids(FACTS[1][0], [FACTS[1][2]], one_shot=False)
    width = max(len(a), len(b))
    pad = gen.tokenizer.pad_token_id

    def left(p):
        return [pad] * (width - len(p)) + p, [0] * (width - len(p)) + [1] * len(p)

    rows = [left(a), left(b), left(a), left(b)]  # shuffled groups: rows 0, 2 answer a; rows 1, 3 answer b
    completions = torch.tensor([[300, 301, 302], [400, 401, 402], [310, 311, 312], [410, 411, pad]])
    cmask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]])
    ref = -torch.rand(4, 3)  # a hand-made frozen reference
    inputs = {
        "prompt_ids": torch.tensor([r[0] for r in rows]),
        "prompt_mask": torch.tensor([r[1] for r in rows]),
        "completion_ids": completions,
        "completion_mask": cmask,
        "ref_per_token_logps": ref,
        "advantages": torch.tensor([-0.7, 0.7, 0.7, -0.7]),  # a: row 2 beats row 0; b: row 1 beats row 3
    }
    loss = trainer.compute_loss(policy, inputs)
    with torch.no_grad():
        seq = []
        for (ids, att), comp, cm in zip(rows, completions, cmask):
            n = int(cm.sum())
            full = torch.tensor([ids + comp[:n].tolist()])
            logits = policy(input_ids=full, attention_mask=torch.tensor([att + [1] * n])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            seq.append(sum(logp[width + t - 1, int(comp[t])].item() for t in range(n)))
        r = (ref * cmask).sum(-1).tolist()
        terms = [
            -torch.nn.functional.logsigmoid(torch.tensor(0.2 * ((seq[w] - r[w]) - (seq[l_] - r[l_])))).item()
            for w, l_ in [(2, 0), (1, 3)]
        ]
    assert float(loss) == pytest.approx(sum(terms) / 2, rel=1e-4, abs=1e-5)
