"""``ragqa finetune ...``, ``ragqa adapters ...`` and ``ragqa feedback ...``: the improve side of the CLI.

Same shape as the rest of the CLI (see :mod:`api.cli`): options or ``--config file.yaml``, progress on
stderr, a summary at the end, ``--json`` for one JSON object on stdout, exit status 2 on bad input.
"""

from __future__ import annotations

import typer

finetune_app = typer.Typer(help="Fine-tune the generator with LoRA: sft, reward, rlhf, dpo, rag; synth builds training data.", no_args_is_help=True)
adapters_app = typer.Typer(help="List, show and delete trained LoRA adapters.", no_args_is_help=True)
feedback_app = typer.Typer(help="Turn feedback left through the REST API into training files.", no_args_is_help=True)

from api.cli import JsonOpt, emit_json, err, fail, out, settings  # noqa: E402,F401  (api.cli attaches these apps last)
