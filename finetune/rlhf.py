"""Online RL of the generator with a KL penalty to the reference policy (TRL's RLOOTrainer or
GRPOTrainer, LoRA), or online DPO. Starting from an SFT adapter makes the SFT model the reference (see
:mod:`finetune.lora`).

Online DPO (``algorithm="online-dpo"``, Guo et al. 2024, "Direct Language Model Alignment from Online AI
Feedback"): GRPO's rollout loop (sample ``num_generations`` answers per prompt from the current policy, score
them with the reward) feeds DPO's loss instead of a policy gradient: in every group the best answer is chosen
and the worst rejected, against the frozen reference (:class:`OnlineDPOMixin`,
:func:`finetune.losses.online_dpo_loss`). Offline DPO (:mod:`finetune.dpo`) trains on pairs sampled once
from the starting policy; here the pairs follow the policy as it moves.

Rewards (``RLHFJob.reward``): the reward adapter (``model``), the verifiable token F1 of the answer against
the prompt's gold answer (``f1``, :mod:`finetune.verifier`), or their sum (``both``, TRL's ``reward_funcs``
with unit ``reward_weights``).

Regression guard (PPO-ptx, Ouyang et al. 2022): :class:`PtxMixin` overrides ``compute_loss(model, inputs,
return_outputs=False, num_items_in_batch=None)`` of the installed TRL's ``RLOOTrainer`` / ``GRPOTrainer``
(1.x; both route every training micro-batch of rollouts through it, inside the Trainer's autocast) and
returns ``rl_loss + ptx_coef * sft_loss``, the SFT loss being the mean token NLL of the gold answers of a
batch of prompts drawn in a seeded cycle (:func:`ptx_sft_loss`). InstructGPT mixes in pretraining
gradients; here the SFT data plays that part, which is what keeps the policy near the answers SFT taught.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch

from finetune.config import DEFAULT_PTX_COEF, RLHFJob
from finetune.data import Example, file_sha256, read_jsonl
from finetune.errors import DataError
from finetune.examples import cut, prompts_as_retrieved, tokenize_pair
from finetune.losses import IGNORE_INDEX, answer_logits, group_ids, online_dpo_loss
from finetune.reward import RewardScorer
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
    start_policy,
    trainable_parameters,
    trainer_kwargs,
)
from finetune.verifier import answer_f1, completion_text, make_f1_reward, reply_answer
from rag.generator import Generator
from rag.prompts import chat_messages

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def make_reward_function(scorer: RewardScorer):
    """TRL reward function: (prompts, completions, question, contexts) -> one float per completion."""

    def reward(prompts, completions, question=None, contexts=None, **_: Any) -> list[float]:
        scores = []
        for i, completion in enumerate(completions):
            q = question[i] if question is not None else ""
            ctx = contexts[i] if contexts is not None else []
            scores.append(scorer.score(q, list(ctx), [completion_text(completion)])[0])
        return scores

    reward.__name__ = "reward_model"
    return reward


@torch.no_grad()
def policy_stats(
    model,
    gen: Generator,
    score: Callable[[Example, list[str]], list[float]],
    prompts: list[Example],
    max_context_tokens: int,
    one_shot: bool,
    samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> dict[str, float]:
    """Mean reward of sampled answers, their KL to the reference (adapter off), and their length.

    KL is the usual sampled estimate: the sum over answer tokens of log pi(y_t) - log pi_ref(y_t).
    """
    torch.manual_seed(seed)
    rewards, kls, lengths = [], [], []
    eos = gen.eos_token_ids
    for ex in prompts:
        contexts = [cut(gen.tokenizer, c, max_context_tokens) for c in ex.contexts]
        prompt = gen.prompt_ids(ex.question, contexts, one_shot=one_shot)
        ids = torch.tensor([prompt] * samples)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=gen.tokenizer.pad_token_id,
        )
        completion = out[:, len(prompt) :]
        mask = torch.ones_like(completion, dtype=torch.bool)
        for row in range(completion.size(0)):  # tokens after the first end token are padding
            ends = [j for j, t in enumerate(completion[row].tolist()) if t in eos]
            if ends:
                mask[row, ends[0] + 1 :] = False
        full = torch.cat([ids, completion], dim=1)
        att = torch.cat([torch.ones_like(ids), mask.long()], dim=1)

        def logps(
            m: Any,
            full: torch.Tensor = full,
            att: torch.Tensor = att,
            prompt: list[int] = prompt,
            completion: torch.Tensor = completion,
        ) -> torch.Tensor:
            logits = m(input_ids=full, attention_mask=att).logits[:, len(prompt) - 1 : -1].float()
            return torch.log_softmax(logits, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)

        lp = logps(model)
        with model.disable_adapter():
            lp_ref = logps(model)
        kls += ((lp - lp_ref) * mask).sum(-1).tolist()
        lengths += mask.sum(-1).float().tolist()
        texts = [gen.decode(row[m].tolist()) for row, m in zip(completion, mask)]
        rewards += score(ex, texts)
    n = max(1, len(rewards))
    return {
        "reward": sum(rewards) / n,
        "kl": sum(kls) / max(1, len(kls)),
        "length": sum(lengths) / max(1, len(lengths)),
    }


def ptx_features(
    gen: Generator, records: list[Example], max_context_tokens: int, one_shot: bool, max_length: int
) -> list[dict[str, list[int]]]:
    """SFT examples of the prompts with a gold answer (prompt as at inference + answer turn), for the ptx loss."""
    rows = []
    for r in records:
        if not r.answer:
            continue
        contexts = [cut(gen.tokenizer, c, max_context_tokens) for c in r.contexts]
        ex = tokenize_pair(gen, r.question, contexts, r.answer, one_shot=one_shot)
        if len(ex["input_ids"]) <= max_length:
            rows.append(ex)
    return rows


def collate_ptx(rows: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` ``(N, L)`` and ``labels`` (-100 off the answer turn)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids, att, labels = [], [], []
    for r in rows:
        n = len(r["input_ids"])
        ids.append(r["input_ids"] + [pad_token_id] * (width - n))
        att.append([1] * n + [0] * (width - n))
        labels.append(
            [t if m else IGNORE_INDEX for t, m in zip(r["input_ids"], r["completion_mask"])]
            + [IGNORE_INDEX] * (width - n)
        )
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(att), "labels": torch.tensor(labels)}


def ptx_batches(
    rows: list[dict[str, list[int]]], batch_size: int, pad_token_id: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of ``rows``: each pass in a fresh seeded order."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield collate_ptx([rows[i] for i in order[start : start + batch_size]], pad_token_id)


def ptx_sft_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean NLL of the answer tokens of ``batch`` (:func:`collate_ptx`) under ``model``: the SFT loss."""
    device = next(model.parameters()).device
    labels = batch["labels"].to(device)
    logits, target, _ = answer_logits(
        model, batch["input_ids"].to(device), labels, attention_mask=batch["attention_mask"].to(device)
    )
    return torch.nn.functional.cross_entropy(logits, target)


