"""``ragqa finetune synth|prefs|sft|reward|dpo|rlhf|rag|pipeline``: training data and LoRA training runs.

The trainer commands' options are generated from the job models of :mod:`finetune.config`
(:mod:`api.cli.job_options`); each takes them on the command line or from ``--config file.yaml``
(command-line options win), shows progress on stderr, ends with a summary (``--json``: one JSON
object) and exits with status 2 on bad input.

With ``--accelerate-config FILE`` a trainer command runs under HF accelerate on several processes or
GPUs (:mod:`finetune.distributed`): the options are validated here, written to a job file, and the
same command is launched in every process with that file as its ``--config``. Rank 0 prints the
summary; the launcher passes it on. The config is a file on the user's machine: it is a CLI option
only, never a REST API field.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel

from api.cli import job_options
from api.cli.common import CollectionOpt, JsonOpt, emit_json, err, fail, out, stack, summary_table
from api.cli.pipeline import pipeline_cmd
from finetune.config import DPOJob, PrefsJob, RAGJob, RewardJob, RLHFJob, SFTJob
from ingest.errors import IngestError

app = typer.Typer(
    help="Fine-tune the generator with LoRA: sft, reward, rlhf, dpo, rag; synth and prefs build training data.",
    no_args_is_help=True,
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file of options (command-line options win).")]
AccelerateOpt = Annotated[
    Path | None,
    typer.Option(
        "--accelerate-config",
        help="Train on several processes or GPUs: an accelerate config file (`accelerate config`; examples in "
        "data/accelerate/).",
    ),
]


# -- squad: training files from a SQuAD-format file ----------------------------------------------
@app.command("squad")
def finetune_squad(
    data: Annotated[Path, typer.Argument(help="SQuAD-format JSON file (v1.1 or v2.0).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for sft.jsonl (and heldout.json, ...).")],
    held_out: Annotated[
        list[int] | None,
        typer.Option("--held-out", help="Article position in the file kept out of training (repeatable)."),
    ] = None,
    unanswerable: Annotated[
        float, typer.Option(help='Also train on this share of unanswerable questions, answered "I don\'t know.".')
    ] = 0.0,
    preferences: Annotated[int, typer.Option(min=0, help="Preference pairs to write (0: none).")] = 0,
    prompts: Annotated[int, typer.Option(min=0, help="RLHF prompts taken from the preference questions.")] = 16,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """SFT / held-out / preference / prompt files from a SQuAD-format file, ready for
    `ragqa finetune sft --data OUT/sft.jsonl` (and `dpo`, `rlhf`)."""
    from finetune.data import DataError
    from finetune.squad import squad_training_data

    if output.exists() and not output.is_dir():
        fail(f"{output} is a file; give a folder for the training files", as_json)
    try:
        result = squad_training_data(
            data,
            output,
            held_out=held_out or (),
            unanswerable=unanswerable,
            preferences=preferences,
            prompts=prompts,
            seed=seed,
        )
    except DataError as exc:
        fail(str(exc), as_json)
    summary = result.to_dict()
    if as_json:
        emit_json({"ok": True, **summary})
        return
    out.print(summary_table("finetune squad", list(summary.items())))


# -- synth: training pairs from a collection's own text ------------------------------------------
@app.command("synth")
def finetune_synth(
    ctx: typer.Context,
    collection: CollectionOpt,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="JSONL file to write (SFT format with source/chunk_id).")
    ],
    n: Annotated[
        int | None, typer.Option("--n", min=1, help="At most this many pairs (default: up to --per-chunk per chunk).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed: the same seed and collection give the same pairs.")] = 0,
    method: Annotated[
        str, typer.Option(help="cloze (fast, no LLM), generate (the generator writes questions) or both.")
    ] = "cloze",
    per_chunk: Annotated[int, typer.Option("--per-chunk", min=1, help="Most answers chosen per chunk.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Build question/answer pairs from a collection's chunks (answers are names, dates and numbers
    copied from the chunk), so a domain fine-tune needs nothing but the documents."""
    from finetune.data import write_jsonl
    from finetune.synth import METHODS, SynthError, generator_question_writer, synthesize

    if method not in METHODS:
        fail(f"unknown method {method!r}; use {', '.join(METHODS)}", as_json)
    if output.exists() and output.is_dir():
        fail(f"{output} is a directory; give a file name such as {output / 'synth.jsonl'}", as_json)
    rag = stack(ctx)
    try:
        with rag.workspace.open(collection, readonly=True, check_embedder=False) as coll:
            chunks = list(coll.store.iter_chunks())
    except IngestError as exc:
        fail(str(exc), as_json)
    if not chunks:
        fail(
            f"collection {collection!r} has no chunks; ingest documents first with `ragqa ingest PATH -c {collection}`",
            as_json,
        )
    writer = None
    if method in ("generate", "both"):
        if not as_json:
            err.print("loading the generator…")
        try:
            writer = generator_question_writer(rag.generator.warm_up())
        except IngestError as exc:
            fail(str(exc), as_json)
    try:
        result = synthesize(
            chunks, n=n, seed=seed, method=method, per_chunk=per_chunk, write_question=writer, progress=not as_json
        )
    except SynthError as exc:
        fail(str(exc), as_json)
    report = result.report
    if not result.pairs:
        fail(
            f"no question/answer pairs could be made from the {report.chunks_total} chunks of {collection!r}: "
            "cloze needs English sentences with names, dates or numbers"
            + (
                f"; the generator wrote {report.generate_rejected} unusable question(s)"
                if report.generate_rejected
                else ""
            ),
            as_json,
        )
    write_jsonl(output, [p.to_json() for p in result.pairs])
    summary = {
        "ok": True,
        "output": str(output),
        "collection": collection,
        "method": method,
        "seed": seed,
        **report.to_dict(),
    }
    if as_json:
        emit_json(summary)
        return
    out.print(
        summary_table(
            f"synth from {collection!r} ({method})",
            [
                ("pairs written", report.pairs),
                ("chunks used / total", f"{report.chunks_used} / {report.chunks_total}"),
                ("chunks with candidate answers", report.chunks_with_candidates),
                ("per method", ", ".join(f"{k} {v}" for k, v in report.per_method.items())),
                ("per answer type", ", ".join(f"{k} {v}" for k, v in sorted(report.per_kind.items())) or "-"),
                ("question forms", ", ".join(f"{k} {v}" for k, v in sorted(report.per_form.items())) or "-"),
                ("duplicates dropped", report.duplicates),
                *(
                    [("generated / rejected", f"{report.generate_attempts} / {report.generate_rejected}")]
                    if method != "cloze"
                    else []
                ),
                ("seconds", f"{report.seconds:.1f}"),
                ("output", output),
            ],
        )
    )
    out.print(f"train on it: ragqa finetune sft --data {output} -c {collection} --output NAME", highlight=False)


