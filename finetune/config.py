"""Validated options of the fine-tune commands: one model per command, shared LoRA and training parts.

Every command takes its options on the command line or from ``--config file.yaml`` (the same
field names; command-line options win). Defaults are the recipe measured in ``bench/finetune.py``
on a 2-core CPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from finetune.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

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
        ge=1,
        description="Adapt only the last N transformer blocks: back-propagation then stops below them, "
        "which makes each step cheaper on a CPU. None = all blocks.",
    )


class TrainOptions(BaseModel):
    """The optimisation loop (transformers/TRL Trainer arguments)."""

    # Measured recipe (bench/finetune.py): 4 epochs at 4e-4 over all blocks, rank 16.
    learning_rate: float = Field(4e-4, gt=0, description="Learning rate.")
    epochs: float = Field(4.0, gt=0, description="Epochs over the data.")
    max_steps: int = Field(-1, description="Stop after this many optimiser steps (-1: run all epochs).")
    batch_size: int = Field(8, ge=1, description="Examples per device step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
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


class RLHFJob(BaseJob):
    prompts: Path = Field(..., description="JSONL of {question[, context|contexts]}.")
    reward_model: str = Field(..., description="A reward adapter trained with `ragqa finetune reward`.")
    from_adapter: str | None = Field(None, description="Start from this SFT adapter (it is also the KL reference).")
    algorithm: Literal["grpo", "rloo"] = Field("rloo", description="TRL's online RL trainer.")
    beta: float = Field(0.05, ge=0, description="KL penalty coefficient to the reference policy.")
    num_generations: int = Field(
        4, ge=2, description="Completions sampled per prompt (the group / leave-one-out baseline)."
    )
    max_completion_length: int = Field(16, ge=1, description="Longest sampled completion (tokens).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")


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