class PtxMixin:
    """PPO-ptx for TRL's online trainers: ``compute_loss`` returns ``rl_loss + ptx_coef * sft_loss``.

    Overrides ``compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None)`` of TRL 1.x's
    ``RLOOTrainer`` and ``GRPOTrainer`` (their RL loss is ``_compute_loss(model, inputs)``, called from it).
    Set :attr:`ptx_coef` and :attr:`ptx_iter` (:func:`ptx_batches`) after building the trainer; with
    ``ptx_coef == 0`` or no batches the loss is TRL's own.
    """

    ptx_coef: float = 0.0
    ptx_iter: Iterator[dict[str, torch.Tensor]] | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(  # the TRL trainer this is mixed into
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if self.ptx_coef > 0 and self.ptx_iter is not None:
            # Past a DDP wrapper: the RL loss above went through its forward, which makes this step's
            # backward all-reduce the summed gradients of both terms.
            sft = ptx_sft_loss(self.accelerator.unwrap_model(model), next(self.ptx_iter))
            mode = "train" if model.training else "eval"
            self._metrics[mode]["ptx_sft_loss"].append(float(sft.detach()))
            loss = loss + self.ptx_coef * sft
        return loss


class OnlineDPOMixin:
    """Online DPO for TRL's ``GRPOTrainer``: overrides its ``_compute_loss(model, inputs)`` (TRL 1.x, called
    from ``compute_loss`` for every micro-batch of rollouts) with :func:`finetune.losses.online_dpo_loss` on
    the micro-batch's groups, the reference's log-probabilities being ``inputs["ref_per_token_logps"]`` (GRPO
    computes them when ``beta > 0``; ``beta`` is DPO's temperature here). The rollouts of one optimiser step
    must hold whole groups: the config sets ``steps_per_generation=1`` (GRPO otherwise shuffles a larger
    generation batch across micro-batches). Logs ``online_dpo/pairs``, ``online_dpo/accuracy``,
    ``online_dpo/margin`` and ``kl`` (the mean per-token KL estimate GRPO logs, k3).
    """

    def _compute_loss(self, model, inputs):
        self_: Any = self  # a GRPOTrainer
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"]
        per_token, _, _ = self_._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, mask], dim=1),
            completion_ids.size(1),
        )
        ref_token = inputs["ref_per_token_logps"]
        loss, stats = online_dpo_loss(
            (per_token * mask).sum(-1),
            (ref_token * mask).sum(-1),
            group_ids(prompt_ids, prompt_mask),
            inputs["advantages"],
            self_.beta,
        )
        mode = "train" if self_.model.training else "eval"
        delta = (ref_token - per_token).detach()
        kl = ((torch.exp(delta) - delta - 1) * mask).sum() / mask.sum().clamp(min=1)
        metrics = self_._metrics[mode]
        for key, value in stats.items():
            metrics[f"online_dpo/{key}"].append(value)
        metrics["kl"].append(float(kl))
        return loss / (self_.current_gradient_accumulation_steps if mode == "train" else 1.0)


