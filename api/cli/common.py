"""What every ``ragqa`` command shares: the stack in ``ctx.obj``, option types, output and failure helpers.

Every command has the same shape: options, progress on stderr for long work, a readable summary,
and ``--json`` for exactly one JSON object on stdout. Exit status: 0 success, 1 partial failure
(some files failed), 2 bad input or a failed command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from api.factory import RagStack
from api.settings import Settings

out = Console(soft_wrap=True)
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object (for scripts).")]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="stuff, rag-sequence or rag-token (default from config).")]
KOpt = Annotated[int | None, typer.Option("-k", min=1, max=64, help="Documents retrieved (default from config).")]
AdapterOpt = Annotated[
    str | None,
    typer.Option(
        "--adapter",
        help="LoRA adapter name (see `ragqa adapters list`); default: the collection's or server's promoted "
        "adapter, else the shipped one; 'none': the bare model.",
    ),
]


def stack(ctx: typer.Context) -> RagStack:
    """The command's components, built from the settings the root callback put in ``ctx.obj``."""
    obj = ctx.find_object(RagStack)
    if obj is None:  # a sub-app invoked on its own (tests): settings from the environment
        obj = RagStack.from_env()
        ctx.find_root().obj = obj
    return obj


def settings(ctx: typer.Context) -> Settings:
    return stack(ctx).settings


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


def fail(message: str, as_json: bool = False, code: int = 2) -> NoReturn:
    """Report ``message`` (one JSON object with ``--json``) and exit with ``code``."""
    if as_json:
        emit_json({"ok": False, "error": message})
    else:
        err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def summary_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def resolve_sources(sources: list[str] | None) -> list[str]:
    """Source paths as stored (absolute) when they exist here; other values as given."""
    return [str(Path(s).expanduser().resolve()) if Path(s).expanduser().exists() else s for s in sources or []]


def describe_calibration(calibration: Any) -> str:
    """One line for a collection's abstention calibration (a :class:`rag.calibration.Calibration` or its dict)."""
    if calibration is None:
        return "not calibrated (run `ragqa collections calibrate NAME`)"
    c = calibration if isinstance(calibration, dict) else calibration.to_dict()
    threshold = "off (too few answerable queries)" if c.get("min_score") is None else f"{c['min_score']:.3f}"
    return (
        f"abstain_min_score {threshold} at generation {c.get('generation')} "
        f"({c.get('n_answerable')} answerable / {c.get('n_unanswerable')} probe queries)"
    )
