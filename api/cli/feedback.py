"""``ragqa feedback export``: feedback left through the REST API, as training files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from api.answers import AnswerLog
from api.cli.common import JsonOpt, emit_json, err, fail, out, settings, stack, summary_table
from api.db import server_db_path
from ingest.errors import IngestError

app = typer.Typer(help="Turn feedback left through the REST API into training files.", no_args_is_help=True)


@app.command("export")
def feedback_export(
    ctx: typer.Context,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for sft.jsonl and preferences.jsonl.")],
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Only feedback on answers from this collection.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn the REST API's feedback into sft.jsonl (corrections, up-voted answers) and
    preferences.jsonl (a correction chosen over the answer it corrects)."""
    from finetune.feedback import FeedbackError, export_feedback, write_feedback_files

    db = server_db_path(settings(ctx).home)
    if not db.is_file():
        fail(
            f"no server database at {db}: feedback is collected by the REST API (`ragqa serve`, then "
            "POST /v1/answers/{answer_id}/feedback); check --home / RAGQA_HOME",
            as_json,
        )
    if output_dir.exists() and not output_dir.is_dir():
        fail(f"{output_dir} exists and is not a folder", as_json)

    workspace = stack(ctx).workspace
    readers: dict[str, Any] = {}

    def fetch(name: str, chunk_ids: list[str]) -> dict[str, str]:
        if name not in readers:
            try:
                readers[name] = workspace.open(name, readonly=True, check_embedder=False)
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
            fail(
                f"no feedback yet{where} ({counts['answers']} answers logged, {counts['feedback']} feedback rows): "
                "rate answers with POST /v1/answers/{answer_id}/feedback",
                as_json,
            )
        try:
            export = export_feedback(records, fetch_contexts=fetch)
        except FeedbackError as exc:
            fail(str(exc), as_json)
    finally:
        log.close()
        for coll in readers.values():
            if coll is not None:
                coll.close()
    report = export.report
    if not export.sft and not export.preferences:
        skipped = ", ".join(f"{v} {k}" for k, v in report.skipped.items())
        fail(
            f"{report.records} feedback row(s) but none makes a training example ({skipped}); "
            "a thumbs-down needs a correction",
            as_json,
        )
    paths = write_feedback_files(export, output_dir)
    if as_json:
        emit_json(
            {
                "ok": True,
                "output_dir": str(output_dir),
                "files": {k: str(v) for k, v in paths.items()},
                "collection": collection,
                **report.to_dict(),
            }
        )
        return
    out.print(
        summary_table(
            "feedback export",
            [
                ("feedback rows", report.records),
                (
                    "sft examples",
                    f"{report.sft} ({report.sft_from_corrections} corrections, "
                    f"{report.sft_from_upvotes} up-voted answers)",
                ),
                ("preference pairs", report.preferences),
                ("skipped", ", ".join(f"{k}: {v}" for k, v in report.skipped.items()) or "none"),
                ("duplicates dropped", report.duplicates),
                (
                    "contexts logged / fetched / missing",
                    f"{report.contexts_logged} / {report.contexts_fetched} / {report.contexts_missing}",
                ),
                ("collections", ", ".join(report.collections) or "-"),
                ("sft file", paths["sft"]),
                ("preferences file", paths["preferences"]),
            ],
        )
    )
