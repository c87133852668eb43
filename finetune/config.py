"""Validated options of the fine-tune commands: one model per command, shared LoRA and training parts.

Every command takes its options on the command line or from ``--config file.yaml`` (the same
field names; command-line options win). SFT's defaults are the shipped reader adapter's recipe
(``data/adapters/reader.recipe.yaml``, measured by ``bench/reader_adapter.py`` on a 2-core AVX2 CPU).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from finetune.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

DEFAULT_PTX_COEF = 0.5  # RLHFJob.ptx_coef when the prompts carry gold answers

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraOptions(BaseModel):
    """The LoRA adapter (peft)."""

    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        description="Linear layers that get adapters (names inside each block).",
    )
    top_layers: int | None = Field(
        None,
        ge=0,
        description="Adapt only the last N transformer blocks: back-propagation then stops below them, "
        "which makes each step cheaper on a CPU. 0 or null = all blocks.",
    )


class SFTLoraOptions(LoraOptions):
    """SFT's adapter: the shipped reader's recipe (data/adapters/reader.recipe.yaml) adapts the top 16 blocks,
    which cuts a step's cost to ~0.77x and its memory with it at the same held-out F1 (BENCHMARKS.md)."""

    top_layers: int | None = Field(
        16,
        ge=0,
        description="Adapt only the last N transformer blocks (all of them when the model has fewer): "
        "back-propagation then stops below them, which makes each step cheaper on a CPU. 0 = all blocks.",
    )


class TrainOptions(BaseModel):
    """The optimisation loop (transformers/TRL Trainer arguments)."""

    learning_rate: float = Field(4e-4, gt=0, description="Learning rate.")
    epochs: float = Field(4.0, gt=0, description="Epochs over the data.")
    max_steps: int = Field(-1, description="Stop after this many optimiser steps (-1: run all epochs).")
    # 4 x 2 = 8 examples per optimiser step, with half the activation memory of batch 8 (the shipped recipe's).
    batch_size: int = Field(4, ge=1, description="Examples per device step.")
    grad_accum: int = Field(2, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(
        512, ge=16, description="Longest tokenised example; longer ones are cut from the context side."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming up the learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    eval_split: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the data held out to report eval loss/accuracy each epoch (0 = train on all, as TRL and "
        "LLaMA-Factory do by default; reward models always hold out >= 20% for pairwise accuracy).",
    )
    seed: int = Field(0, description="Random seed.")
    logging_steps: int = Field(10, ge=1, description="Log the loss every N steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (resume with --resume).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, slower)."
    )


class SFTTrainOptions(TrainOptions):
    """SFT's loop: the shipped reader's recipe, measured at < 4 GiB peak RSS and 13.5 min for 293 examples on a
    2-core AVX2 CPU (BENCHMARKS.md, "Shipped reader adapter")."""

    epochs: float = Field(3.0, gt=0, description="Epochs over the data.")


class PreferenceTrainOptions(TrainOptions):
    """The optimisation loop of DPO and RLHF: gentler than SFT's (run C of BENCHMARKS: DPO at SFT's 4e-4 x 4
    epochs drove the reward margin to 14 and held-out F1 from 0.445 to 0.318)."""

    learning_rate: float = Field(5e-5, gt=0, description="Learning rate.")
    epochs: float = Field(1.0, gt=0, description="Epochs over the data.")


class RLHFTrainOptions(PreferenceTrainOptions):
    """RLHF's loop: 8 completions per device step (2 prompts x 4 samples), as measured in BENCHMARKS.md."""

    batch_size: int = Field(8, ge=1, description="Completions per device step (a multiple of num_generations).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")


class BaseJob(BaseModel):
    output: str = Field(..., description="Adapter name; saved under $RAGQA_HOME/adapters/NAME.")
    lora: LoraOptions = LoraOptions()
    train: TrainOptions = TrainOptions()
    resume: bool = Field(False, description="Resume from the last checkpoint of a run with the same output name.")
    overwrite: bool = Field(False, description="Replace an existing adapter of that name.")

    @field_validator("output")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                "adapter names use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)"
            )
        return v


class RetrievalOptions(BaseModel):
    """How training prompts get their contexts from a collection (as at inference)."""

    collection: str | None = Field(None, description="Retrieve each question's contexts from this collection.")
    k: int = Field(4, ge=1, le=64, description="Chunks retrieved per question.")
    max_context_tokens: int | None = Field(
        None, ge=16, description="Cut each chunk to this many tokens (default: the QA config's)."
    )


class SFTJob(BaseJob, RetrievalOptions):
    data: Path = Field(..., description="JSONL of {question, answer[, context|contexts]}.")
    lora: SFTLoraOptions = SFTLoraOptions()
    train: SFTTrainOptions = SFTTrainOptions()
    prompt_style: Literal["auto", "per-document", "stuffed"] = Field(
        "auto",
        description="per-document: one chunk per prompt, as rag-token/rag-sequence read them; stuffed: the "
        "top-k chunks in one prompt, as the stuff mode reads them (RAFT); auto: follow the QA mode.",
    )
    distractor_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="per-document: share of questions that also get a prompt holding only a distractor chunk, "
        "trained to answer \"I don't know\". stuffed: share of prompts without the gold chunk (RAFT's 1-P).",
    )
    gold_fallback: bool = Field(True, description="Use the record's own context when retrieval missed the answer.")
    fallback_as_retrieved: bool = Field(
        False,
        description="Show a fallback passage as retrieval returned it (with its [title] line) when retrieval returned "
        "it, so 'I don't know.' examples (always fallbacks) do not differ from answerable ones by form. Off by "
        "default: the shipped reader's recipe (unanswerable 1.0) was tuned without it; with it the same recipe's "
        "reader abstains on 47% of the answerable held-out questions (BENCHMARKS.md, 'Shipped reader adapter').",
    )
    full_style_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="per-document: share of questions trained in the full answer style, with the context sentence "
        "holding the answer as target (one adapter for short spans and complete grounded sentences).",
    )


