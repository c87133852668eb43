"""Reward model: a scalar head on the generator backbone with LoRA, trained with TRL's RewardTrainer
on the pairwise loss -log sigmoid(r_chosen - r_rejected)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from finetune.adapters import AdapterRegistryError
from finetune.config import RewardJob
from finetune.data import Example, file_sha256, read_jsonl
from finetune.examples import tokenize_pair
from finetune.runner import (
    FinetuneError,
    RunStats,
    TrainResult,
    Workspace,
    check_output_free,
    lora_config,
    prepare_run_dir,
    save_adapter,
    set_threads,
    split_holdout,
    train_evaluated,
    trainer_kwargs,
)
from rag.generator import Generator
from rag.models import prepare_generator

logger = logging.getLogger(__name__)


def preference_features(
    gen: Generator, examples: list[Example], max_context_tokens: int, one_shot: bool
) -> list[dict[str, list[int]]]:
    """``chosen_ids`` / ``rejected_ids``: the full chat (prompt as at inference + answer turn) of each side."""
    from finetune.examples import cut

    rows = []
    for ex in examples:
        contexts = [cut(gen.tokenizer, c, max_context_tokens) for c in ex.contexts]
        assert ex.chosen is not None and ex.rejected is not None  # preference examples carry both
        chosen = tokenize_pair(gen, ex.question, contexts, ex.chosen, one_shot=one_shot)["input_ids"]
        rejected = tokenize_pair(gen, ex.question, contexts, ex.rejected, one_shot=one_shot)["input_ids"]
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected})
    return rows


def load_backbone_classifier(ws: Workspace):
    from transformers import AutoModelForSequenceClassification

    loc = prepare_generator(ws.generator, ws.models_dir)
    model = AutoModelForSequenceClassification.from_pretrained(loc.path, num_labels=1, dtype=torch.float32)
    return model


def run_reward(job: RewardJob, ws: Workspace) -> TrainResult:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    check_output_free(ws, job)
    records = read_jsonl(job.data, "preference", min_examples=4)
    set_threads()
    gen = ws.base_generator()
    tok = gen.tokenizer
    rows = preference_features(gen, records, ws.qa.max_context_tokens, ws.qa.one_shot)
    rows = [r for r in rows if max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= job.train.max_length]
    if len(rows) < 4:
        raise FinetuneError(f"only {len(rows)} preference pairs fit train.max_length={job.train.max_length}; need 4")
    train_rows, eval_rows = split_holdout(rows, job.train.eval_split, job.train.seed, always=True)
    model = load_backbone_classifier(ws)
    model.config.pad_token_id = tok.pad_token_id
    run_dir = ws.run_dir("reward", job.output)
    resume = prepare_run_dir(run_dir, job.resume)
    peft_cfg = lora_config(job.lora, model, task_type="SEQ_CLS", modules_to_save=["score"])
    args = RewardConfig(
        **trainer_kwargs(job, run_dir, has_eval=True), max_length=job.train.max_length, disable_dropout=True
    )
    stats = RunStats()
    trainer = RewardTrainer(
        model=model,
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows),
        peft_config=peft_cfg,
    )
    run = train_evaluated(trainer, resume, stats)
    out, before, after = run.output, run.before, run.after
    metrics = {
        "train_loss": round(float(out.training_loss), 4),
        "steps": int(out.global_step),
        "pairs": len(rows),
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_rows),
        "eval_accuracy_before": round(float(before.get("eval_accuracy", float("nan"))), 4),
        "eval_accuracy": round(float(after.get("eval_accuracy", float("nan"))), 4),
        "eval_margin": round(float(after.get("eval_margin", float("nan"))), 4),
        "eval_loss": round(float(after["eval_loss"]), 4),
        "trainable_params": run.trainable,
        "total_params": run.total,
        **stats.to_dict(),
    }
    info = save_adapter(
        ws,
        run.model,
        job,
        kind="reward",
        base=gen,
        meta={
            "data": {"path": str(job.data), "sha256": file_sha256(job.data), "records": len(records)},
            "metrics": metrics,
        },
    )
    return TrainResult(info, metrics)


class RewardScorer:
    """Scores (question, contexts, answer) with a trained reward adapter: the reward function of RLHF."""

    def __init__(self, ws: Workspace, name: str, gen: Generator) -> None:
        from peft import PeftModel

        try:
            info = ws.adapters.get(name)
        except AdapterRegistryError as exc:
            raise FinetuneError(str(exc)) from exc
        if info.kind != "reward":
            raise FinetuneError(
                f"adapter {name!r} is a {info.kind} adapter, not a reward model "
                "(train one with `ragqa finetune reward`)"
            )
        if info.base_model and info.base_model != gen.name:
            raise FinetuneError(
                f"reward model {name!r} was trained on {info.base_model!r}, the generator is {gen.name!r}"
            )
        model = load_backbone_classifier(ws)
        model.config.pad_token_id = gen.tokenizer.pad_token_id
        self.model = PeftModel.from_pretrained(model, str(Path(info.path))).eval()
        self.gen = gen
        self.max_context_tokens = ws.qa.max_context_tokens
        self.one_shot = ws.qa.one_shot

    @torch.no_grad()
    def score(self, question: str, contexts: list[str], answers: list[str]) -> list[float]:
        from finetune.examples import cut

        ctx = [cut(self.gen.tokenizer, c, self.max_context_tokens) for c in contexts]
        seqs = [tokenize_pair(self.gen, question, ctx, a, one_shot=self.one_shot)["input_ids"] for a in answers]
        width = max(len(s) for s in seqs)
        pad = self.gen.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        return self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
