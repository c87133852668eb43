"""``ragqa keys create|list|revoke``: the REST API's keys (stored hashed)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from api.auth import open_key_store
from api.cli.common import JsonOpt, emit_json, fail, out, settings

app = typer.Typer(help="Create, list and revoke the REST API's keys (stored hashed).", no_args_is_help=True)


@app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A label for the key (who or what uses it).")],
    collection: Annotated[
        list[str] | None,
        typer.Option("--collection", "-c", help="Limit the key to this collection (repeatable); default: all."),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", "-a", help="Limit the key to this LoRA adapter (repeatable); default: all."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key; its secret is shown once (only a hash is stored)."""
    from rag.adapter_store import check_adapter_name
    from rag.errors import InvalidAdapterError

    try:
        adapters = [check_adapter_name(a) for a in adapter or []]
    except InvalidAdapterError as exc:
        fail(str(exc), as_json)
    store = open_key_store(settings(ctx).home)
    try:
        key, secret = store.create(name, collection or None, adapters or None)
    finally:
        store.close()
    if as_json:
        emit_json({**key.to_dict(), "key": secret})
        return
    out.print(
        f"created key [bold]{key.key_id}[/] ({name}); "
        f"collections: {', '.join(key.collections) if key.collections else 'all'}; "
        f"adapters: {', '.join(key.adapters) if key.adapters else 'all'}",
        highlight=False,
    )
    out.print("the secret is shown only now; store it safely:")
    out.print(secret, highlight=False)
    out.print(
        f'use it as: curl -H "Authorization: Bearer {secret[:12]}…" http://127.0.0.1:8000/v1/collections',
        highlight=False,
    )


@app.command("list")
def keys_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List API keys (ids, names, collections, revoked) — never their secrets."""
    store = open_key_store(settings(ctx).home)
    try:
        keys = [k.to_dict() for k in store.list()]
    finally:
        store.close()
    if as_json:
        emit_json({"data": keys, "count": len(keys)})
        return
    table = Table("key_id", "name", "collections", "adapters", "status", "last used")
    for k in keys:
        used = (
            dt.datetime.fromtimestamp(k["last_used_at"]).isoformat(timespec="seconds") if k["last_used_at"] else "never"
        )
        table.add_row(
            k["key_id"],
            k["name"],
            ", ".join(k["collections"]) if k["collections"] else "all",
            ", ".join(k["adapters"]) if k["adapters"] else "all",
            "revoked" if k["revoked"] else "active",
            used,
        )
    out.print(table if keys else "no API keys yet: create one with `ragqa keys create NAME`")


@app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (see `ragqa keys list`).")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API key; requests with it fail from now on."""
    store = open_key_store(settings(ctx).home)
    try:
        ok = store.revoke(key_id)
    finally:
        store.close()
    if not ok:
        fail(f"no active key {key_id!r}; see `ragqa keys list`", as_json)
    if as_json:
        emit_json({"revoked": key_id, "ok": True})
    else:
        out.print(f"revoked key {key_id}")