class RewardJob(BaseJob):
    data: Path = Field(..., description="JSONL of {question, chosen, rejected[, context|contexts]}.")


class DPOJob(BaseJob):
    data: Path = Field(..., description="JSONL of {question, chosen, rejected[, context|contexts]}.")
    from_adapter: str | None = Field(None, description="Start from this SFT adapter (it is also the reference model).")
    beta: float = Field(0.1, gt=0, description="DPO temperature: larger stays closer to the reference.")
    rpo_alpha: float = Field(
        1.0,
        ge=0,
        description="Weight of the SFT loss (mean token NLL) on the chosen answers added to the DPO loss (RPO, "
        "Pang et al. 2024): keeps the chosen answers likely while the margin grows. 0 = plain DPO.",
    )
    precompute_ref: bool = Field(
        True,
        description="Compute the reference model's log-probabilities of every pair once, before training, instead "
        "of a reference forward pass in every step of every epoch (the reference is frozen).",
    )
    train: PreferenceTrainOptions = PreferenceTrainOptions()


class RLHFJob(BaseJob, RetrievalOptions):
    """``collection`` (``-c``): show each prompt's passages as that collection's retrieval shows them (with their
    ``[title]`` line), or retrieve one for prompts without any, so the policy trains on the prompts it answers."""

    prompts: Path = Field(..., description="JSONL of {question[, answer][, context|contexts]}.")
    reward: Literal["model", "f1", "both"] | None = Field(
        None,
        description="model: the reward adapter; f1: token F1 of the answer against the record's gold answer "
        "(verifiable); both: their sum. Default: model when --reward-model is given, else f1.",
    )
    reward_model: str | None = Field(None, description="A reward adapter trained with `ragqa finetune reward`.")
    ptx_coef: float | None = Field(
        None,
        ge=0,
        description="PPO-ptx guard (InstructGPT): this times the SFT loss on the prompts' gold answers is added "
        f"to the RL loss. 0 = off; default {DEFAULT_PTX_COEF} when the prompts file has gold answers, else off.",
    )
    from_adapter: str | None = Field(None, description="Start from this SFT adapter (it is also the KL reference).")
    algorithm: Literal["grpo", "rloo", "online-dpo"] = Field(
        "rloo",
        description="rloo / grpo: TRL's online RL trainers; online-dpo: DPO's loss on the best and worst of each "
        "prompt's sampled answers, resampled from the current policy every step (Guo et al. 2024).",
    )
    beta: float = Field(
        0.05,
        ge=0,
        description="KL penalty coefficient to the reference policy (rloo / grpo); DPO's temperature "
        "(online-dpo, must be > 0).",
    )
    num_generations: int = Field(
        4, ge=2, description="Completions sampled per prompt (the group / leave-one-out baseline)."
    )
    max_completion_length: int = Field(16, ge=1, description="Longest sampled completion (tokens).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    train: RLHFTrainOptions = RLHFTrainOptions()

    @model_validator(mode="after")
    def _reward_source(self) -> RLHFJob:
        if self.reward is None:
            self.reward = "model" if self.reward_model else "f1"
        if self.reward in ("model", "both") and not self.reward_model:
            raise ValueError(f"reward={self.reward} needs --reward-model (an adapter from `ragqa finetune reward`)")
        if self.algorithm == "online-dpo" and self.beta <= 0:
            raise ValueError("algorithm=online-dpo needs beta > 0 (DPO's temperature against the reference)")
        return self


class PrefsJob(RetrievalOptions):
    """On-policy preference pairs: answers sampled from the policy through retrieval and the RAG pipeline,
    scored by a verifier (F1 against the gold answer, else the reward model), best against worst."""

    data: Path = Field(..., description="JSONL of {question[, answer]}: the training questions (gold answer optional).")
    collection: str = Field(..., description="Collection the answers' evidence is retrieved from.")
    output: Path = Field(..., description="JSONL of preference pairs to write (the format `feedback export` writes).")
    adapter: str | None = Field(None, description="The policy: this generator adapter (default: the base model).")
    samples: int = Field(4, ge=2, le=64, description="Answers sampled per question.")
    mode: Literal["rag-sequence", "rag-token"] = Field("rag-sequence", description="RAG mode the answers come from.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Sample j of question i is drawn with seed (seed * 1_000_003 + i * samples + j).")
    reward_model: str | None = Field(
        None, description="Reward adapter that scores answers to questions without a gold answer."
    )
    min_margin: float = Field(
        0.0, ge=0, description="Keep a pair only when the best score beats the worst by more than this."
    )
    contexts: Literal["top", "all"] = Field(
        "top",
        description="Context written with each pair: top = the chunk that most supports the chosen answer (the "
        "per-document prompt rag-token / rag-sequence read); all = every chunk read (a stuffed prompt).",
    )
    max_questions: int | None = Field(None, ge=1, description="Use at most this many questions (file order).")


class RAGJob(BaseJob, RetrievalOptions):
    data: Path = Field(..., description="JSONL of {question, answer}.")
    collection: str = Field(..., description="Collection the K documents are retrieved from.")
    mode: Literal["rag-token", "rag-sequence"] = Field("rag-token", description="Which marginal likelihood to train.")
    train_query_encoder: bool = Field(
        False, description="Also train the query side of the retriever through p(z|x); document vectors stay fixed."
    )
    query_learning_rate: float = Field(2e-5, gt=0, description="Learning rate of the query encoder.")
    temperature: float | None = Field(None, gt=0, description="Posterior temperature (default: the retriever's).")


def load_job(model: type[BaseModel], config_file: Path | None, overrides: dict[str, Any]) -> Any:
    """Build a job from an optional YAML file plus command-line overrides (None values are ignored).

    Overrides may use dotted keys for nested fields, e.g. ``{"lora.r": 8, "train.epochs": 1}``.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        if not Path(config_file).is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        try:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file} must hold a mapping of options")
        data.update(loaded)
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid fine-tune options: {problems}") from exc
