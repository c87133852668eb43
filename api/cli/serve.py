"""``ragqa serve``: the REST API and web UI (models load once at start-up)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from api.auth import open_key_store
from api.cli.common import err, settings


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default server.host: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port (default server.port: 8000).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve WITHOUT API keys (trusted machines only).")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Start the REST API (OpenAPI docs at /docs); models load once at start-up."""
    import uvicorn

    from api.app import create_app

    s = settings(ctx)
    if host is not None:
        s.server.host = host
    if port is not None:
        s.server.port = port
    if no_auth:
        s.server.auth = False
    logging.getLogger("api").setLevel(logging.INFO)
    if s.server.auth:
        store = open_key_store(s.home)
        n_keys = len(store.list(include_revoked=False))
        store.close()
        if n_keys == 0:
            err.print(
                "[yellow]no API keys yet:[/] create one with `ragqa keys create NAME` (requests need "
                "`Authorization: Bearer <key>`), or start with --no-auth on a trusted machine",
                highlight=False,
            )
    else:
        err.print(
            "[bold red]WARNING: authentication is OFF (--no-auth): anyone who can reach "
            f"{s.server.host}:{s.server.port} can read, upload and delete every collection.[/]",
            highlight=False,
        )
    err.print(f"serving ragqa on http://{s.server.host}:{s.server.port} (docs: /docs, home: {s.home})", highlight=False)
    uvicorn.run(
        create_app(s), host=s.server.host, port=s.server.port, log_level=log_level, timeout_graceful_shutdown=10
    )
