"""The ``ragqa`` command line: the root app, its global options, and one module per command group.

Every command has the same shape (see :mod:`api.cli.common`): options, progress on stderr for long
work, a readable summary, and ``--json`` for exactly one JSON object on stdout. The root callback
puts the installation's :class:`~api.factory.RagStack` (built from the settings) in ``ctx.obj``;
commands take their settings and components from there.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from api.cli import (
    adapters,
    ask,
    chat,
    collections,
    documents,
    feedback,
    finetune,
    ingest,
    keys,
    mcp,
    models,
    search,
    serve,
    watch,
)
from api.factory import RagStack
from api.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

NOISY_LOGGERS = ("transformers", "sentence_transformers", "httpx", "faiss", "bm25s")

app = typer.Typer(
    help="ragqa: self-hosted retrieval-augmented question answering.", no_args_is_help=True, add_completion=False
)


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    home: Annotated[
        Path | None, typer.Option("--home", help="Workspace folder (default $RAGQA_HOME or ~/.ragqa).")
    ] = None,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)
    ctx.obj = RagStack(Settings(home=home) if home is not None else Settings())


app.command("ingest")(ingest.ingest)
app.command("search")(search.search)
app.command("ask")(ask.ask)
app.command("eval")(ask.eval_cmd)
app.command("chat")(chat.chat)
app.command("serve")(serve.serve)
app.command("watch")(watch.watch)
app.command("mcp")(mcp.mcp)
app.add_typer(collections.app, name="collections")
app.add_typer(documents.app, name="documents")
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(finetune.app, name="finetune")
app.add_typer(adapters.app, name="adapters")
app.add_typer(feedback.app, name="feedback")


def main() -> None:
    # Library deprecation notices (e.g. transformers' past_key_values -> cache rename) are for developers;
    # they would land in the middle of a streamed answer. Tests still see them.
    warnings.filterwarnings("ignore", category=FutureWarning)
    app()
