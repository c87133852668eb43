"""``ragqa models [prepare]``: the configured embedder and generator, and whether they are ready."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from api.cli.common import JsonOpt, emit_json, err, fail, out, settings, stack
from api.settings import Settings
from ingest.errors import IngestError

app = typer.Typer(help="Show the configured models (and prepare them with `ragqa models prepare`).")


def model_rows(s: Settings) -> list[dict[str, Any]]:
    from ingest.embedder import resolve_embedder_path
    from rag.models import locate_generator

    rows: list[dict[str, Any]] = []
    try:
        path = resolve_embedder_path(s.ingest.embedder.model)
        rows.append({"role": "embedder", "model": s.ingest.embedder.model, "path": path, "ready": Path(path).exists()})
    except IngestError as exc:
        rows.append(
            {"role": "embedder", "model": s.ingest.embedder.model, "path": None, "ready": False, "error": str(exc)}
        )
    try:
        loc = locate_generator(s.generator, s.models_dir)
        rows.append(
            {
                "role": "generator",
                "model": loc.name,
                "path": loc.path,
                "source": loc.source,
                "kind": loc.kind,
                "ready": loc.ready,
            }
        )
    except IngestError as exc:
        rows.append({"role": "generator", "model": s.generator.model, "path": None, "ready": False, "error": str(exc)})
    return rows


def _print_models(rows: list[dict[str, Any]]) -> None:
    table = Table("role", "model", "ready", "path")
    for r in rows:
        table.add_row(r["role"], r["model"], "yes" if r["ready"] else "no", str(r.get("path") or r.get("error")))
    out.print(table)


@app.callback(invoke_without_command=True)
def models_main(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show which models are configured, where they live and whether they are ready."""
    if ctx.invoked_subcommand is not None:
        return
    rows = model_rows(settings(ctx))
    if as_json:
        emit_json({"models": rows, "home": str(settings(ctx).home)})
    else:
        _print_models(rows)
        if not all(r["ready"] for r in rows):
            out.print("run `ragqa models prepare` to make them ready")


@app.command("prepare")
def models_prepare(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Prepare the models: convert the generator's GGUF once, build the embedder's caches, install the
    shipped reader adapter (the bundled model's default adapter)."""
    from rag.models import prepare_generator

    s = settings(ctx)
    try:
        if not as_json:
            err.print("preparing the embedder…")
        ws = stack(ctx).workspace
        if not as_json:
            err.print(f"embedder cache (per machine, shared by every workspace): {ws.cache_dir}", highlight=False)
        embedder = ws.embedder  # loads the embedder, building its converted artefacts once per machine
        embedder_file = getattr(embedder, "model_file", None)
        if not as_json and embedder_file is not None:
            err.print(f"embedder prepared: {embedder_file}", highlight=False)
        if not as_json:
            err.print("preparing the generator (a GGUF is converted once, ~30-40 s)…")
        prepare_generator(s.generator, s.models_dir)
    except IngestError as exc:
        fail(str(exc), as_json)
    shipped = install_shipped_adapter(s)
    rows = model_rows(s)
    if as_json:
        emit_json(
            {
                "models": rows,
                "ok": all(r["ready"] for r in rows),
                "shipped_adapter": shipped,
                "embedder_cache": str(ws.cache_dir),
                "embedder_file": str(embedder_file) if embedder_file is not None else None,
            }
        )
    else:
        _print_models(rows)
        out.print(f"shipped adapter: {shipped['status']} ({shipped['reason']})", highlight=False)


def install_shipped_adapter(s: Settings) -> dict[str, Any]:
    """Install the shipped reader adapter when it fits the configured generator (see :mod:`finetune.shipped`)."""
    from finetune.shipped import ShippedAdapterError, install_shipped, shipped_dir
    from rag.models import canonical_name

    try:
        report = install_shipped(shipped_dir(s.shipped_adapter), s.adapters_dir, canonical_name(s.generator.model))
    except ShippedAdapterError as exc:
        return {"status": "error", "reason": str(exc), "source": None, "adapter": None}
    return report.to_dict()
