"""What every fine-tune command shares: the base model, LoRA set-up, Trainer arguments,
checkpoints and resume, resource accounting, and saving the adapter into the registry.

Under an accelerate launch (:mod:`finetune.distributed`) every process runs the same trainer; the
run folder is cleared and the adapter written by rank 0 alone, and every rank returns the adapter."""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune.adapters import AdapterInfo, AdapterRegistry
from finetune.config import BaseJob, LoraOptions
from finetune.distributed import is_main_process, local_world_size, wait_for_everyone, world_size
from finetune.errors import AdapterExistsError, FinetuneError, InvalidAdapterError
from ingest.config import IngestConfig
from ingest.hardware import cpu_fast_bf16
from rag.config import GeneratorConfig, QAConfig, RetrieverConfig
from rag.generator import Generator, pick_device

logger = logging.getLogger(__name__)


@dataclass
class Workspace:
    """Where a fine-tune run reads its base model and writes its checkpoints and adapter."""

    home: Path
    generator: GeneratorConfig
    ingest: IngestConfig = field(default_factory=IngestConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    qa: QAConfig = field(default_factory=QAConfig)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapters(self) -> AdapterRegistry:
        return AdapterRegistry(self.home / "adapters")

    def run_dir(self, kind: str, name: str) -> Path:
        return self.home / "finetune-runs" / f"{kind}-{name}"

    def context_source(self, collection: str, k: int, max_context_tokens: int | None, tokenizer):
        """Retrieval of training contexts from ``collection`` with the configured retriever."""
        from finetune.examples import ContextSource
        from ingest.workspace import Workspace as IngestWorkspace
        from rag.retriever import Retriever

        iws = IngestWorkspace(self.home, self.ingest)
        coll = iws.open(collection, readonly=True)  # raises a clear error for an unknown collection
        return ContextSource(
            Retriever(iws.embedder, self.retriever),
            coll,
            k,
            max_context_tokens or self.qa.max_context_tokens,
            tokenizer,
        )

    def base_generator(self) -> Generator:
        """A fresh generator (its own copy of the weights, so training never touches a served model), without the int8
        decode copy: training differentiates through the weights, which the int8 kernels cannot."""
        config = self.generator.model_copy(update={"int8_decode": "off"})
        if config.dtype == "auto" and pick_device(config.device).type == "cpu":
            # float32 master weights on a CPU; the trainer adds bf16 autocast where the CPU multiplies bf16
            # (AMX, AVX512-BF16)
            config = config.model_copy(update={"dtype": "float32"})
        gen = Generator(config, self.models_dir, self.home / "adapters")
        gen.warm_up()
        return gen


@dataclass
class TrainResult:
    """What every fine-tune command returns: the saved adapter and the run's metrics."""

    adapter: AdapterInfo
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter.to_dict(), "metrics": self.metrics}


def split_holdout(rows: list, eval_split: float, seed: int, *, always: bool = False) -> tuple[list, list]:
    """(train, eval) with ``eval_split`` of the rows held out (seeded). Sets under 10 rows are not split,
    unless ``always`` (pairwise accuracy needs held-out pairs): then at least 20%, at least one row."""
    import random

    share = max(eval_split, 0.2) if always else eval_split
    if share <= 0 or (len(rows) < 10 and not always):
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, int(round(len(rows) * share)))])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


@dataclass
class RunStats:
    """Wall time and peak memory of a run."""

    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None
    num_processes: int = field(default_factory=world_size)  #: processes that trained together (accelerate)

    def stop(self) -> RunStats:
        self.seconds = time.perf_counter() - self.started
        self.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        if torch.cuda.is_available():
            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_seconds": round(self.seconds, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_gpu_mb": None if self.peak_gpu_mb is None else round(self.peak_gpu_mb, 1),
            "num_processes": self.num_processes,
        }


def num_layers(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None)
    if n is None:
        raise FinetuneError("cannot tell how many layers the model has (config.num_hidden_layers missing)")
    return int(n)


def lora_config(
    opts: LoraOptions, model: torch.nn.Module, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None
):
    """A peft LoraConfig from our options; ``top_layers`` restricts adapters to the last N blocks."""
    from peft import LoraConfig

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in opts.target_modules if t not in names]
    if missing:
        raise FinetuneError(
            f"target modules {missing} are not linear layers of this model (it has: {', '.join(sorted(names))}); "
            "set lora.target_modules"
        )
    layers = None
    if opts.top_layers:
        n = num_layers(model)
        layers = list(range(max(0, n - opts.top_layers), n))
    return LoraConfig(
        r=opts.r,
        lora_alpha=opts.alpha,  # type: ignore[arg-type]  # peft annotates int; a float alpha works (scale = alpha / r)
        lora_dropout=opts.dropout,
        target_modules=list(opts.target_modules),
        layers_to_transform=layers,
        task_type=task_type,
        modules_to_save=modules_to_save,
        bias="none",
    )


def trainer_kwargs(job: BaseJob, run_dir: Path, *, has_eval: bool) -> dict[str, Any]:
    """Arguments shared by every TRL config class (SFTConfig, RewardConfig, DPOConfig, GRPOConfig...)."""
    t = job.train
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(run_dir),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=1,
        eval_strategy="epoch" if has_eval else "no",
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        use_cpu=not cuda,
        # CPU: autocast where bf16 matmuls are hardware (a step 1.9x faster with AMX, 1.2x with AVX512-BF16)
        bf16=torch.cuda.is_bf16_supported() if cuda else cpu_fast_bf16(),
        gradient_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=False,
        remove_unused_columns=False,
    )


def last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not run_dir.is_dir():
        return None
    return get_last_checkpoint(str(run_dir))


