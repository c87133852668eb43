"""``ragqa adapters list|show|delete``: trained LoRA adapters."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.table import Table

from api.cli.common import JsonOpt, emit_json, fail, out, stack

app = typer.Typer(help="List, show and delete trained LoRA adapters.", no_args_is_help=True)

#: Metrics shown in the listing (``adapters show`` prints them all).
LISTED_METRICS = ("train_loss", "eval_loss", "eval_accuracy", "reward_after", "kl_after", "train_seconds")


@app.command("list")
def adapters_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Trained adapters: name, kind, base model, headline metrics."""
    adapters = [a.to_dict() for a in stack(ctx).adapters().list()]
    if as_json:
        emit_json({"adapters": adapters})
        return
    if not adapters:
        out.print("no adapters yet: train one with `ragqa finetune sft --data FILE.jsonl --output NAME`")
        return
    table = Table("name", "kind", "base model", "created", "metrics", "size")
    for a in adapters:
        created = dt.datetime.fromtimestamp(a["created_at"]).isoformat(timespec="minutes") if a["created_at"] else "-"
        shown = {k: v for k, v in a["metrics"].items() if isinstance(v, (int, float)) and k in LISTED_METRICS}
        table.add_row(
            a["name"],
            a["kind"],
            str(a["base_model"]),
            created,
            ", ".join(f"{k}={v}" for k, v in shown.items()) or "-",
            f"{a['size_bytes'] / 2**20:.1f} MB",
        )
    out.print(table)


@app.command("show")
def adapters_show(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Adapter name.")], as_json: JsonOpt = False
) -> None:
    """Everything recorded about an adapter: options, data hash, metrics."""
    from finetune.adapters import AdapterRegistryError

    try:
        info = stack(ctx).adapters().get(name)
    except AdapterRegistryError as exc:
        fail(str(exc), as_json)
    if as_json:
        emit_json(info.to_dict(full=True))
        return
    out.print(json.dumps(info.to_dict(full=True), indent=2, default=str), highlight=False)


@app.command("delete")
def adapters_delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete an adapter (its folder is removed)."""
    from finetune.adapters import AdapterRegistryError

    if not yes and not as_json and not typer.confirm(f"delete adapter {name!r}?"):
        raise typer.Exit(1)
    try:
        stack(ctx).adapters().delete(name)
    except AdapterRegistryError as exc:
        fail(str(exc), as_json)
    if as_json:
        emit_json({"ok": True, "deleted": name})
    else:
        out.print(f"deleted adapter {name}")
