"""Online RL of the generator against a reward model with a KL penalty to the reference policy
(TRL's RLOOTrainer or GRPOTrainer, LoRA). Starting from an SFT adapter makes the SFT model the
reference (see :mod:`finetune.lora`)."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, cast

import torch

from finetune.config import RLHFJob
from finetune.data import Example, file_sha256, read_jsonl
from finetune.examples import cut
from finetune.reward import RewardScorer
from finetune.runner import (
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
from rag.generator import Generator
from rag.prompts import chat_messages

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def _completion_text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def make_reward_function(scorer: RewardScorer):
    """TRL reward function: (prompts, completions, question, contexts) -> one float per completion."""

    def reward(prompts, completions, question=None, contexts=None, **_: Any) -> list[float]:
        scores = []
        for i, completion in enumerate(completions):
            q = question[i] if question is not None else ""
            ctx = contexts[i] if contexts is not None else []
            scores.append(scorer.score(q, list(ctx), [_completion_text(completion)])[0])
        return scores

    reward.__name__ = "reward_model"
    return reward


@torch.no_grad()
def policy_stats(
    model,
    gen: Generator,
    scorer: RewardScorer,
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
        rewards += scorer.score(ex.question, list(ex.contexts), texts)
    n = max(1, len(rewards))
    return {
        "reward": sum(rewards) / n,
        "kl": sum(kls) / max(1, len(kls)),
        "length": sum(lengths) / max(1, len(lengths)),
    }


def run_rlhf(job: RLHFJob, ws: Workspace) -> TrainResult:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    check_output_free(ws, job)
    records = read_jsonl(job.prompts, "prompt", min_examples=2)
    set_threads()
    gen, model = start_policy(ws, job.from_adapter)
    scorer = RewardScorer(ws, job.reward_model, gen)
    max_ctx = ws.qa.max_context_tokens
    rng = random.Random(job.train.seed)
    eval_prompts = rng.sample(records, min(len(records), 4))  # sampled before and after: keep it cheap on a CPU
    rows = [
        {
            "prompt": chat_messages(
                r.question, [cut(gen.tokenizer, c, max_ctx) for c in r.contexts], one_shot=ws.qa.one_shot
            ),
            "question": r.question,
            "contexts": list(r.contexts),
        }
        for r in records
    ]
    run_dir = ws.run_dir("rlhf", job.output)
    resume = prepare_run_dir(run_dir, job.resume)
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
    cfg_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if job.algorithm == "rloo" else (GRPOConfig, GRPOTrainer)
    args = cfg_cls(**kwargs, **common)
    stats = RunStats()
    trainer = trainer_cls(
        model=cast("PreTrainedModel", model),  # start_policy returns the (merged) causal LM
        reward_funcs=make_reward_function(scorer),
        args=args,  # type: ignore[arg-type]  # cfg_cls is trainer_cls's config: mypy cannot pair the unions
        processing_class=gen.tokenizer,
        train_dataset=Dataset.from_list(rows),
        peft_config=lora_config(job.lora, model),
    )
    policy = trainer.model
    if policy is None:
        raise RuntimeError("the TRL trainer holds no model.")
    sample_kw: dict[str, Any] = dict(
        max_context_tokens=max_ctx,
        one_shot=ws.qa.one_shot,
        samples=job.num_generations,
        max_new_tokens=job.max_completion_length,
        temperature=job.temperature,
        seed=job.train.seed,
    )
    policy.eval()
    before = policy_stats(policy, gen, scorer, eval_prompts, **sample_kw)
    policy.train()
    out = trainer.train(resume_from_checkpoint=resume)
    policy.eval()
    after = policy_stats(policy, gen, scorer, eval_prompts, **sample_kw)
    stats.stop()
    trainable, total = trainable_parameters(policy)
    metrics = {
        "algorithm": job.algorithm,
        "beta": job.beta,
        "steps": int(out.global_step),
        "train_loss": round(float(out.training_loss), 4),
        "prompts": len(records),
        "eval_prompts": len(eval_prompts),
        "reward_before": round(before["reward"], 4),
        "reward_after": round(after["reward"], 4),
        "kl_before": round(before["kl"], 4),
        "kl_after": round(after["kl"], 4),
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
