"""The ``ragqa`` command line.

Every command has the same shape: options, progress on stderr for long work, a readable
summary, and ``--json`` for exactly one JSON object on stdout. Exit status: 0 success,
1 partial failure (some files failed), 2 bad input or a failed command.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from api.settings import Settings
from ingest.errors import IngestError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(help="ragqa: self-hosted retrieval-augmented question answering.", no_args_is_help=True, add_completion=False)
collections_app = typer.Typer(help="List, show and delete collections.", no_args_is_help=True)
documents_app = typer.Typer(help="List and delete the documents of a collection.", no_args_is_help=True)
models_app = typer.Typer(help="Show the configured models (and prepare them with `ragqa models prepare`).")
app.add_typer(collections_app, name="collections")
app.add_typer(documents_app, name="documents")
app.add_typer(models_app, name="models")

out = Console(soft_wrap=True)
err = Console(stderr=True)
logger = logging.getLogger("ragqa")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object (for scripts).")]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]


class State:
    settings: Settings | None = None


def settings() -> Settings:
    if State.settings is None:
        State.settings = Settings()
    return State.settings


def workspace():
    from ingest.workspace import Workspace

    s = settings()
    return Workspace(s.home, s.ingest)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


def fail(message: str, as_json: bool = False, code: int = 2) -> None:
    if as_json:
        emit_json({"ok": False, "error": message})
    else:
        err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    home: Annotated[Optional[Path], typer.Option("--home", help="Workspace folder (default $RAGQA_HOME or ~/.ragqa).")] = None,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("transformers", "sentence_transformers", "httpx", "faiss", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)
    State.settings = Settings(home=home) if home is not None else Settings()


# -- ingest -------------------------------------------------------------------------------
@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files, folders (searched recursively) or glob patterns.")],
    collection: CollectionOpt,
    index: Annotated[Optional[str], typer.Option(help="Index kind for a new collection: flat, ivf, hnsw, ivfpq.")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Remove files ingested from these folders that no longer exist.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest documents into a collection (created on first use); unchanged files are skipped."""
    if index is not None:
        if index not in ("flat", "ivf", "hnsw", "ivfpq"):
            fail(f"unknown index kind {index!r}; use flat, ivf, hnsw or ivfpq", as_json)
        settings().ingest.index.kind = index  # type: ignore[assignment]
    try:
        report = workspace().ingest(paths, collection, progress=not as_json, prune=prune)
    except IngestError as exc:
        fail(str(exc), as_json)
        return
    if as_json:
        emit_json(report.to_dict())
    else:
        table = Table(title=f"ingest into {collection!r}", show_header=False)
        for key, value in [
            ("files added", len(report.added)),
            ("files replaced", len(report.replaced)),
            ("files unchanged (skipped)", len(report.unchanged)),
            ("files failed", len(report.failed)),
            ("unsupported files skipped", len(report.skipped_unsupported)),
            ("files removed (--prune)", len(report.removed)),
            ("documents", report.documents),
            ("chunks", report.chunks),
            ("chunks embedded / reused", f"{report.chunks_embedded} / {report.chunks_reused}"),
            ("seconds", f"{report.seconds:.1f}"),
        ]:
            table.add_row(key, str(value))
        out.print(table)
        for f in report.failed:
            err.print(f"[red]failed[/] {f.path}: {f.reason}", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


# -- search -------------------------------------------------------------------------------
@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: CollectionOpt,
    k: Annotated[int, typer.Option("-k", min=1, max=1000, help="How many chunks.")] = 5,
    source: Annotated[Optional[list[str]], typer.Option(help="Only chunks from this source path (repeatable).")] = None,
    title: Annotated[Optional[list[str]], typer.Option(help="Only chunks with this title (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the chunks nearest to a query, with scores, titles and sources."""
    if not query.strip():
        fail("the query is empty", as_json)
    sources = [str(Path(s).expanduser().resolve()) if Path(s).expanduser().exists() else s for s in source or []]
    try:
        hits = workspace().search(query, collection, k, sources=sources or None, titles=title or None)
    except IngestError as exc:
        fail(str(exc), as_json)
        return
    if as_json:
        emit_json({"query": query, "collection": collection, "k": k, "hits": [h.to_dict() for h in hits]})
        return
    if not hits:
        out.print("no results")
    for rank, h in enumerate(hits, 1):
        heading = " > ".join(h.metadata.get("headings", []))
        where = h.source + (f" (page {h.metadata['page']})" if "page" in h.metadata else "")
        out.print(f"[bold]{rank}. {h.score:.3f}[/]  [cyan]{h.title}[/]" + (f" — {heading}" if heading else ""), highlight=False)
        out.print(f"   [dim]{where}[/]", highlight=False)
        snippet = " ".join(h.text.split())
        out.print("   " + (snippet[:300] + ("…" if len(snippet) > 300 else "")), highlight=False)


# -- ask and eval -------------------------------------------------------------------------
def qa_pipeline():
    """Workspace, retriever, generator and QA pipeline built from the settings."""
    from rag.generator import Generator
    from rag.qa import QAPipeline
    from rag.retriever import Retriever

    s = settings()
    ws = workspace()
    generator = Generator(s.generator, s.models_dir, s.adapters_dir)
    return ws, QAPipeline(Retriever(ws.embedder, s.retriever), generator, s.qa)


ModeOpt = Annotated[Optional[str], typer.Option("--mode", help="stuff, rag-sequence or rag-token (default from config).")]
KOpt = Annotated[Optional[int], typer.Option("-k", min=1, max=64, help="Documents retrieved (default from config).")]
AdapterOpt = Annotated[Optional[str], typer.Option("--adapter", help="LoRA adapter name (see `ragqa adapters list`).")]


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: CollectionOpt,
    mode: ModeOpt = None,
    k: KOpt = None,
    adapter: AdapterOpt = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from a collection and print the answer with its sources."""
    from rag.generator import AdapterError
    from rag.qa import QAError

    def on_token(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        ws, qa = qa_pipeline()
        with ws.open(collection, readonly=True) as coll:
            if stream and not as_json:
                sys.stdout.write("answer: ")
            ans = qa.answer(coll, question, mode=mode, k=k, adapter=adapter,
                            on_token=on_token if stream and not as_json else None)
    except (IngestError, QAError, AdapterError) as exc:
        fail(str(exc), as_json)
        return
    if as_json:
        emit_json(ans.to_dict())
        return
    if stream:
        sys.stdout.write("\n")
        if ans.answer.rstrip(".") != ans.raw_answer.strip().rstrip("."):  # cleaned or withheld: say so
            out.print(f"[bold]answer:[/] {ans.answer}", highlight=False)
    else:
        out.print(f"[bold]answer:[/] {ans.answer}", highlight=False)
    if ans.abstained:
        out.print(f"[yellow]abstained:[/] {ans.abstain_reason}", highlight=False)
    out.print(f"[dim]mode {ans.mode} · model {ans.model} · adapter {ans.adapter or 'none'} · "
              f"{ans.timings.get('total_s', 0):.2f} s[/]", highlight=False)
    out.print("[bold]sources:[/]")
    for c in ans.citations:
        where = c.source + (f" (page {c.metadata['page']})" if "page" in c.metadata else "")
        out.print(f" [{c.index}] {c.title} — score {c.score:.3f}, p(z|x) {c.posterior:.2f}, "
                  f"share {c.contribution:.2f}\n     [dim]{where}[/]", highlight=False)


@app.command("eval")
def eval_cmd(
    data: Annotated[Path, typer.Option("--data", help="SQuAD-format JSON file.")],
    collection: CollectionOpt,
    mode: ModeOpt = None,
    k: KOpt = None,
    adapter: AdapterOpt = None,
    n: Annotated[Optional[int], typer.Option("--n", min=1, help="Answerable questions sampled (fixed seed), plus as many unanswerable.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    calibrate_: Annotated[bool, typer.Option("--calibrate", help="Also fit abstention thresholds on this data.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate on SQuAD-format data: recall@k, EM, F1, abstention, latency, tokens/s."""
    from rag.evaluate import calibrate, compute_metrics, load_squad, run_eval, sample_examples, thresholds
    from rag.generator import AdapterError
    from rag.qa import QAError

    try:
        examples = sample_examples(load_squad(data), n, seed)
    except ValueError as exc:
        fail(str(exc), as_json)
        return
    if not examples:
        fail(f"{data} holds no questions", as_json)
    try:
        ws, qa = qa_pipeline()
        with ws.open(collection, readonly=True) as coll:
            records = run_eval(qa, coll, examples, mode=mode, k=k, adapter=adapter, progress=not as_json)
    except (IngestError, QAError, AdapterError) as exc:
        fail(str(exc), as_json)
        return
    cfg = settings().qa
    metrics = compute_metrics(records, **thresholds(cfg)).to_dict()
    metrics.update({"mode": mode or cfg.mode, "k": k or settings().retriever.k, "adapter": adapter, "collection": collection})
    if calibrate_:
        metrics["calibration"] = calibrate(records)
    if as_json:
        emit_json(metrics)
        return
    table = Table("metric", "value", title=f"eval {data.name} on {collection!r} ({metrics['mode']}, k={metrics['k']})")
    for key in ("n", "n_unanswerable", "em", "f1", "recall_at_k", "abstain_precision", "abstain_recall",
                "abstain_rate_answerable", "p50_s", "p95_s", "tokens_per_s"):
        v = metrics[key]
        table.add_row(key, "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
    out.print(table)
    if calibrate_:
        c = metrics["calibration"]
        out.print(f"calibrated thresholds: RAGQA_QA__ABSTAIN_MIN_SCORE={c['min_score']} "
                  f"RAGQA_QA__ABSTAIN_MIN_LOGPROB={c['min_logprob']} "
                  f"RAGQA_QA__ABSTAIN_MAX_IDK_MARGIN={c['max_idk_margin']}")


# -- collections --------------------------------------------------------------------------
@collections_app.command("list")
def collections_list(as_json: JsonOpt = False) -> None:
    """List the collections in the workspace."""
    ws = workspace()
    infos = []
    for name in ws.list_collections():
        try:
            with ws.open(name, readonly=True, check_embedder=False) as coll:
                infos.append(coll.info())
        except IngestError as exc:
            infos.append({"name": name, "error": str(exc)})
    if as_json:
        emit_json({"collections": infos, "count": len(infos)})
        return
    table = Table("name", "documents", "chunks", "embedder", "index")
    for i in infos:
        table.add_row(i["name"], str(i.get("documents", "?")), str(i.get("chunks", "?")), i.get("embedder", i.get("error", "")), i.get("index_built", ""))
    out.print(table if infos else "no collections yet: create one with `ragqa ingest PATH -c NAME`")


@collections_app.command("show")
def collections_show(name: Annotated[str, typer.Argument()], as_json: JsonOpt = False) -> None:
    """Show a collection's settings and size."""
    try:
        with workspace().open(name, readonly=True, check_embedder=False) as coll:
            info = coll.info()
    except IngestError as exc:
        fail(str(exc), as_json)
        return
    if as_json:
        emit_json(info)
        return
    table = Table(show_header=False, title=name)
    for key, value in info.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    out.print(table)


@collections_app.command("delete")
def collections_delete(
    name: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a collection and everything in it."""
    if not yes and not as_json and sys.stdin.isatty():
        typer.confirm(f"delete collection {name!r} and all its documents?", abort=True)
    try:
        workspace().delete(name)
    except IngestError as exc:
        fail(str(exc), as_json)
    if as_json:
        emit_json({"deleted": name, "ok": True})
    else:
        out.print(f"deleted collection {name!r}")


# -- documents ----------------------------------------------------------------------------
@documents_app.command("list")
def documents_list(
    collection: CollectionOpt,
    source: Annotated[Optional[str], typer.Option(help="Only documents from this source path.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """List the documents of a collection."""
    if source and Path(source).expanduser().exists():
        source = str(Path(source).expanduser().resolve())
    try:
        with workspace().open(collection, readonly=True, check_embedder=False) as coll:
            rows = coll.store.list_documents(source=source, limit=limit)
            total = coll.store.count_documents()
    except IngestError as exc:
        fail(str(exc), as_json)
        return
    if as_json:
        emit_json({"collection": collection, "count": total, "data": [
            {"doc_id": r.doc_id, "source": r.source, "key": r.key, "title": r.title, "chunks": r.n_chunks,
             "chars": r.n_chars, "metadata": r.metadata} for r in rows]})
        return
    table = Table("doc_id", "title", "chunks", "source")
    for r in rows:
        table.add_row(r.doc_id, r.title, str(r.n_chunks), r.source + (f"#{r.key}" if r.key else ""))
    out.print(table)
    out.print(f"{len(rows)} of {total} documents")


@documents_app.command("delete")
def documents_delete(
    collection: CollectionOpt,
    doc_id: Annotated[Optional[list[str]], typer.Option("--id", help="Document id (repeatable).")] = None,
    source: Annotated[Optional[list[str]], typer.Option(help="Every document from this source path (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete documents by id or by source path; they disappear from search."""
    if not doc_id and not source:
        fail("name what to delete with --id DOC_ID or --source PATH", as_json)
    sources = [str(Path(s).expanduser().resolve()) if Path(s).expanduser().exists() else s for s in source or []]
    try:
        with workspace().open(collection, check_embedder=False) as coll:
            n = coll.delete_documents(doc_ids=doc_id or [], sources=sources)
    except IngestError as exc:
        fail(str(exc), as_json)
        return
    if as_json:
        emit_json({"collection": collection, "deleted": n, "ok": n > 0})
    else:
        out.print(f"deleted {n} document(s) from {collection!r}")
    if n == 0:
        if not as_json:
            err.print("nothing matched: check the ids with `ragqa documents list -c NAME`")
        raise typer.Exit(1)


# -- models -------------------------------------------------------------------------------
def _model_rows() -> list[dict[str, Any]]:
    from ingest.embedder import resolve_embedder_path
    from rag.models import locate_generator

    s = settings()
    rows: list[dict[str, Any]] = []
    try:
        path = resolve_embedder_path(s.ingest.embedder.model)
        rows.append({"role": "embedder", "model": s.ingest.embedder.model, "path": path, "ready": Path(path).exists()})
    except IngestError as exc:
        rows.append({"role": "embedder", "model": s.ingest.embedder.model, "path": None, "ready": False, "error": str(exc)})
    try:
        loc = locate_generator(s.generator, s.models_dir)
        rows.append({"role": "generator", "model": loc.name, "path": loc.path, "source": loc.source, "kind": loc.kind, "ready": loc.ready})
    except IngestError as exc:
        rows.append({"role": "generator", "model": s.generator.model, "path": None, "ready": False, "error": str(exc)})
    return rows


def _print_models(rows: list[dict[str, Any]]) -> None:
    table = Table("role", "model", "ready", "path")
    for r in rows:
        table.add_row(r["role"], r["model"], "yes" if r["ready"] else "no", str(r.get("path") or r.get("error")))
    out.print(table)


@models_app.callback(invoke_without_command=True)
def models_main(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show which models are configured, where they live and whether they are ready."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _model_rows()
    if as_json:
        emit_json({"models": rows, "home": str(settings().home)})
    else:
        _print_models(rows)
        if not all(r["ready"] for r in rows):
            out.print("run `ragqa models prepare` to make them ready")


@models_app.command("prepare")
def models_prepare(as_json: JsonOpt = False) -> None:
    """Prepare the models: convert the generator's GGUF once, build the embedder's caches."""
    from rag.models import prepare_generator

    s = settings()
    try:
        if not as_json:
            err.print("preparing the embedder…")
        workspace().embedder  # noqa: B018 - loads and caches converted artefacts
        if not as_json:
            err.print("preparing the generator (a GGUF is converted once, ~30-40 s)…")
        prepare_generator(s.generator, s.models_dir)
    except IngestError as exc:
        fail(str(exc), as_json)
    rows = _model_rows()
    if as_json:
        emit_json({"models": rows, "ok": all(r["ready"] for r in rows)})
    else:
        _print_models(rows)


# -- server and API keys --------------------------------------------------------------------
keys_app = typer.Typer(help="Create, list and revoke the REST API's keys (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default server.host: 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="Port (default server.port: 8000).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve WITHOUT API keys (trusted machines only).")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Start the REST API (OpenAPI docs at /docs); models load once at start-up."""
    import uvicorn

    from api.app import create_app

    s = settings()
    if host is not None:
        s.server.host = host
    if port is not None:
        s.server.port = port
    if no_auth:
        s.server.auth = False
    logging.getLogger("api").setLevel(logging.INFO)
    if s.server.auth:
        from api.auth import open_key_store

        store = open_key_store(s.home)
        n_keys = len(store.list(include_revoked=False))
        store.close()
        if n_keys == 0:
            err.print("[yellow]no API keys yet:[/] create one with `ragqa keys create NAME` (requests need "
                      "`Authorization: Bearer <key>`), or start with --no-auth on a trusted machine", highlight=False)
    else:
        err.print("[bold red]WARNING: authentication is OFF (--no-auth): anyone who can reach "
                  f"{s.server.host}:{s.server.port} can read, upload and delete every collection.[/]", highlight=False)
    err.print(f"serving ragqa on http://{s.server.host}:{s.server.port} (docs: /docs, home: {s.home})", highlight=False)
    uvicorn.run(create_app(s), host=s.server.host, port=s.server.port, log_level=log_level, timeout_graceful_shutdown=10)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key (who or what uses it).")],
    collection: Annotated[Optional[list[str]], typer.Option("--collection", "-c", help="Limit the key to this collection (repeatable); default: all.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key; its secret is shown once (only a hash is stored)."""
    from api.auth import open_key_store

    store = open_key_store(settings().home)
    try:
        key, secret = store.create(name, collection or None)
    finally:
        store.close()
    if as_json:
        emit_json({**key.to_dict(), "key": secret})
        return
    out.print(f"created key [bold]{key.key_id}[/] ({name}); collections: {', '.join(key.collections) if key.collections else 'all'}",
              highlight=False)
    out.print("the secret is shown only now; store it safely:")
    out.print(secret, highlight=False)
    out.print(f'use it as: curl -H "Authorization: Bearer {secret[:12]}…" http://127.0.0.1:8000/v1/collections', highlight=False)


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List API keys (ids, names, collections, revoked) — never their secrets."""
    from api.auth import open_key_store

    store = open_key_store(settings().home)
    try:
        keys = [k.to_dict() for k in store.list()]
    finally:
        store.close()
    if as_json:
        emit_json({"data": keys, "count": len(keys)})
        return
    table = Table("key_id", "name", "collections", "status", "last used")
    import datetime as _dt

    for k in keys:
        used = _dt.datetime.fromtimestamp(k["last_used_at"]).isoformat(timespec="seconds") if k["last_used_at"] else "never"
        table.add_row(k["key_id"], k["name"], ", ".join(k["collections"]) if k["collections"] else "all",
                      "revoked" if k["revoked"] else "active", used)
    out.print(table if keys else "no API keys yet: create one with `ragqa keys create NAME`")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (see `ragqa keys list`).")], as_json: JsonOpt = False) -> None:
    """Revoke an API key; requests with it fail from now on."""
    from api.auth import open_key_store

    store = open_key_store(settings().home)
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


# The improve side lives in its own module; it imports the helpers above, so it is attached last.
from api.cli_finetune import adapters_app, feedback_app, finetune_app  # noqa: E402

app.add_typer(finetune_app, name="finetune")
app.add_typer(adapters_app, name="adapters")
app.add_typer(feedback_app, name="feedback")


def main() -> None:
    import warnings

    # Library deprecation notices (e.g. transformers' past_key_values -> cache rename) are for developers;
    # they would land in the middle of a streamed answer. Tests still see them.
    warnings.filterwarnings("ignore", category=FutureWarning)
    app()


if __name__ == "__main__":
    main()
