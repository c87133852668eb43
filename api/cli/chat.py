"""``ragqa chat``: a conversation with a collection in the terminal; follow-ups are made standalone."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from api.cli.ask import answer_errors, print_sources
from api.cli.common import AdapterOpt, CollectionOpt, KOpt, ModeOpt, emit_json, err, fail, out, stack

EXIT_WORDS = {"exit", "quit", ":q"}


def chat(
    ctx: typer.Context,
    collection: CollectionOpt,
    mode: ModeOpt = None,
    k: KOpt = None,
    adapter: AdapterOpt = None,
    method: Annotated[
        str | None,
        typer.Option("--method", help="condense or history: how a follow-up is made standalone (default from config)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per answer (JSON lines).")] = False,
) -> None:
    """Talk with a collection: questions from stdin, one per line, until EOF or "exit". Each answer is
    printed with its sources; a follow-up ("When was it built?") is made standalone from the turns before."""
    from rag.conversation import Turn, standalone_question

    rag = stack(ctx)
    cfg = rag.settings.conversation
    if method is not None and method not in ("condense", "history"):
        fail(f"unknown --method {method!r}; use condense or history", as_json)
    history: list[Turn] = []
    interactive = sys.stdin.isatty()
    if interactive:
        err.print(f"[dim]chatting with {collection!r}; type exit or press Ctrl-D to stop[/]")
    turns = 0
    try:
        with rag.workspace.open(collection, readonly=True) as coll:
            while True:
                if interactive:
                    err.print("[bold]you:[/] ", end="")
                line = sys.stdin.readline()
                if not line:
                    break
                question = line.strip()
                if not question:
                    continue
                if question.lower() in EXIT_WORDS:
                    break
                standalone = standalone_question(
                    question, history, config=cfg, generator=rag.qa.generator, method=method
                )
                ans = rag.qa.answer(coll, standalone, mode=mode, k=k, adapter=adapter)
                history = [*history, Turn(question, ans.answer)][-max(cfg.max_turns, 1) :]
                turns += 1
                if as_json:
                    emit_json({**ans.to_dict(), "question": question, "standalone_question": standalone})
                    continue
                if standalone != question:
                    out.print(f"[dim](as: {standalone})[/]", highlight=False)
                out.print(f"[bold]answer:[/] {ans.answer}", highlight=False)
                if ans.abstained:
                    out.print(f"[yellow]abstained:[/] {ans.abstain_reason}", highlight=False)
                print_sources(ans)
    except answer_errors() as exc:
        fail(str(exc), as_json)
    if interactive and not as_json:
        err.print(f"[dim]{turns} question(s) answered[/]")
