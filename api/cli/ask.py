"""``ragqa ask`` and ``ragqa eval``: answers from a collection, and their quality on SQuAD-format data."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from api.cli.common import AdapterOpt, CollectionOpt, JsonOpt, KOpt, ModeOpt, emit_json, fail, out, settings, stack
from ingest.errors import IngestError


class AnswerStyle(StrEnum):
    """``--style``: the answer styles of :data:`rag.config.QAConfig.answer_style`."""

    short = "short"
    full = "full"


def answer_errors() -> tuple[type[Exception], ...]:
    """Every error root of the packages an answer goes through (retriever, generator, QA, store)."""
    from rag.errors import RagError

    return (IngestError, RagError)


def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: CollectionOpt,
    mode: ModeOpt = None,
    k: KOpt = None,
    adapter: AdapterOpt = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
    style: Annotated[
        AnswerStyle | None,
        typer.Option(
            "--style",
            help="'full': a few sentences with inline citation markers; 'short': a few words "
            "(default: qa.answer_style, 'full').",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from a collection and print the answer with its sources."""

    def on_token(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        rag = stack(ctx)
        with rag.workspace.open(collection, readonly=True) as coll:
            if stream and not as_json:
                sys.stdout.write("answer: ")
            ans = rag.qa.answer(
                coll,
                question,
                mode=mode,
                k=k,
                adapter=adapter,
                on_token=on_token if stream and not as_json else None,
                style=style.value if style is not None else None,
            )
    except answer_errors() as exc:
        fail(str(exc), as_json)
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
    out.print(
        f"[dim]mode {ans.mode} · style {ans.style} · model {ans.model} · adapter {ans.adapter or 'none'} · "
        f"{ans.timings.get('total_s', 0):.2f} s[/]",
        highlight=False,
    )
    print_sources(ans)


def print_sources(ans) -> None:
    """The citations of ``ans`` (a :class:`rag.qa.Answer`), one per line with score and share."""
    out.print("[bold]sources:[/]")
    for c in ans.citations:
        where = c.source + (f" (page {c.metadata['page']})" if "page" in c.metadata else "")
        out.print(
            f" [{c.index}] {c.title} — score {c.score:.3f}, p(z|x) {c.posterior:.2f}, "
            f"share {c.contribution:.2f}\n     [dim]{where}[/]",
            highlight=False,
        )


def eval_cmd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", help="SQuAD-format JSON file.")],
    collection: CollectionOpt,
    mode: ModeOpt = None,
    k: KOpt = None,
    adapter: AdapterOpt = None,
    n: Annotated[
        int | None,
        typer.Option("--n", min=1, help="Answerable questions sampled (fixed seed), plus as many unanswerable."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    calibrate_: Annotated[
        bool, typer.Option("--calibrate", help="Also fit abstention thresholds on this data.")
    ] = False,
    records_out: Annotated[
        Path | None,
        typer.Option("--records", help="Also write every question's answer and signals to this JSONL file."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate on SQuAD-format data: recall@k, EM, F1, abstention, latency, tokens/s."""
    from rag.evaluate import calibrate, compute_metrics, load_squad, run_eval, sample_examples, thresholds

    try:
        examples = sample_examples(load_squad(data), n, seed)
    except ValueError as exc:
        fail(str(exc), as_json)
    if not examples:
        fail(f"{data} holds no questions", as_json)
    rag = stack(ctx)
    try:
        with rag.workspace.open(collection, readonly=True) as coll:
            records = run_eval(rag.qa, coll, examples, mode=mode, k=k, adapter=adapter, progress=not as_json)
    except answer_errors() as exc:
        fail(str(exc), as_json)
    if records_out is not None:  # per-question records, e.g. for a paired comparison of two adapters
        from dataclasses import asdict

        from finetune.data import write_jsonl

        write_jsonl(records_out, [asdict(r) for r in records])
    s = settings(ctx)
    metrics = compute_metrics(records, **thresholds(s.qa)).to_dict()
    # eval answers in the short style; with no --adapter, the default adapter for that style answered
    answered_by = rag.qa.resolve_adapter(collection, adapter, "short")
    metrics.update(
        {
            "mode": mode or s.qa.mode,
            "k": k or s.retriever.k,
            "adapter": answered_by.adapter,
            "adapter_source": answered_by.source,
            "collection": collection,
        }
    )
    if calibrate_:
        metrics["calibration"] = calibrate(records)
    if as_json:
        emit_json(metrics)
        return
    table = Table("metric", "value", title=f"eval {data.name} on {collection!r} ({metrics['mode']}, k={metrics['k']})")
    for key in (
        "n",
        "n_unanswerable",
        "em",
        "f1",
        "recall_at_k",
        "abstain_precision",
        "abstain_recall",
        "abstain_rate_answerable",
        "p50_s",
        "p95_s",
        "tokens_per_s",
    ):
        v = metrics[key]
        table.add_row(key, "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
    out.print(table)
    if calibrate_:
        c = metrics["calibration"]
        out.print(
            f"calibrated thresholds: RAGQA_QA__ABSTAIN_MIN_SCORE={c['min_score']} "
            f"RAGQA_QA__ABSTAIN_MIN_LOGPROB={c['min_logprob']} "
            f"RAGQA_QA__ABSTAIN_MAX_IDK_MARGIN={c['max_idk_margin']}"
        )
