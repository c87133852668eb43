"""``ragqa watch DIR -c NAME``: keep a collection in sync with a folder until Ctrl-C (see :mod:`ingest.watch`)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from api.cli.common import CollectionOpt, JsonOpt, emit_json, err, fail, out, stack, summary_table
from ingest.errors import IngestError
from ingest.pipeline import IngestReport
from ingest.source_config import WatchedFolder


def watch(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="The folder to keep in sync (searched recursively).")],
    collection: CollectionOpt,
    prune: Annotated[
        bool,
        typer.Option("--prune/--no-prune", help="Remove the documents of files deleted from the folder (default on)."),
    ] = True,
    debounce_ms: Annotated[
        int, typer.Option("--debounce-ms", min=10, max=60_000, help="Quiet time before a sync (milliseconds).")
    ] = 500,
    once: Annotated[bool, typer.Option("--once", help="Sync once (catch up) and exit, without watching.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Keep a collection in sync with a folder: new and changed files are ingested, deleted ones removed.

    It catches up with the folder first (changes made while it was stopped), then follows the folder until
    Ctrl-C or SIGTERM, and ends with a summary. Unchanged files cost one hash, never an embedding.
    """
    from ingest.watch import FolderSync

    try:
        cfg = WatchedFolder(dir=folder, collection=collection, prune=prune, debounce_ms=debounce_ms)
    except ValidationError as exc:
        fail("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()), as_json)
    if not cfg.dir.is_dir():
        fail(f"{cfg.dir} is not a folder; pass an existing folder to watch", as_json)
    ws = stack(ctx).workspace
    sync = FolderSync(ws, cfg, on_sync=lambda report: _after_sync(ws, report, quiet=as_json))
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    try:
        if once:
            report = sync.sync_once()
        else:
            err.print(
                f"watching {sync.root} -> collection {collection!r} (Ctrl-C stops)",
                highlight=False,
            )
            sync.run(stop)
    except IngestError as exc:
        fail(str(exc), as_json)
    finally:
        restore()
        sync.close()
    totals = sync.totals.to_dict()
    if once:
        totals["unchanged"] = len(report.unchanged)
    if as_json:
        emit_json({"collection": collection, "folder": str(sync.root), **totals, "ok": totals["n_failed"] == 0})
    else:
        rows: list[tuple[str, Any]] = [
            ("syncs", totals["syncs"]),
            ("files added", totals["added"]),
            ("files replaced", totals["replaced"]),
            ("files removed", totals["removed"]),
            ("files failed", totals["n_failed"]),
            ("chunks embedded", totals["chunks_embedded"]),
            ("seconds", f"{totals['seconds']:.1f}"),
        ]
        if once:
            rows.insert(4, ("files unchanged (skipped)", totals["unchanged"]))
        out.print(summary_table(f"{'sync' if once else 'watch'} {sync.root} -> {collection!r}", rows))
    raise typer.Exit(0 if not once or report.ok else 1)


def _after_sync(ws, report: IngestReport, quiet: bool) -> None:
    """One line per sync on stderr, the failures, and the abstention threshold recomputed when needed."""
    from rag.calibration import recalibrate

    if not quiet:
        err.print(
            f"{time.strftime('%H:%M:%S')} synced {report.collection!r}: {len(report.added)} added, "
            f"{len(report.replaced)} replaced, {len(report.removed)} removed, {len(report.failed)} failed "
            f"({report.seconds:.1f} s)",
            highlight=False,
        )
        for f in report.failed:
            err.print(f"[red]failed[/] {f.path}: {f.reason}", highlight=False)
    if report.added or report.replaced or report.removed:
        recalibrate(ws, report.collection, quiet=True)


def _stop_on_signals(stop: threading.Event):
    """Ctrl-C and SIGTERM set ``stop`` (the watcher ends after the batch in progress); a second Ctrl-C
    interrupts at once. Returns the function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals are delivered to the main thread only (e.g. a test runner's thread)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        err.print("stopping after the current sync (Ctrl-C again to interrupt now)", highlight=False)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