def prepare_run_dir(run_dir: Path, resume: bool) -> str | None:
    """The checkpoint to resume from (when asked and present); a stale run is cleared otherwise.

    Under accelerate only rank 0 clears it: the others write into it only at the first checkpoint,
    after training steps that wait for rank 0."""
    ckpt = last_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        logger.warning("no checkpoint under %s to resume from; starting afresh", run_dir)
    if ckpt is None and run_dir.exists() and is_main_process():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if ckpt:
        logger.info("resuming from %s", ckpt)
    return ckpt


def check_output_free(ws: Workspace, job: BaseJob) -> None:
    if ws.adapters.exists(job.output) and not job.overwrite:
        raise AdapterExistsError(f"adapter {job.output!r} exists; pass --overwrite or choose another --output")


def set_threads() -> None:
    """Use every core for the CPU kernels, shared among the processes of a launch on this machine
    (the tokenizer's thread pool stays off)."""
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size()))


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


@dataclass
class EvaluatedRun:
    """A Trainer's run between two evaluations on its eval set: the train output, the metrics before and after,
    its wall time and memory, and the trained model with its parameter counts."""

    model: torch.nn.Module  #: the trained model (the Trainer's, with its adapter)
    output: Any
    before: dict[str, float]
    after: dict[str, float]
    stats: RunStats
    trainable: int
    total: int


def train_evaluated(trainer: Any, resume: str | bool | None, stats: RunStats) -> EvaluatedRun:
    """Evaluate, train (resuming from ``resume`` if set), evaluate again, and stop ``stats``."""
    before = trainer.evaluate()
    out = trainer.train(resume_from_checkpoint=resume)
    after = trainer.evaluate()
    stats.stop()
    assert trainer.model is not None  # the Trainer was built with a model
    trainable, total = trainable_parameters(trainer.model)
    return EvaluatedRun(trainer.model, out, before, after, stats, trainable, total)


def on_main_process(ws: Workspace, name: str, save: Callable[[], AdapterInfo]) -> AdapterInfo:
    """Run ``save`` on rank 0 only; every rank then returns the adapter it committed (one write per launch)."""
    if world_size() == 1:
        return save()
    if is_main_process():
        try:
            return save()
        finally:
            wait_for_everyone()
    wait_for_everyone()
    return ws.adapters.get(name)


def save_adapter(
    ws: Workspace, model, job: BaseJob, *, kind: str, base: Generator, meta: dict[str, Any], tokenizer=None
) -> AdapterInfo:
    """Save a PeftModel's adapter atomically under ``job.output`` with its ragqa metadata (rank 0 only)."""
    return on_main_process(
        ws, job.output, lambda: _save_adapter(ws, model, job, kind=kind, base=base, meta=meta, tokenizer=tokenizer)
    )


def _save_adapter(
    ws: Workspace, model, job: BaseJob, *, kind: str, base: Generator, meta: dict[str, Any], tokenizer=None
) -> AdapterInfo:
    reg = ws.adapters
    staging = reg.staging_dir(job.output)
    try:
        model.save_pretrained(str(staging))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        full_meta = {
            "kind": kind,
            "base_model": base.name,
            "base_model_path": str(base.config.model),
            "options": job.model_dump(mode="json"),
            **meta,
        }
        return reg.commit(staging, job.output, full_meta, overwrite=job.overwrite)
    except Exception:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise


def start_policy(ws: Workspace, from_adapter: str | None) -> tuple[Generator, torch.nn.Module]:
    """The model preference training starts from: the base, or the base with ``from_adapter`` merged in.

    With an adapter merged, a fresh LoRA on top has the SFT model as its "adapter off" view, which is
    the reference model TRL uses for PEFT models (see :mod:`finetune.lora`).
    """
    from finetune.lora import merge_adapter

    gen = ws.base_generator()
    model = gen.model
    if from_adapter:
        info = ws.adapters.require_generator_adapter(from_adapter)  # an AdapterRegistryError is a FinetuneError
        if info.base_model and info.base_model != gen.name:
            raise InvalidAdapterError(
                f"adapter {from_adapter!r} was trained on {info.base_model!r}, the generator is {gen.name!r}"
            )
        model = merge_adapter(model, info.path)
        gen.use_model(model)  # the generator's prompts and decoding now run the SFT model
    return gen, model


def save_continuation(
    ws: Workspace,
    peft_model,
    job: BaseJob,
    *,
    kind: str,
    base: Generator,
    meta: dict[str, Any],
    from_adapter: str | None,
) -> AdapterInfo:
    """Save a LoRA trained on top of ``from_adapter`` as one adapter over the base (stacked), else as is
    (rank 0 only)."""
    if not from_adapter:
        return save_adapter(ws, peft_model, job, kind=kind, base=base, meta=meta)
    return on_main_process(
        ws,
        job.output,
        lambda: _save_stacked(ws, peft_model, job, kind=kind, base=base, meta=meta, from_adapter=from_adapter),
    )


def _save_stacked(
    ws: Workspace, peft_model, job: BaseJob, *, kind: str, base: Generator, meta: dict[str, Any], from_adapter: str
) -> AdapterInfo:
    from finetune.lora import stack_adapters

    reg = ws.adapters
    top = reg.staging_dir(job.output + "-top")
    staging = reg.staging_dir(job.output)
    try:
        peft_model.save_pretrained(str(top))
        stack_adapters(reg.path(from_adapter), top, staging)
        full_meta = {
            "kind": kind,
            "base_model": base.name,
            "base_model_path": str(base.config.model),
            "from_adapter": from_adapter,
            "options": job.model_dump(mode="json"),
            **meta,
        }
        return reg.commit(staging, job.output, full_meta, overwrite=job.overwrite)
    except Exception:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        import shutil

        shutil.rmtree(top, ignore_errors=True)
