"""``ragqa ingest``: documents into a collection (created on first use)."""

from __future__ import annotations

import re
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
    from ingest.pipeline import IngestReport
    from ingest.web import WebReport
    from rag.calibration import Calibration

INDEX_KINDS = ("flat", "ivf", "hnsw", "ivfpq")
RAY_ADDRESS = re.compile(r"(ray://)?[\w.\-]+:\d{1,5}")


def ingest(
    ctx: typer.Context,
    paths: Annotated[
        list[str],
        typer.Argument(help="Files, folders (searched recursively), glob patterns, or http(s):// URLs of web pages."),
    ],
    collection: CollectionOpt,
    index: Annotated[str | None, typer.Option(help="Index kind for a new collection: flat, ivf, hnsw, ivfpq.")] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Remove files ingested from these folders that no longer exist.")
    ] = False,
    crawl: Annotated[
        bool,
        typer.Option("--crawl", help="Follow the links of the URLs (or the pages a sitemap lists) within their host."),
    ] = False,
    depth: Annotated[
        int | None, typer.Option(min=0, max=20, help="With --crawl: links followed from a start URL (default 2).")
    ] = None,
    max_pages: Annotated[
        int | None, typer.Option("--max-pages", min=1, help="With --crawl: most pages fetched (default 100).")
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            is_flag=False,
            flag_value="auto",
            metavar="[ADDRESS]",
            help="Load, chunk and embed the files on a Ray cluster: its head's HOST:PORT, or alone for the "
            "cluster `ray start` runs on this machine (the files must be at the same paths on every node).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest documents or web pages into a collection (created on first use); unchanged files and pages are skipped.

    A URL's page is fetched (robots.txt respected), its main text extracted, and stored with the URL as its
    source. `--crawl` also follows its links within the same host, up to `--depth` links away and `--max-pages`
    pages; a sitemap URL (sitemap.xml) crawls the pages it lists.
    """
    from ingest.web import ingest_web, is_url

    s = settings(ctx)
    if index is not None:
        if index not in INDEX_KINDS:
            fail(f"unknown index kind {index!r}; use flat, ivf, hnsw or ivfpq", as_json)
        s.ingest.index.kind = index  # type: ignore[assignment]
    if ray is not None:
        if ray != "auto" and not RAY_ADDRESS.fullmatch(ray):
            fail(f"--ray takes a Ray head's HOST:PORT or nothing, not {ray!r}; put a bare --ray last", as_json)
        s.ingest.ray.address = ray
    urls = [p for p in paths if is_url(p)]
    files = [p for p in paths if not is_url(p)]
    if (crawl or depth is not None or max_pages is not None) and not urls:
        fail("--crawl, --depth and --max-pages apply to URLs; pass an http(s):// URL", as_json)
    if (depth is not None or max_pages is not None) and not crawl:
        fail("--depth and --max-pages limit a crawl; add --crawl", as_json)
    ws = stack(ctx).workspace
    try:
        file_report = ws.ingest(files, collection, progress=not as_json, prune=prune) if files or not urls else None
        web: WebReport | None = None
        if urls:
            web = ingest_web(
                ws, urls, collection, s.web, crawl=crawl, depth=depth, max_pages=max_pages, progress=not as_json
            )
    except IngestError as exc:
        fail(str(exc), as_json)
    if web is None:
        report: IngestReport = file_report  # type: ignore[assignment]
    else:
        report = web if file_report is None else _merged(file_report, web)
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
            *_web_rows(report),
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


def _merged(files: IngestReport, web: WebReport) -> WebReport:
    """One report for a run given both files and URLs (the web counters kept)."""
    from ingest.watch import merge_reports

    merge_reports(web, files)
    web.seconds += files.seconds
    return web


def _web_rows(report: IngestReport) -> list[tuple[str, object]]:
    from ingest.web import WebReport

    if not isinstance(report, WebReport):
        return []
    return [
        ("pages fetched", report.pages_fetched),
        ("pages skipped (robots)", len(report.skipped_robots)),
        ("links past --max-pages", report.not_fetched),
    ]


def _calibrate(ctx: typer.Context, collection: str) -> Calibration | None:
    """The collection's abstention threshold, recomputed unless it is current (None then; never fails the ingest)."""
    from rag.calibration import recalibrate

    return recalibrate(stack(ctx).workspace, collection, quiet=True)
