"""Offline preference alignment with TRL's DPOTrainer, LoRA, optionally continuing an SFT adapter
(which is then also the reference model; see :mod:`finetune.lora`).

Regression guard: ``rpo_alpha`` adds the SFT loss on the chosen answers to the DPO loss (RPO), so the
chosen answers stay likely while the margin grows; the default loop is also gentler than SFT's
(:class:`finetune.config.PreferenceTrainOptions`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from finetune.config import DPOJob
from finetune.data import Example, file_sha256, read_jsonl
from finetune.examples import cut, tokenize_pair
from finetune.runner import (
    FinetuneError,
    RunStats,
    TrainResult,
    Workspace,
    check_output_free,
    lora_config,
    prepare_run_dir,
    save_continuation,
    set_threads,
    split_holdout,
    start_policy,
    train_evaluated,
    trainer_kwargs,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel
from rag.generator import Generator
from rag.prompts import chat_messages

logger = logging.getLogger(__name__)


def dpo_features(
    gen: Generator, examples: list[Example], max_context_tokens: int, one_shot: bool, max_length: int
) -> list[dict[str, Any]]:
    """Conversational preference rows whose prompt is the inference prompt (TRL renders it with the
    same chat template); pairs longer than ``max_length`` tokens are dropped."""
    rows = []
    for ex in examples:
        contexts = [cut(gen.tokenizer, c, max_context_tokens) for c in ex.contexts]
        assert ex.chosen is not None and ex.rejected is not None  # preference examples carry both
        longest = max(
            len(tokenize_pair(gen, ex.question, contexts, a, one_shot=one_shot)["input_ids"])
            for a in (ex.chosen, ex.rejected)
        )
        if longest > max_length:
            continue
        rows.append(
            {
                "prompt": chat_messages(ex.question, contexts, one_shot=one_shot),
                "chosen": [{"role": "assistant", "content": ex.chosen}],
                "rejected": [{"role": "assistant", "content": ex.rejected}],
            }
        )
    return rows


def rpo_loss(rpo_alpha: float) -> dict[str, Any]:
    """DPOConfig arguments of DPO plus ``rpo_alpha`` x the SFT loss on the chosen answers (RPO).

    The installed TRL (1.x) has no ``rpo_alpha`` option; its DPOTrainer sums the losses named in
    ``loss_type`` weighted by ``loss_weights``, and its ``"sft"`` loss is the mean NLL of the chosen
    completions' tokens, which is RPO's term.
    """
    if rpo_alpha <= 0:
        return {"loss_type": ["sigmoid"]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, rpo_alpha]}


def _pick(metrics: dict[str, float], key: str) -> float | None:
    v = metrics.get(f"eval_{key}")
    return None if v is None else round(float(v), 4)


def run_dpo(job: DPOJob, ws: Workspace) -> TrainResult:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    check_output_free(ws, job)
    records = read_jsonl(job.data, "preference", min_examples=4)
    set_threads()
    gen, model = start_policy(ws, job.from_adapter)
    tok = gen.tokenizer
    rows = dpo_features(gen, records, ws.qa.max_context_tokens, ws.qa.one_shot, job.train.max_length)
    if len(rows) < 4:
        raise FinetuneError(f"only {len(rows)} preference pairs fit train.max_length={job.train.max_length}; need 4")
    train_rows, eval_rows = split_holdout(rows, job.train.eval_split, job.train.seed, always=True)
    model.train()
    run_dir = ws.run_dir("dpo", job.output)
    resume = prepare_run_dir(run_dir, job.resume)
    args = DPOConfig(
        **trainer_kwargs(job, run_dir, has_eval=True),
        beta=job.beta,
        max_length=job.train.max_length,
        precompute_ref_log_probs=job.precompute_ref,
        **rpo_loss(job.rpo_alpha),
    )
    stats = RunStats()
    trainer = DPOTrainer(
        model=cast("PreTrainedModel", model),  # start_policy's model: a transformers causal LM
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows),
        peft_config=lora_config(job.lora, model),
    )
    run = train_evaluated(trainer, resume, stats)
    out, before, after = run.output, run.before, run.after
    metrics = {
        "train_loss": round(float(out.training_loss), 4),
        "steps": int(out.global_step),
        "beta": job.beta,
        "rpo_alpha": job.rpo_alpha,
        "precompute_ref": job.precompute_ref,
        "learning_rate": job.train.learning_rate,
        "pairs": len(rows),
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_rows),
        "eval_loss_before": _pick(before, "loss"),
        "eval_loss": _pick(after, "loss"),
        "accuracy_before": _pick(before, "rewards/accuracies"),
        "accuracy_after": _pick(after, "rewards/accuracies"),
        "rewards_margin_before": _pick(before, "rewards/margins"),
        "rewards_margin_after": _pick(after, "rewards/margins"),
        "from_adapter": job.from_adapter,
        "trainable_params": run.trainable,
        "total_params": run.total,
        **stats.to_dict(),
    }
    run.model.eval()
    info = save_continuation(
        ws,
        run.model,
        job,
        kind="dpo",
        base=gen,
        from_adapter=job.from_adapter,
        meta={
            "data": {"path": str(job.data), "sha256": file_sha256(job.data), "records": len(records)},
            "metrics": metrics,
        },
    )
    return TrainResult(info, metrics)
