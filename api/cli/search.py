"""``ragqa search``: the chunks nearest to a query."""

from __future__ import annotations

from typing import Annotated

import typer

from api.cli.common import CollectionOpt, JsonOpt, emit_json, fail, out, resolve_sources, stack
from ingest.errors import IngestError


def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: CollectionOpt,
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many chunks.")] = 5,
    source: Annotated[list[str] | None, typer.Option(help="Only chunks from this source path (repeatable).")] = None,
    title: Annotated[list[str] | None, typer.Option(help="Only chunks with this title (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the chunks nearest to a query, with scores, titles and sources."""
    if not query.strip():
        fail("the query is empty", as_json)
    sources = resolve_sources(source)
    try:
        hits = stack(ctx).workspace.search(query, collection, k, sources=sources or None, titles=title or None)
    except IngestError as exc:
        fail(str(exc), as_json)
    if as_json:
        emit_json({"query": query, "collection": collection, "k": k, "hits": [h.to_dict() for h in hits]})
        return
    if not hits:
        out.print("no results")
    for rank, h in enumerate(hits, 1):
        heading = " > ".join(h.metadata.get("headings", []))
        where = h.source + (f" (page {h.metadata['page']})" if "page" in h.metadata else "")
        out.print(
            f"[bold]{rank}. {h.score:.3f}[/]  [cyan]{h.title}[/]" + (f" — {heading}" if heading else ""),
            highlight=False,
        )
        out.print(f"   [dim]{where}[/]", highlight=False)
        snippet = " ".join(h.text.split())
        out.print("   " + (snippet[:300] + ("…" if len(snippet) > 300 else "")), highlight=False)
