"""``ragqa mcp``: serve the workspace's collections to AI agents over the Model Context Protocol (stdio).

stdout is the protocol channel: this command prints nothing itself, and logs go to stderr (the root
callback's logging setup); while serving, the SDK also points file descriptor 1 at stderr so that stray
output of a library cannot corrupt the stream.
"""

from __future__ import annotations

import logging

import typer

from api.cli.common import stack

logger = logging.getLogger(__name__)


def mcp(ctx: typer.Context) -> None:
    """Serve the collections as MCP tools (list_collections, search, ask) on stdin/stdout, for AI agents.

    Started by an MCP client (README "Agents (MCP)"); models load on the first search or ask, then stay.
    """
    from api.mcp_server import build_server

    rag = stack(ctx)
    logger.info("ragqa mcp: serving %s over stdio", rag.settings.home)
    build_server(rag).run("stdio")
