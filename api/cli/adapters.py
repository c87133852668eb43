"""``ragqa adapters list|show|delete|promote|rollback``: trained LoRA adapters and the default ones.

``promote`` runs the eval gate (:mod:`finetune.gate`): the candidate and what answers today are
evaluated on the same held-out questions, and the pointer moves only when the candidate's F1 beats
the current one by ``--margin`` (exit 1 when refused, nothing changed; ``--force`` skips the gate).
``rollback`` returns a scope to its previous default. Defaults are per collection (``-c``) or
server-wide (``--server``); see :mod:`rag.adapter_defaults` for the resolution order.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from api.cli.common import JsonOpt, KOpt, ModeOpt, emit_json, err, fail, out, stack

app = typer.Typer(help="List, show and delete trained LoRA adapters.", no_args_is_help=True)

#: Metrics shown in the listing (``adapters show`` prints them all).
LISTED_METRICS = ("train_loss", "eval_loss", "eval_accuracy", "reward_after", "kl_after", "train_seconds")


@app.command("list")
def adapters_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Trained adapters: name, kind, base model, headline metrics."""
    rag = stack(ctx)
    adapters = [a.to_dict() for a in rag.adapters().list()]
    marks = default_marks(ctx)
    for a in adapters:
        a["default_for"] = marks.get(a["name"], [])
    if as_json:
        emit_json({"adapters": adapters, "defaults": _defaults_or_empty(ctx)})
        return
    if not adapters:
        out.print("no adapters yet: train one with `ragqa finetune sft --data FILE.jsonl --output NAME`")
        return
    table = Table("name", "kind", "default for", "base model", "created", "metrics", "size")
    for a in adapters:
        created = dt.datetime.fromtimestamp(a["created_at"]).isoformat(timespec="minutes") if a["created_at"] else "-"
        shown = {k: v for k, v in a["metrics"].items() if isinstance(v, (int, float)) and k in LISTED_METRICS}
        table.add_row(
            a["name"],
            a["kind"],
            ", ".join(a["default_for"]) or "-",
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


def _defaults_or_empty(ctx: typer.Context) -> dict[str, str]:
    from rag.adapter_defaults import AdapterDefaultsError

    try:
        return stack(ctx).adapter_defaults().defaults()
    except AdapterDefaultsError as exc:
        err.print(f"[yellow]warning:[/] {exc}", highlight=False)
        return {}


def default_marks(ctx: typer.Context) -> dict[str, list[str]]:
    """adapter name -> the scopes it is the default of ("server", "collection NAME", "shipped")."""
    from rag.adapter_defaults import SERVER_SCOPE

    marks: dict[str, list[str]] = {}
    for key, name in _defaults_or_empty(ctx).items():
        marks.setdefault(name, []).append("server" if key == SERVER_SCOPE else f"collection {key.partition(':')[2]}")
    shipped = stack(ctx).adapter_resolver.shipped()
    if shipped is not None:
        marks.setdefault(shipped, []).append("shipped")
    return marks


ScopeCollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="The collection whose default adapter changes.")
]
ServerOpt = Annotated[bool, typer.Option("--server", help="Change the server-wide default (all collections).")]


def _scope(collection: str | None, server: bool, as_json: bool) -> str | None:
    if (collection is None) == (not server):
        fail("say whose default changes: -c COLLECTION or --server (one of them)", as_json)
    return collection


