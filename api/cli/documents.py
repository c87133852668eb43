"""``ragqa documents list|delete``: the documents of a collection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from api.cli.common import CollectionOpt, JsonOpt, emit_json, err, fail, out, resolve_sources, stack
from ingest.errors import IngestError

app = typer.Typer(help="List and delete the documents of a collection.", no_args_is_help=True)


@app.command("list")
def documents_list(
    ctx: typer.Context,
    collection: CollectionOpt,
    source: Annotated[str | None, typer.Option(help="Only documents from this source path.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """List the documents of a collection."""
    if source and Path(source).expanduser().exists():
        source = str(Path(source).expanduser().resolve())
    try:
        with stack(ctx).workspace.open(collection, readonly=True, check_embedder=False) as coll:
            rows = coll.store.list_documents(source=source, limit=limit)
            total = coll.store.count_documents()
    except IngestError as exc:
        fail(str(exc), as_json)
    if as_json:
        emit_json(
            {
                "collection": collection,
                "count": total,
                "data": [
                    {
                        "doc_id": r.doc_id,
                        "source": r.source,
                        "key": r.key,
                        "title": r.title,
                        "chunks": r.n_chunks,
                        "chars": r.n_chars,
                        "metadata": r.metadata,
                    }
                    for r in rows
                ],
            }
        )
        return
    table = Table("doc_id", "title", "chunks", "source")
    for r in rows:
        table.add_row(r.doc_id, r.title, str(r.n_chunks), r.source + (f"#{r.key}" if r.key else ""))
    out.print(table)
    out.print(f"{len(rows)} of {total} documents")


@app.command("delete")
def documents_delete(
    ctx: typer.Context,
    collection: CollectionOpt,
    doc_id: Annotated[list[str] | None, typer.Option("--id", help="Document id (repeatable).")] = None,
    source: Annotated[list[str] | None, typer.Option(help="Every document from this source path (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete documents by id or by source path; they disappear from search."""
    if not doc_id and not source:
        fail("name what to delete with --id DOC_ID or --source PATH", as_json)
    ws = stack(ctx).workspace
    try:
        with ws.open(collection, check_embedder=False) as coll:
            n = coll.delete_documents(doc_ids=doc_id or [], sources=resolve_sources(source))
            if n:
                from rag.calibration import calibrate_if_stale

                calibrate_if_stale(coll, lambda: ws.embedder, quiet=True)
    except IngestError as exc:
        fail(str(exc), as_json)
    if as_json:
        emit_json({"collection": collection, "deleted": n, "ok": n > 0})
    else:
        out.print(f"deleted {n} document(s) from {collection!r}")
    if n == 0:
        if not as_json:
            err.print("nothing matched: check the ids with `ragqa documents list -c NAME`")
        raise typer.Exit(1)
