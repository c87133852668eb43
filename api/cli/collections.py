"""``ragqa collections list|show|calibrate|delete``."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from api.cli.common import JsonOpt, describe_calibration, emit_json, fail, out, stack
from ingest.errors import IngestError

app = typer.Typer(help="List, show, calibrate and delete collections.", no_args_is_help=True)


@app.command("list")
def collections_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the collections in the workspace."""
    ws = stack(ctx).workspace
    infos = []
    for name in ws.list_collections():
        try:
            with ws.open(name, readonly=True, check_embedder=False) as coll:
                infos.append(coll.info())
        except IngestError as exc:
            infos.append({"name": name, "error": str(exc)})
    if as_json:
        emit_json({"collections": infos, "count": len(infos)})
        return
    table = Table("name", "documents", "chunks", "embedder", "index")
    for i in infos:
        table.add_row(
            i["name"],
            str(i.get("documents", "?")),
            str(i.get("chunks", "?")),
            i.get("embedder", i.get("error", "")),
            i.get("index_built", ""),
        )
    out.print(table if infos else "no collections yet: create one with `ragqa ingest PATH -c NAME`")


@app.command("show")
def collections_show(ctx: typer.Context, name: Annotated[str, typer.Argument()], as_json: JsonOpt = False) -> None:
    """Show a collection's settings and size."""
    try:
        with stack(ctx).workspace.open(name, readonly=True, check_embedder=False) as coll:
            info = coll.info()
    except IngestError as exc:
        fail(str(exc), as_json)
    if as_json:
        emit_json(info)
        return
    table = Table(show_header=False, title=name)
    for key, value in info.items():
        if key == "calibration":
            table.add_row("abstention calibration", describe_calibration(value))
        else:
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    out.print(table)


@app.command("calibrate")
def collections_calibrate(ctx: typer.Context, name: Annotated[str, typer.Argument()], as_json: JsonOpt = False) -> None:
    """Recompute the collection's abstention threshold (done automatically after every ingest, upload and delete)."""
    from rag.calibration import recalibrate

    try:
        calibration = recalibrate(stack(ctx).workspace, name, force=True)
    except (IngestError, FileNotFoundError, ValueError) as exc:
        fail(str(exc), as_json)
    if calibration is None:  # only with force=False
        fail(f"collection {name!r} was not calibrated", as_json)
    if as_json:
        emit_json({"collection": name, "calibration": calibration.to_dict(), "ok": True})
    else:
        out.print(f"{name}: {describe_calibration(calibration)} in {calibration.seconds:.1f} s")


@app.command("delete")
def collections_delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a collection and everything in it."""
    if not yes and not as_json and sys.stdin.isatty():
        typer.confirm(f"delete collection {name!r} and all its documents?", abort=True)
    try:
        stack(ctx).workspace.delete(name)
    except IngestError as exc:
        fail(str(exc), as_json)
    if as_json:
        emit_json({"deleted": name, "ok": True})
    else:
        out.print(f"deleted collection {name!r}")
