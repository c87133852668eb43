"""``ragqa finetune pipeline --config recipe.yaml``: data -> SFT -> preferences -> DPO/RLHF -> gate -> promote.

One line per step on stderr as it starts and ends (with the elapsed time; the trainers and the gate's
evaluation show their own progress bars), then a report table (``--json``: one JSON object). Exit
status: 0 when every step is done or skipped, 1 when the gate refused the adapter (nothing promoted),
2 for a bad recipe or a failed step.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from api.cli.common import JsonOpt, emit_json, err, fail, out, stack


def pipeline_cmd(
    ctx: typer.Context,
    config: Annotated[
        Path, typer.Option("--config", help="Recipe YAML: sections data, sft, prefs, dpo|rlhf, gate, promote.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Run the improvement loop from a recipe: data (synth, feedback or a file) -> sft -> prefs -> dpo or rlhf ->
    gate -> promote. Steps whose adapter exists with the same configuration are skipped (resumable)."""
    from finetune.errors import ConfigError
    from finetune.gate import GateEvaluator
    from finetune.pipeline import Pipeline, load_recipe

    try:
        recipe, text = load_recipe(config)
    except ConfigError as exc:
        fail(str(exc), as_json)
    rag = stack(ctx)
    pipeline = Pipeline(
        recipe,
        rag.finetune_workspace(),
        recipe_path=config.resolve(),
        recipe_text=text,
        evaluator=GateEvaluator(rag.qa, rag.workspace),
        progress=(lambda line: err.print(line, highlight=False)) if not as_json else None,
        show_bars=not as_json,
    )
    if not as_json:
        err.print(f"[bold]pipeline[/] {recipe.name}: {' -> '.join(recipe.steps())}")
    with contextlib.redirect_stdout(sys.stderr):  # trainers print step logs; stdout stays the report
        report = pipeline.run()
    code = 0 if report.ok else (1 if any(s.status == "refused" for s in report.steps) else 2)
    if as_json:
        emit_json(report.to_dict())
        raise typer.Exit(code)
    table = Table("step", "status", "output", "seconds", "details", title=f"pipeline {recipe.name}")
    for s in report.steps:
        details = {k: v for k, v in s.to_dict().items() if k not in ("step", "status", "output", "seconds")}
        table.add_row(
            s.step, s.status, s.output or "-", f"{s.seconds:.1f}", ", ".join(f"{k}={v}" for k, v in details.items())
        )
    out.print(table)
    if report.gate is not None:
        from api.cli.adapters import comparison_table, gate_headline

        out.print(gate_headline(report.gate), highlight=False)
        out.print(comparison_table(report.gate))
    if report.promoted:
        out.print(f"promoted {report.adapter!r}; undo with `ragqa adapters rollback`", highlight=False)
    raise typer.Exit(code)