def _trainer_classes() -> dict[str, tuple[type, type]]:
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    class PtxRLOOTrainer(PtxMixin, RLOOTrainer):
        """RLOOTrainer whose loss also holds ``ptx_coef`` x the SFT loss on gold answers."""

    class PtxGRPOTrainer(PtxMixin, GRPOTrainer):
        """GRPOTrainer whose loss also holds ``ptx_coef`` x the SFT loss on gold answers."""

    class PtxOnlineDPOTrainer(PtxMixin, OnlineDPOMixin, GRPOTrainer):
        """GRPO's rollouts, DPO's loss on each group's best and worst answer, plus ``ptx_coef`` x the SFT loss."""

    return {
        "rloo": (RLOOConfig, PtxRLOOTrainer),
        "grpo": (GRPOConfig, PtxGRPOTrainer),
        "online-dpo": (GRPOConfig, PtxOnlineDPOTrainer),
    }


def answer_scorer(job: RLHFJob, scorer: RewardScorer | None) -> Callable[[Example, list[str]], list[float]]:
    """``score(example, raw replies)``: the reward of :func:`policy_stats`, as training computes it."""

    def score(ex: Example, texts: list[str]) -> list[float]:
        total = [0.0] * len(texts)
        if job.reward in ("model", "both") and scorer is not None:
            total = [a + b for a, b in zip(total, scorer.score(ex.question, list(ex.contexts), texts))]
        if job.reward in ("f1", "both") and ex.answer:
            total = [a + answer_f1(reply_answer(t, ex.question), ex.answer) for a, t in zip(total, texts)]
        return total

    return score


def ptx_coefficient(job: RLHFJob, records: list[Example]) -> float:
    """The ptx coefficient of the run: the job's, else the default when some prompt has a gold answer, else 0."""
    if job.ptx_coef is not None:
        return job.ptx_coef
    return DEFAULT_PTX_COEF if any(r.answer for r in records) else 0.0


