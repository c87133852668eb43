"""LoRA supervised fine-tuning on question/answer pairs (TRL's SFTTrainer, loss on answer tokens only)."""

from __future__ import annotations

import logging
import math
from typing import Any

from finetune.config import SFTJob
from finetune.data import file_sha256, read_jsonl
from finetune.examples import build_sft_examples
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
    trainable_parameters,
    trainer_kwargs,
)

logger = logging.getLogger(__name__)


def answer_only_loss(model, inputs: dict[str, Any], num_items_in_batch=None) -> tuple[Any, Any]:
    """Mean cross-entropy over the answer tokens, projecting only those positions through the LM head.

    A QA example is ~200 prompt tokens and ~6 answer tokens; the usual loss projects every position
    onto the 49k-token vocabulary, which on a CPU costs as much as a quarter of the model. Returns
    ``(loss, (n_correct, n_tokens))``. ``model`` is a PeftModel or a causal LM.
    """
    import torch
    import torch.nn.functional as F

    from finetune.losses import answer_logits

    kwargs = {k: inputs[k] for k in ("attention_mask", "position_ids") if k in inputs}
    logits, target, mask = answer_logits(model, inputs["input_ids"], inputs["labels"], **kwargs)
    total = F.cross_entropy(logits, target, reduction="sum")
    denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    with torch.no_grad():
        correct = (logits.argmax(-1) == target).sum()
    return total / denom, (correct, mask.sum())


def sft_trainer_class():
    """TRL's SFTTrainer with :func:`answer_only_loss` (same data, collator, schedule and checkpoints)."""
    from trl import SFTTrainer

    class AnswerOnlySFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.accelerator.num_processes > 1:
                # Under DDP the wrapper's forward is what all-reduces the gradients, so calling the backbone
                # past it would train each process apart: use TRL's loss, the same cross-entropy on the answer
                # tokens (completion_only_loss) with every position projected.
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            with self.accelerator.autocast():  # the loss calls the backbone directly, past accelerate's wrapper
                loss, (correct, n) = answer_only_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            n_all = self.accelerator.gather_for_metrics(n).sum()
            c_all = self.accelerator.gather_for_metrics(correct).sum()
            self._metrics[mode]["mean_token_accuracy"].append((c_all / n_all).item() if n_all > 0 else 0.0)
            if return_outputs:
                return loss, {}
            return loss

    return AnswerOnlySFTTrainer


def run_sft(job: SFTJob, ws: Workspace) -> TrainResult:
    from datasets import Dataset
    from peft import get_peft_model
    from trl import SFTConfig

    check_output_free(ws, job)
    records = read_jsonl(job.data, "sft", min_examples=2)
    set_threads()
    gen = ws.base_generator()
    tok = gen.tokenizer
    source = None
    if job.collection:
        source = ws.context_source(job.collection, job.k, job.max_context_tokens, tok)
    style = job.prompt_style
    if style == "auto":
        style = "stuffed" if ws.qa.mode == "stuff" else "per-document"
    max_ctx = job.max_context_tokens or ws.qa.max_context_tokens
    examples, report = build_sft_examples(
        gen,
        records,
        source=source,
        prompt_style=style,
        max_context_tokens=max_ctx,
        max_length=job.train.max_length,
        distractor_rate=job.distractor_rate,
        gold_fallback=job.gold_fallback,
        fallback_as_retrieved=job.fallback_as_retrieved,
        one_shot=ws.qa.one_shot,
        seed=job.train.seed,
        full_style_rate=job.full_style_rate,
    )
    if len(examples) < 2:
        raise FinetuneError(
            f"only {len(examples)} usable training example(s) from {len(records)} records ({report.to_dict()}); "
            "check that answers occur in the contexts or the collection, or raise train.max_length"
        )
    train_ex, eval_ex = split_holdout(examples, job.train.eval_split, job.train.seed)
    logger.info("SFT: %d train / %d eval examples, %s", len(train_ex), len(eval_ex), report.to_dict())

    run_dir = ws.run_dir("sft", job.output)
    resume = prepare_run_dir(run_dir, job.resume)
    model = gen.model
    model.train()
    peft_model = get_peft_model(model, lora_config(job.lora, model))
    trainable, total = trainable_parameters(peft_model)
    args = SFTConfig(
        **trainer_kwargs(job, run_dir, has_eval=bool(eval_ex)),
        max_length=job.train.max_length,
        completion_only_loss=True,
        packing=False,
        train_sampling_strategy="group_by_length",
    )
    stats = RunStats()
    trainer = sft_trainer_class()(
        model=peft_model,
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_list(train_ex),
        eval_dataset=Dataset.from_list(eval_ex) if eval_ex else None,
    )
    out = trainer.train(resume_from_checkpoint=resume)
    stats.stop()
    metrics: dict[str, Any] = {
        "train_loss": round(float(out.training_loss), 4),
        "steps": int(out.global_step),
        "first_loss": _first_loss(trainer),
        "last_loss": _last_loss(trainer),
        "trainable_params": trainable,
        "total_params": total,
        "examples": report.to_dict(),
        "train_examples": len(train_ex),
        "eval_examples": len(eval_ex),
        "prompt_style": style,
        **stats.to_dict(),
    }
    if eval_ex:
        ev = trainer.evaluate()
        metrics["eval_loss"] = round(float(ev["eval_loss"]), 4)
        metrics["eval_perplexity"] = round(math.exp(min(50.0, float(ev["eval_loss"]))), 3)
    peft_model.eval()
    info = save_adapter(
        ws,
        peft_model,
        job,
        kind="sft",
        base=gen,
        meta={
            "data": {"path": str(job.data), "sha256": file_sha256(job.data), "records": len(records)},
            "metrics": metrics,
        },
    )
    logger.info("saved adapter %s to %s", info.name, info.path)
    return TrainResult(info, metrics)


def _losses(trainer) -> list[float]:
    return [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]


def _first_loss(trainer) -> float | None:
    losses = _losses(trainer)
    return round(losses[0], 4) if losses else None


def _last_loss(trainer) -> float | None:
    losses = _losses(trainer)
    return round(losses[-1], 4) if losses else None
