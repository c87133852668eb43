"""``ragqa finetune ...``, ``ragqa adapters ...`` and ``ragqa feedback ...``: the improve side of the CLI.

Same shape as the rest of the CLI (see :mod:`api.cli`): options or ``--config file.yaml``, progress on
stderr, a summary at the end, ``--json`` for one JSON object on stdout, exit status 2 on bad input.
"""

from __future__ import annotations

import typer

finetune_app = typer.Typer(help="Fine-tune the generator with LoRA: sft, reward, rlhf, dpo, rag; synth builds training data.", no_args_is_help=True)
adapters_app = typer.Typer(help="List, show and delete trained LoRA adapters.", no_args_is_help=True)
feedback_app = typer.Typer(help="Turn feedback left through the REST API into training files.", no_args_is_help=True)

from api.cli import JsonOpt, emit_json, err, fail, out, settings  # noqa: E402,F401  (api.cli attaches these apps last)


# -- synth: training pairs from a collection's own text; feedback export -------------------------
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, Optional  # noqa: E402

from rich.table import Table  # noqa: E402

from api.cli import CollectionOpt, workspace  # noqa: E402
from ingest.errors import IngestError  # noqa: E402


def _summary_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, str(value))
    return table


@finetune_app.command("synth")
def finetune_synth(
    collection: CollectionOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write (SFT format with source/chunk_id).")],
    n: Annotated[Optional[int], typer.Option("--n", min=1, help="At most this many pairs (default: up to --per-chunk per chunk).")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed: the same seed and collection give the same pairs.")] = 0,
    method: Annotated[str, typer.Option(help="cloze (fast, no LLM), generate (the generator writes questions) or both.")] = "cloze",
    per_chunk: Annotated[int, typer.Option("--per-chunk", min=1, help="Most answers chosen per chunk.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Build question/answer pairs from a collection's chunks (answers are names, dates and numbers
    copied from the chunk), so a domain fine-tune needs nothing but the documents."""
    from finetune.synth import METHODS, SynthError, generator_question_writer, synthesize

    if method not in METHODS:
        fail(f"unknown method {method!r}; use {', '.join(METHODS)}", as_json)
    if output.exists() and output.is_dir():
        fail(f"{output} is a directory; give a file name such as {output / 'synth.jsonl'}", as_json)
    try:
        with workspace().open(collection, readonly=True, check_embedder=False) as coll:
            chunks = list(coll.store.iter_chunks())
    except IngestError as exc:
        fail(str(exc), as_json)
        return
    if not chunks:
        fail(f"collection {collection!r} has no chunks; ingest documents first with `ragqa ingest PATH -c {collection}`", as_json)
    writer = None
    if method in ("generate", "both"):
        from rag.generator import Generator

        s = settings()
        if not as_json:
            err.print("loading the generator…")
        try:
            writer = generator_question_writer(Generator(s.generator, s.models_dir, s.adapters_dir).warm_up())
        except IngestError as exc:
            fail(str(exc), as_json)
            return
    try:
        result = synthesize(chunks, n=n, seed=seed, method=method, per_chunk=per_chunk,
                            write_question=writer, progress=not as_json)
    except SynthError as exc:
        fail(str(exc), as_json)
        return
    report = result.report
    if not result.pairs:
        fail(f"no question/answer pairs could be made from the {report.chunks_total} chunks of {collection!r}: "
             "cloze needs English sentences with names, dates or numbers"
             + (f"; the generator wrote {report.generate_rejected} unusable question(s)" if report.generate_rejected else ""),
             as_json)
    from finetune.data import write_jsonl

    write_jsonl(output, [p.to_json() for p in result.pairs])
    summary = {"ok": True, "output": str(output), "collection": collection, "method": method, "seed": seed,
               **report.to_dict()}
    if as_json:
        emit_json(summary)
        return
    out.print(_summary_table(f"synth from {collection!r} ({method})", [
        ("pairs written", report.pairs),
        ("chunks used / total", f"{report.chunks_used} / {report.chunks_total}"),
        ("chunks with candidate answers", report.chunks_with_candidates),
        ("per method", ", ".join(f"{k} {v}" for k, v in report.per_method.items())),
        ("per answer type", ", ".join(f"{k} {v}" for k, v in sorted(report.per_kind.items())) or "-"),
        ("question forms", ", ".join(f"{k} {v}" for k, v in sorted(report.per_form.items())) or "-"),
        ("duplicates dropped", report.duplicates),
        *([("generated / rejected", f"{report.generate_attempts} / {report.generate_rejected}")]
          if method != "cloze" else []),
        ("seconds", f"{report.seconds:.1f}"),
        ("output", output),
    ]))
    out.print(f"train on it: ragqa finetune sft --data {output} -c {collection} --output NAME", highlight=False)


@feedback_app.command("export")
def feedback_export(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for sft.jsonl and preferences.jsonl.")],
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Only feedback on answers from this collection.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn the REST API's feedback into sft.jsonl (corrections, up-voted answers) and
    preferences.jsonl (a correction chosen over the answer it corrects)."""
    from api.answers import AnswerLog
    from api.db import server_db_path
    from finetune.feedback import FeedbackError, export_feedback, write_feedback_files

    s = settings()
    db = server_db_path(s.home)
    if not db.is_file():
        fail(f"no server database at {db}: feedback is collected by the REST API (`ragqa serve`, then "
             "POST /v1/answers/{answer_id}/feedback); check --home / RAGQA_HOME", as_json)
    if output_dir.exists() and not output_dir.is_dir():
        fail(f"{output_dir} exists and is not a folder", as_json)

    readers: dict[str, Any] = {}

    def fetch(name: str, chunk_ids: list[str]) -> dict[str, str]:
        if name not in readers:
            try:
                readers[name] = workspace().open(name, readonly=True, check_embedder=False)
            except IngestError as exc:
                readers[name] = None
                err.print(f"[yellow]warning:[/] cannot read collection {name!r} for contexts: {exc}", highlight=False)
        coll = readers[name]
        if coll is None:
            return {}
        return {cid: row.text for cid, row in coll.store.get_chunks_by_chunk_id(chunk_ids).items()}

    log = AnswerLog(db)
    try:
        records = list(log.feedback_records(collection))
        if not records:
            where = f" on collection {collection!r}" if collection else ""
            counts = log.count()
            fail(f"no feedback yet{where} ({counts['answers']} answers logged, {counts['feedback']} feedback rows): "
                 "rate answers with POST /v1/answers/{answer_id}/feedback", as_json)
        try:
            export = export_feedback(records, fetch_contexts=fetch)
        except FeedbackError as exc:
            fail(str(exc), as_json)
            return
    finally:
        log.close()
        for coll in readers.values():
            if coll is not None:
                coll.close()
    report = export.report
    if not export.sft and not export.preferences:
        skipped = ", ".join(f"{v} {k}" for k, v in report.skipped.items())
        fail(f"{report.records} feedback row(s) but none makes a training example ({skipped}); "
             "a thumbs-down needs a correction", as_json)
    paths = write_feedback_files(export, output_dir)
    if as_json:
        emit_json({"ok": True, "output_dir": str(output_dir), "files": {k: str(v) for k, v in paths.items()},
                   "collection": collection, **report.to_dict()})
        return
    out.print(_summary_table("feedback export", [
        ("feedback rows", report.records),
        ("sft examples", f"{report.sft} ({report.sft_from_corrections} corrections, {report.sft_from_upvotes} up-voted answers)"),
        ("preference pairs", report.preferences),
        ("skipped", ", ".join(f"{k}: {v}" for k, v in report.skipped.items()) or "none"),
        ("duplicates dropped", report.duplicates),
        ("contexts logged / fetched / missing", f"{report.contexts_logged} / {report.contexts_fetched} / {report.contexts_missing}"),
        ("collections", ", ".join(report.collections) or "-"),
        ("sft file", paths["sft"]),
        ("preferences file", paths["preferences"]),
    ]))


# -- trainers: sft, reward, dpo, rlhf, rag --------------------------------------------------------
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file of options (command-line options win).")]
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="Adapter name (saved under $RAGQA_HOME/adapters/NAME).")]
RankOpt = Annotated[Optional[int], typer.Option("--lora-r", min=1, help="LoRA rank (default 16).")]
AlphaOpt = Annotated[Optional[float], typer.Option("--lora-alpha", help="LoRA alpha (default 32).")]
DropoutOpt = Annotated[Optional[float], typer.Option("--lora-dropout", help="LoRA dropout (default 0.05).")]
TargetsOpt = Annotated[Optional[str], typer.Option("--target-modules", help="Comma-separated linear layers to adapt.")]
TopLayersOpt = Annotated[Optional[int], typer.Option("--top-layers", min=1, help="Adapt only the last N blocks (cheaper steps).")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Learning rate.")]
EpochsOpt = Annotated[Optional[float], typer.Option("--epochs", help="Epochs over the data.")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimiser steps.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Examples per step.")]
AccumOpt = Annotated[Optional[int], typer.Option("--grad-accum", min=1, help="Gradient accumulation steps.")]
MaxLenOpt = Annotated[Optional[int], typer.Option("--max-length", min=16, help="Longest tokenised example.")]
EvalSplitOpt = Annotated[Optional[float], typer.Option("--eval-split", help="Share of the data held out for eval (default 0: train on all).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Resume from the last checkpoint of this run.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing adapter of the same name.")]
FromAdapterOpt = Annotated[Optional[str], typer.Option("--from-adapter", help="Start from this SFT adapter (also the reference).")]


def _common(output, lora_r, lora_alpha, lora_dropout, target_modules, top_layers, lr, epochs, max_steps,
            batch_size, grad_accum, max_length, eval_split, seed, resume, overwrite) -> dict[str, Any]:
    return {
        "output": output, "lora.r": lora_r, "lora.alpha": lora_alpha, "lora.dropout": lora_dropout,
        "lora.target_modules": [t.strip() for t in target_modules.split(",") if t.strip()] if target_modules else None,
        "lora.top_layers": top_layers, "train.learning_rate": lr, "train.epochs": epochs, "train.max_steps": max_steps,
        "train.batch_size": batch_size, "train.grad_accum": grad_accum, "train.max_length": max_length,
        "train.eval_split": eval_split, "train.seed": seed, "resume": resume or None, "overwrite": overwrite or None,
    }


import contextlib  # noqa: E402
import sys  # noqa: E402


def _finetune_workspace():
    from finetune.runner import Workspace

    s = settings()
    return Workspace(s.home, s.generator, s.ingest, s.retriever, s.qa)


def _run_training(kind: str, job_cls, config: Optional[Path], overrides: dict[str, Any], as_json: bool, runner) -> None:
    """Validate options, run the trainer, print the summary; every known failure exits 2 with its reason."""
    from finetune.adapters import AdapterRegistryError
    from finetune.config import ConfigError, load_job
    from finetune.data import DataError
    from finetune.runner import FinetuneError
    from rag.generator import AdapterError

    try:
        job = load_job(job_cls, config, overrides)
        if not as_json:
            err.print(f"[bold]{kind}[/]: training adapter {job.output!r} (progress below; Ctrl-C stops, --resume continues)")
        # The trainers print their step logs; they go to stderr so stdout stays the summary (or one JSON object).
        with contextlib.redirect_stdout(sys.stderr):
            result = runner(job, _finetune_workspace())
    except (ConfigError, DataError, FinetuneError, AdapterRegistryError, AdapterError, IngestError) as exc:
        fail(str(exc), as_json)
        return
    payload = {"ok": True, "kind": kind, **result.to_dict()}
    if as_json:
        emit_json(payload)
        return
    m = result.metrics
    rows = [("adapter", f"{result.adapter.name}  ({result.adapter.path})")]
    for key, value in m.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        rows.append((key, value))
    out.print(_summary_table(f"finetune {kind}: done", rows))
    out.print(f"use it: ragqa ask \"...\" -c COLLECTION --adapter {result.adapter.name}" if kind != "reward"
              else f"use it: ragqa finetune rlhf --reward-model {result.adapter.name} --prompts FILE --output NAME")


@finetune_app.command("sft")
def finetune_sft(
    data: Annotated[Optional[Path], typer.Option("--data", help="JSONL of {question, answer[, context|contexts]}.")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Build prompts from this collection's retrieval, as at inference.")] = None,
    output: OutputOpt = None,
    config: ConfigOpt = None,
    k: Annotated[Optional[int], typer.Option("-k", min=1, help="Chunks retrieved per question (default 4).")] = None,
    prompt_style: Annotated[Optional[str], typer.Option("--prompt-style", help="auto, per-document or stuffed.")] = None,
    distractor_rate: Annotated[Optional[float], typer.Option("--distractor-rate", help="Share of distractor prompts (RAFT).")] = None,
    lora_r: RankOpt = None, lora_alpha: AlphaOpt = None, lora_dropout: DropoutOpt = None, target_modules: TargetsOpt = None,
    top_layers: TopLayersOpt = None, lr: LrOpt = None, epochs: EpochsOpt = None, max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = None, grad_accum: AccumOpt = None, max_length: MaxLenOpt = None,
    eval_split: EvalSplitOpt = None, seed: SeedOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """LoRA SFT on question/answer pairs; with -c, prompts hold retrieved chunks (incl. distractors), as at inference."""
    from finetune.config import SFTJob
    from finetune.sft import run_sft

    overrides = _common(output, lora_r, lora_alpha, lora_dropout, target_modules, top_layers, lr, epochs, max_steps,
                        batch_size, grad_accum, max_length, eval_split, seed, resume, overwrite)
    overrides.update({"data": data, "collection": collection, "k": k, "prompt_style": prompt_style,
                      "distractor_rate": distractor_rate})
    _run_training("sft", SFTJob, config, overrides, as_json, run_sft)


@finetune_app.command("reward")
def finetune_reward(
    data: Annotated[Optional[Path], typer.Option("--data", help="JSONL of {question, chosen, rejected[, context|contexts]}.")] = None,
    output: OutputOpt = None,
    config: ConfigOpt = None,
    lora_r: RankOpt = None, lora_alpha: AlphaOpt = None, lora_dropout: DropoutOpt = None, target_modules: TargetsOpt = None,
    top_layers: TopLayersOpt = None, lr: LrOpt = None, epochs: EpochsOpt = None, max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = None, grad_accum: AccumOpt = None, max_length: MaxLenOpt = None,
    eval_split: EvalSplitOpt = None, seed: SeedOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Reward model: scalar head on the generator backbone (LoRA), pairwise loss; reports held-out accuracy."""
    from finetune.config import RewardJob
    from finetune.reward import run_reward

    overrides = _common(output, lora_r, lora_alpha, lora_dropout, target_modules, top_layers, lr, epochs, max_steps,
                        batch_size, grad_accum, max_length, eval_split, seed, resume, overwrite)
    overrides["data"] = data
    _run_training("reward", RewardJob, config, overrides, as_json, run_reward)


@finetune_app.command("dpo")
def finetune_dpo(
    data: Annotated[Optional[Path], typer.Option("--data", help="JSONL of {question, chosen, rejected[, context|contexts]}.")] = None,
    output: OutputOpt = None,
    config: ConfigOpt = None,
    from_adapter: FromAdapterOpt = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="DPO beta (default 0.1).")] = None,
    lora_r: RankOpt = None, lora_alpha: AlphaOpt = None, lora_dropout: DropoutOpt = None, target_modules: TargetsOpt = None,
    top_layers: TopLayersOpt = None, lr: LrOpt = None, epochs: EpochsOpt = None, max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = None, grad_accum: AccumOpt = None, max_length: MaxLenOpt = None,
    eval_split: EvalSplitOpt = None, seed: SeedOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Offline preference alignment (DPO), optionally continuing an SFT adapter (then also the reference)."""
    from finetune.config import DPOJob
    from finetune.dpo import run_dpo

    overrides = _common(output, lora_r, lora_alpha, lora_dropout, target_modules, top_layers, lr, epochs, max_steps,
                        batch_size, grad_accum, max_length, eval_split, seed, resume, overwrite)
    overrides.update({"data": data, "from_adapter": from_adapter, "beta": beta})
    _run_training("dpo", DPOJob, config, overrides, as_json, run_dpo)


@finetune_app.command("rlhf")
def finetune_rlhf(
    reward_model: Annotated[Optional[str], typer.Option("--reward-model", help="Reward adapter from `ragqa finetune reward`.")] = None,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="JSONL of {question[, context|contexts]}.")] = None,
    output: OutputOpt = None,
    config: ConfigOpt = None,
    from_adapter: FromAdapterOpt = None,
    algorithm: Annotated[Optional[str], typer.Option("--algorithm", help="rloo (default) or grpo.")] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="KL penalty to the reference (default 0.05).")] = None,
    num_generations: Annotated[Optional[int], typer.Option("--num-generations", min=2, help="Samples per prompt (default 4).")] = None,
    max_completion_length: Annotated[Optional[int], typer.Option("--max-completion-length", min=1, help="Longest sampled answer.")] = None,
    lora_r: RankOpt = None, lora_alpha: AlphaOpt = None, lora_dropout: DropoutOpt = None, target_modules: TargetsOpt = None,
    top_layers: TopLayersOpt = None, lr: LrOpt = None, epochs: EpochsOpt = None, max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = None, grad_accum: AccumOpt = None, max_length: MaxLenOpt = None,
    seed: SeedOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Online RL (RLOO/GRPO) against a reward model with a KL penalty; reports reward and KL before/after."""
    from finetune.config import RLHFJob
    from finetune.rlhf import run_rlhf

    overrides = _common(output, lora_r, lora_alpha, lora_dropout, target_modules, top_layers, lr, epochs, max_steps,
                        batch_size, grad_accum, max_length, None, seed, resume, overwrite)
    overrides.update({"reward_model": reward_model, "prompts": prompts, "from_adapter": from_adapter, "algorithm": algorithm,
                      "beta": beta, "num_generations": num_generations, "max_completion_length": max_completion_length})
    _run_training("rlhf", RLHFJob, config, overrides, as_json, run_rlhf)


@finetune_app.command("rag")
def finetune_rag(
    data: Annotated[Optional[Path], typer.Option("--data", help="JSONL of {question, answer}.")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Collection the K documents come from.")] = None,
    output: OutputOpt = None,
    config: ConfigOpt = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="rag-token (default) or rag-sequence marginal likelihood.")] = None,
    k: Annotated[Optional[int], typer.Option("-k", min=1, help="Documents marginalised over (default 4).")] = None,
    train_query_encoder: Annotated[bool, typer.Option("--train-query-encoder", help="Also train the query side of the retriever.")] = False,
    lora_r: RankOpt = None, lora_alpha: AlphaOpt = None, lora_dropout: DropoutOpt = None, target_modules: TargetsOpt = None,
    top_layers: TopLayersOpt = None, lr: LrOpt = None, epochs: EpochsOpt = None, max_steps: MaxStepsOpt = None,
    batch_size: BatchOpt = None, grad_accum: AccumOpt = None, max_length: MaxLenOpt = None,
    seed: SeedOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """End-to-end RAG training: marginal NLL over the top-K documents (Lewis et al. 2020), LoRA on the generator."""
    from finetune.config import RAGJob
    from finetune.rag_e2e import run_rag

    overrides = _common(output, lora_r, lora_alpha, lora_dropout, target_modules, top_layers, lr, epochs, max_steps,
                        batch_size, grad_accum, max_length, None, seed, resume, overwrite)
    overrides.update({"data": data, "collection": collection, "mode": mode, "k": k,
                      "train_query_encoder": train_query_encoder or None})
    _run_training("rag", RAGJob, config, overrides, as_json, run_rag)


# -- adapters -----------------------------------------------------------------------------------
def _registry():
    from finetune.adapters import AdapterRegistry

    return AdapterRegistry(settings().adapters_dir)


@adapters_app.command("list")
def adapters_list(as_json: JsonOpt = False) -> None:
    """Trained adapters: name, kind, base model, headline metrics."""
    adapters = [a.to_dict() for a in _registry().list()]
    if as_json:
        emit_json({"adapters": adapters})
        return
    if not adapters:
        out.print("no adapters yet: train one with `ragqa finetune sft --data FILE.jsonl --output NAME`")
        return
    table = Table("name", "kind", "base model", "created", "metrics", "size")
    import datetime as _dt

    for a in adapters:
        created = _dt.datetime.fromtimestamp(a["created_at"]).isoformat(timespec="minutes") if a["created_at"] else "-"
        shown = {k: v for k, v in a["metrics"].items() if isinstance(v, (int, float)) and k in
                 ("train_loss", "eval_loss", "eval_accuracy", "reward_after", "kl_after", "train_seconds")}
        table.add_row(a["name"], a["kind"], str(a["base_model"]), created,
                      ", ".join(f"{k}={v}" for k, v in shown.items()) or "-", f"{a['size_bytes'] / 2**20:.1f} MB")
    out.print(table)


@adapters_app.command("show")
def adapters_show(name: Annotated[str, typer.Argument(help="Adapter name.")], as_json: JsonOpt = False) -> None:
    """Everything recorded about an adapter: options, data hash, metrics."""
    import json as _json

    from finetune.adapters import AdapterRegistryError

    try:
        info = _registry().get(name)
    except AdapterRegistryError as exc:
        fail(str(exc), as_json)
        return
    if as_json:
        emit_json(info.to_dict(full=True))
        return
    out.print(_json.dumps(info.to_dict(full=True), indent=2, default=str), highlight=False)


@adapters_app.command("delete")
def adapters_delete(
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete an adapter (its folder is removed)."""
    from finetune.adapters import AdapterRegistryError

    if not yes and not as_json and not typer.confirm(f"delete adapter {name!r}?"):
        raise typer.Exit(1)
    try:
        _registry().delete(name)
    except AdapterRegistryError as exc:
        fail(str(exc), as_json)
        return
    if as_json:
        emit_json({"ok": True, "deleted": name})
    else:
        out.print(f"deleted adapter {name}")