def build_trainer(job: RLHFJob, ws: Workspace, gen: Generator, model: Any, records: list[Example], run_dir: Any):
    """The TRL trainer of ``job`` (a :class:`PtxMixin` subclass) over ``records``, with its reward functions
    and the ptx batches set. Returns ``(trainer, reward scorer or None, ptx example count)``."""
    from datasets import Dataset

    max_ctx = ws.qa.max_context_tokens
    scorer = RewardScorer(ws, str(job.reward_model), gen) if job.reward in ("model", "both") else None
    gold = sum(1 for r in records if r.answer)
    if job.reward == "f1" and not gold:
        raise DataError(f"reward=f1 needs a gold 'answer' on the prompts of {job.prompts}; none has one")
    reward_funcs: list[Any] = []
    if scorer is not None:
        reward_funcs.append(make_reward_function(scorer))
    if job.reward in ("f1", "both"):
        reward_funcs.append(make_f1_reward())
    rows = [
        {
            "prompt": chat_messages(
                r.question, [cut(gen.tokenizer, c, max_ctx) for c in r.contexts], one_shot=ws.qa.one_shot
            ),
            "question": r.question,
            "contexts": list(r.contexts),
            "answer": r.answer or "",
        }
        for r in records
    ]
    kwargs = trainer_kwargs(job, run_dir, has_eval=False)
    # One optimiser step sees batch_size completions: batch_size / num_generations prompts.
    kwargs["per_device_train_batch_size"] = max(
        job.num_generations, job.train.batch_size // job.num_generations * job.num_generations
    )
    common: dict[str, Any] = dict(
        num_generations=job.num_generations,
        max_completion_length=job.max_completion_length,
        temperature=job.temperature,
        beta=job.beta,
        disable_dropout=True,
        log_completions=False,
    )
    if job.algorithm == "online-dpo":
        common["steps_per_generation"] = 1  # each micro-batch is a whole generation batch: groups stay together
    cfg_cls, trainer_cls = _trainer_classes()[job.algorithm]
    trainer = trainer_cls(
        model=cast("PreTrainedModel", model),  # start_policy returns the (merged) causal LM
        reward_funcs=reward_funcs,
        args=cfg_cls(**kwargs, **common),
        processing_class=gen.tokenizer,
        train_dataset=Dataset.from_list(rows),
        peft_config=lora_config(job.lora, model),
    )
    ptx_rows: list[dict[str, list[int]]] = []
    coef = ptx_coefficient(job, records)
    if coef > 0:
        ptx_rows = ptx_features(gen, records, max_ctx, ws.qa.one_shot, job.train.max_length)
        if not ptx_rows:
            raise DataError(
                f"ptx_coef={job.ptx_coef} needs prompts with a gold 'answer' in {job.prompts} (within "
                f"train.max_length={job.train.max_length}); add answers or pass --ptx-coef 0"
            )
        prompts_per_step = max(1, kwargs["per_device_train_batch_size"] // job.num_generations)
        trainer.ptx_coef = coef
        trainer.ptx_iter = ptx_batches(ptx_rows, prompts_per_step, gen.tokenizer.pad_token_id, job.train.seed)
    return trainer, scorer, len(ptx_rows)


def _mean_logged(history: list[dict[str, Any]], key: str) -> float | None:
    values = [float(h[key]) for h in history if key in h]
    return round(sum(values) / len(values), 4) if values else None


def run_rlhf(job: RLHFJob, ws: Workspace) -> TrainResult:
    check_output_free(ws, job)
    records = read_jsonl(job.prompts, "prompt", min_examples=2)
    set_threads()
    gen, model = start_policy(ws, job.from_adapter)
    retrieved_form = 0
    if job.collection:  # passages as retrieval shows them: the prompts the policy answers at inference
        source = ws.context_source(job.collection, job.k, job.max_context_tokens, gen.tokenizer)
        records, retrieved_form = prompts_as_retrieved(records, source)
        logger.info("RLHF prompts: %d of %d shown as %r retrieves them", retrieved_form, len(records), job.collection)
    run_dir = ws.run_dir("rlhf", job.output)
    resume = prepare_run_dir(run_dir, job.resume)
    trainer, scorer, ptx_examples = build_trainer(job, ws, gen, model, records, run_dir)
    rng = random.Random(job.train.seed)
    scorable = [r for r in records if r.answer] if job.reward == "f1" else records
    eval_prompts = rng.sample(scorable, min(len(scorable), 4))  # sampled before and after: keep it cheap on a CPU
    policy = trainer.model
    if policy is None:
        raise FinetuneError("the TRL trainer holds no model.")
    sample_kw: dict[str, Any] = dict(
        max_context_tokens=ws.qa.max_context_tokens,
        one_shot=ws.qa.one_shot,
        samples=job.num_generations,
        max_new_tokens=job.max_completion_length,
        temperature=job.temperature,
        seed=job.train.seed,
    )
    score = answer_scorer(job, scorer)
    stats = RunStats()
    policy.eval()
    before = policy_stats(policy, gen, score, eval_prompts, **sample_kw)
    policy.train()
    out = trainer.train(resume_from_checkpoint=resume)
    policy.eval()
    after = policy_stats(policy, gen, score, eval_prompts, **sample_kw)
    stats.stop()
    trainable, total = trainable_parameters(policy)
    history = trainer.state.log_history
    metrics = {
        "algorithm": job.algorithm,
        "reward": job.reward,
        "beta": job.beta,
        "ptx_coef": ptx_coefficient(job, records),
        "ptx_examples": ptx_examples,
        "learning_rate": job.train.learning_rate,
        "steps": int(out.global_step),
        "train_loss": round(float(out.training_loss), 4),
        "prompts": len(records),
        "prompts_collection": job.collection,
        "prompts_retrieved_form": retrieved_form,
        "eval_prompts": len(eval_prompts),
        "reward_before": round(before["reward"], 4),
        "reward_after": round(after["reward"], 4),
        "kl_before": round(before["kl"], 4),
        "kl_after": round(after["kl"], 4),
        "train_kl": _mean_logged(history, "kl"),
        "train_ptx_sft_loss": _mean_logged(history, "ptx_sft_loss"),
        **(
            {
                "train_pairs_per_step": _mean_logged(history, "online_dpo/pairs"),
                "train_pair_accuracy": _mean_logged(history, "online_dpo/accuracy"),
                "train_dpo_margin": _mean_logged(history, "online_dpo/margin"),
            }
            if job.algorithm == "online-dpo"
            else {}
        ),
        "length_before": round(before["length"], 2),
        "length_after": round(after["length"], 2),
        "from_adapter": job.from_adapter,
        "reward_model": job.reward_model,
        "trainable_params": trainable,
        "total_params": total,
        **stats.to_dict(),
    }
    info = save_continuation(
        ws,
        policy,
        job,
        kind="rlhf",
        base=gen,
        from_adapter=job.from_adapter,
        meta={
            "data": {"path": str(job.prompts), "sha256": file_sha256(job.prompts), "records": len(records)},
            "metrics": metrics,
        },
    )
    return TrainResult(info, metrics)