# -- trainers: one command per job model ----------------------------------------------------------
@dataclass(frozen=True)
class Trainer:
    """A training command: its job model (the options), its runner and its one-line help."""

    kind: str
    job: type[BaseModel]
    runner: str  #: ``module:function``, imported when the command runs (torch and TRL load only then)
    help: str

    def run(self, job: Any, workspace: Any) -> Any:
        module, _, name = self.runner.partition(":")
        return getattr(importlib.import_module(module), name)(job, workspace)


TRAINERS = (
    Trainer(
        "sft",
        SFTJob,
        "finetune.sft:run_sft",
        "LoRA SFT on question/answer pairs; with -c, prompts hold "
        "retrieved chunks (incl. distractors), as at inference.",
    ),
    Trainer(
        "reward",
        RewardJob,
        "finetune.reward:run_reward",
        "Reward model: scalar head on the generator backbone (LoRA), pairwise loss; reports held-out accuracy.",
    ),
    Trainer(
        "dpo",
        DPOJob,
        "finetune.dpo:run_dpo",
        "Offline preference alignment (DPO), optionally continuing an SFT adapter (then also the reference).",
    ),
    Trainer(
        "rlhf",
        RLHFJob,
        "finetune.rlhf:run_rlhf",
        "Online RL (RLOO/GRPO) against a reward model with a KL penalty; reports reward and KL before/after.",
    ),
    Trainer(
        "rag",
        RAGJob,
        "finetune.rag_e2e:run_rag",
        "End-to-end RAG training: marginal NLL over the top-K documents (Lewis et al. 2020), LoRA on the generator.",
    ),
)