@app.command("promote")
def adapters_promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The candidate adapter.")],
    collection: ScopeCollectionOpt = None,
    server: ServerOpt = False,
    eval_file: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help="Held-out questions (SQuAD JSON or JSONL of question/answer). Default: the split kept aside "
            "at training time (recorded by `ragqa finetune pipeline`).",
        ),
    ] = None,
    eval_collection: Annotated[
        str | None,
        typer.Option(
            "--eval-collection",
            help="Collection that answers the questions (default: -c, else the adapter's training collection).",
        ),
    ] = None,
    margin: Annotated[float, typer.Option(help="The candidate's F1 must reach the current F1 + margin.")] = 0.01,
    mode: ModeOpt = None,
    k: KOpt = None,
    n: Annotated[
        int | None,
        typer.Option("--n", min=1, help="Answerable questions sampled (fixed seed), plus as many unanswerable."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed of --n.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Promote without the gate (recorded in the history).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Promote an adapter to the default of a collection (-c) or of the server (--server) if it beats the
    current default on held-out questions by --margin F1; prints the comparison. Exit 1: refused."""
    from finetune.adapters import AdapterRegistryError
    from finetune.errors import FinetuneError
    from finetune.gate import GateEvaluator, GateOptions, GateRefused, promote, run_gate
    from ingest.errors import IngestError
    from rag.errors import RagError

    scope = _scope(collection, server, as_json)
    rag = stack(ctx)
    try:
        info = rag.adapters().require_generator_adapter(name)
    except AdapterRegistryError as exc:
        fail(str(exc), as_json)
    options = GateOptions(
        eval=eval_file, eval_collection=eval_collection, margin=margin, mode=mode, k=k, n=n, seed=seed
    )
    result = None
    try:
        if not force:
            if not as_json:
                err.print(f"gate: evaluating {name!r} against the current default…")
            result = run_gate(
                GateEvaluator(rag.qa, rag.workspace), name, scope, options, meta=info.meta, progress=not as_json
            )
            if not as_json:
                out.print(gate_headline(result), highlight=False)
                out.print(comparison_table(result))
        entry = promote(rag.adapter_defaults(), name, scope, result, force=force)
    except GateRefused as exc:
        if as_json:
            emit_json({"ok": False, "promoted": False, "error": str(exc), "gate": exc.result.to_dict()})
            raise typer.Exit(1) from exc
        err.print(f"[bold red]refused:[/] {exc}; the default is unchanged", highlight=False)
        raise typer.Exit(1) from exc
    except (FinetuneError, IngestError, RagError) as exc:
        fail(str(exc), as_json)
    where = "the server" if scope is None else f"collection {scope!r}"
    if as_json:
        emit_json(
            {
                "ok": True,
                "promoted": True,
                "adapter": name,
                "scope": "server" if scope is None else scope,
                "entry": entry,
                "gate": result.to_dict() if result else None,
            }
        )
        return
    how = "forced, gate skipped" if force else result.reason if result else ""
    out.print(f"promoted {name!r} to the default of {where} ({how})", highlight=False)
    out.print(f"undo: ragqa adapters rollback {'--server' if scope is None else '-c ' + scope}", highlight=False)


def gate_headline(result: Any) -> str:
    """One line: where the questions came from and the verdict (printed above :func:`comparison_table`)."""
    verdict = "[green]passes[/]" if result.passed else "[red]refused[/]"
    return (
        f"eval gate on {result.eval_source} via {result.collection!r}: {verdict} "
        f"(candidate F1 must reach current F1 {result.margin:+.3f})"
    )


def comparison_table(result: Any) -> Table:
    """The gate's comparison (a :class:`finetune.gate.GateResult`) as a table."""
    table = Table(
        "metric",
        f"current: {result.current.label} ({result.current.source})",
        f"candidate: {result.candidate.label}",
        "delta",
    )
    for row in result.rows():
        table.add_row(*row)
    return table


@app.command("rollback")
def adapters_rollback(
    ctx: typer.Context, collection: ScopeCollectionOpt = None, server: ServerOpt = False, as_json: JsonOpt = False
) -> None:
    """Return a collection (-c) or the server (--server) to its previous default adapter."""
    from rag.adapter_defaults import AdapterDefaultsError

    scope = _scope(collection, server, as_json)
    try:
        entry = stack(ctx).adapter_defaults().rollback(scope)
    except AdapterDefaultsError as exc:
        fail(str(exc), as_json)
    now = stack(ctx).adapter_resolver.resolve(scope, None)
    if as_json:
        emit_json(
            {
                "ok": True,
                "scope": "server" if scope is None else scope,
                "entry": entry,
                "answers_with": now.adapter,
                "source": now.source,
            }
        )
        return
    where = "the server" if scope is None else f"collection {scope!r}"
    out.print(
        f"default of {where}: {entry['previous'] or 'unset'} -> {entry['adapter'] or 'unset'}; "
        f"questions are now answered by {now.adapter or 'the bare model'} ({now.source})",
        highlight=False,
    )
