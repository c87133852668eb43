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