def _training_errors() -> tuple[type[Exception], ...]:
    from finetune.adapters import AdapterRegistryError
    from finetune.config import ConfigError
    from finetune.data import DataError
    from finetune.runner import FinetuneError
    from rag.generator import AdapterError

    return (ConfigError, DataError, FinetuneError, AdapterRegistryError, AdapterError, IngestError)


def run_training(
    ctx: typer.Context, trainer: Trainer, config: Path | None, overrides: dict[str, Any], as_json: bool
) -> None:
    """Validate the options, run the trainer, print the summary; every known failure exits 2 with its reason."""
    from finetune.config import load_job
    from finetune.distributed import is_main_process, process_rank

    try:
        job = load_job(trainer.job, config, overrides)
        if not as_json and is_main_process():
            err.print(
                f"[bold]{trainer.kind}[/]: training adapter {job.output!r} "
                "(progress below; Ctrl-C stops, --resume continues)"
            )
        # The trainers print their step logs; they go to stderr so stdout stays the summary (or one JSON object).
        with contextlib.redirect_stdout(sys.stderr):
            result = trainer.run(job, stack(ctx).finetune_workspace())
    except _training_errors() as exc:
        if not is_main_process():  # rank 0 reports (stdout stays one summary); the others only say why they stop
            err.print(f"[bold red]error (rank {process_rank()}):[/] {exc}", highlight=False)
            raise typer.Exit(2) from exc
        fail(str(exc), as_json)
    if not is_main_process():
        return
    if as_json:
        emit_json({"ok": True, "kind": trainer.kind, **result.to_dict()})
        return
    rows: list[tuple[str, Any]] = [("adapter", f"{result.adapter.name}  ({result.adapter.path})")]
    for key, value in result.metrics.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        rows.append((key, value))
    out.print(summary_table(f"finetune {trainer.kind}: done", rows))
    out.print(
        f'use it: ragqa ask "..." -c COLLECTION --adapter {result.adapter.name}'
        if trainer.kind != "reward"
        else f"use it: ragqa finetune rlhf --reward-model {result.adapter.name} --prompts FILE --output NAME"
    )


def run_distributed(
    ctx: typer.Context,
    trainer: Trainer,
    config: Path | None,
    overrides: dict[str, Any],
    as_json: bool,
    accelerate_config: Path,
) -> None:
    """Run the training under accelerate: check the launch config and the options, then launch this same
    command (with the options as a job file) in every process and pass on rank 0's summary and exit status."""
    from finetune.config import load_job
    from finetune.distributed import launch_command, load_launch_config
    from finetune.runner import check_output_free

    rag = stack(ctx)
    try:
        launch = load_launch_config(accelerate_config)
        job = load_job(trainer.job, config, overrides)
        check_output_free(rag.finetune_workspace(), job)
    except _training_errors() as exc:
        fail(str(exc), as_json)
    with tempfile.TemporaryDirectory(prefix="ragqa-launch-") as tmp:
        job_file = Path(tmp) / f"{trainer.kind}.yaml"
        job_file.write_text(yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        args = ["--home", str(rag.settings.home), "finetune", trainer.kind, "--config", str(job_file)]
        if ctx.find_root().params.get("verbose"):
            args.insert(0, "--verbose")
        if as_json:
            args.append("--json")
        argv, env = launch_command(launch, "api.cli", args)
        if not as_json:
            err.print(
                f"[bold]{trainer.kind}[/]: launching {launch.num_processes} process(es), {launch.distributed_type}, "
                f"from {launch.path}"
            )
        # stdout carries rank 0's summary (one JSON object with --json); progress and logs stream on stderr
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=False)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        if not proc.stdout.strip():
            fail(f"training under accelerate failed (exit status {proc.returncode}); see the messages above", as_json)
        raise typer.Exit(2)


