"""``ragqa ingest``: documents into a collection (created on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from api.cli.common import (
    CollectionOpt,
    JsonOpt,
    describe_calibration,
    emit_json,
    err,
    fail,
    out,
    settings,
    stack,
)
from ingest.errors import IngestError

if TYPE_CHECKING:
    from rag.calibration import Calibration

INDEX_KINDS = ("flat", "ivf", "hnsw", "ivfpq")


def ingest(
    ctx: typer.Context,
    paths: Annotated[list[str], typer.Argument(help="Files, folders (searched recursively) or glob patterns.")],
    collection: CollectionOpt,
    index: Annotated[str | None, typer.Option(help="Index kind for a new collection: flat, ivf, hnsw, ivfpq.")] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Remove files ingested from these folders that no longer exist.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest documents into a collection (created on first use); unchanged files are skipped."""
    if index is not None:
        if index not in INDEX_KINDS:
            fail(f"unknown index kind {index!r}; use flat, ivf, hnsw or ivfpq", as_json)
        settings(ctx).ingest.index.kind = index  # type: ignore[assignment]
    try:
        report = stack(ctx).workspace.ingest(paths, collection, progress=not as_json, prune=prune)
    except IngestError as exc:
        fail(str(exc), as_json)
    calibration = _calibrate(ctx, collection)
    if as_json:
        emit_json({**report.to_dict(), "calibration": calibration.to_dict() if calibration else None})
    else:
        table = Table(title=f"ingest into {collection!r}", show_header=False)
        for key, value in [
            ("files added", len(report.added)),
            ("files replaced", len(report.replaced)),
            ("files unchanged (skipped)", len(report.unchanged)),
            ("files failed", len(report.failed)),
            ("unsupported files skipped", len(report.skipped_unsupported)),
            ("files removed (--prune)", len(report.removed)),
            ("documents", report.documents),
            ("chunks", report.chunks),
            ("chunks embedded / reused", f"{report.chunks_embedded} / {report.chunks_reused}"),
            ("seconds", f"{report.seconds:.1f}"),
            ("abstention threshold", describe_calibration(calibration) if calibration else "unchanged"),
        ]:
            table.add_row(key, str(value))
        out.print(table)
        for f in report.failed:
            err.print(f"[red]failed[/] {f.path}: {f.reason}", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


def _calibrate(ctx: typer.Context, collection: str) -> Calibration | None:
    """The collection's abstention threshold, recomputed unless it is current (None then; never fails the ingest)."""
    from rag.calibration import recalibrate

    return recalibrate(stack(ctx).workspace, collection, quiet=True)