def training_command(trainer: Trainer) -> Callable[..., None]:
    """The Typer command of ``trainer``: its job model's options, then ``--config``, ``--accelerate-config``
    and ``--json``."""
    options = job_options.job_options(trainer.job)

    def command(
        ctx: typer.Context,
        config: Path | None = None,
        accelerate_config: Path | None = None,
        as_json: bool = False,
        **values: Any,
    ) -> None:
        overrides = job_options.overrides(options, values)
        if accelerate_config is not None:
            run_distributed(ctx, trainer, config, overrides, as_json, accelerate_config)
        else:
            run_training(ctx, trainer, config, overrides, as_json)

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *job_options.parameters(options),
        inspect.Parameter("config", kw, default=None, annotation=ConfigOpt),
        inspect.Parameter("accelerate_config", kw, default=None, annotation=AccelerateOpt),
        inspect.Parameter("as_json", kw, default=False, annotation=JsonOpt),
    ]
    command.__name__ = f"finetune_{trainer.kind}"
    command.__doc__ = trainer.help
    return job_options.with_signature(command, params)


for _trainer in TRAINERS:
    app.command(_trainer.kind, help=_trainer.help)(training_command(_trainer))

# -- pipeline: the whole loop from a recipe -------------------------------------------------------
app.command("pipeline")(pipeline_cmd)

# -- prefs: on-policy preference pairs ------------------------------------------------------------
PREFS_HELP = (
    "On-policy preference pairs: sample --samples answers per question from the policy (base or --adapter) "
    "through retrieval and the RAG pipeline, score them (F1 against the gold answer, else --reward-model), "
    "write best vs worst with its margin (the format `feedback export` writes) for `finetune dpo` / `reward`."
)


def _prefs_command() -> Callable[..., None]:
    options = job_options.job_options(PrefsJob)

    def command(ctx: typer.Context, config: Path | None = None, as_json: bool = False, **values: Any) -> None:
        from finetune.config import load_job
        from finetune.prefs import run_prefs

        try:
            job = load_job(PrefsJob, config, job_options.overrides(options, values))
            if not as_json:
                policy = f"adapter {job.adapter!r}" if job.adapter else "the base model"
                err.print(f"[bold]prefs[/]: sampling {job.samples} {job.mode} answers per question from {policy}")
            result = run_prefs(job, stack(ctx).finetune_workspace(), progress=not as_json)
        except _training_errors() as exc:
            fail(str(exc), as_json)
        if as_json:
            emit_json({"ok": True, "kind": "prefs", **result.to_dict()})
            return
        rows: list[tuple[str, Any]] = [("pairs file", result.output), ("meta", result.meta_path)]
        rows += list(result.metrics.items())
        out.print(summary_table("finetune prefs: done", rows))
        out.print(
            f"train on it: ragqa finetune dpo --data {result.output} --from-adapter SFT_ADAPTER --output NAME",
            highlight=False,
        )

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *job_options.parameters(options),
        inspect.Parameter("config", kw, default=None, annotation=ConfigOpt),
        inspect.Parameter("as_json", kw, default=False, annotation=JsonOpt),
    ]
    command.__name__ = "finetune_prefs"
    command.__doc__ = PREFS_HELP
    return job_options.with_signature(command, params)


app.command("prefs", help=PREFS_HELP)(_prefs_command())
