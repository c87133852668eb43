"""Command-line options generated from a fine-tune job model (trl's ``make_parser`` pattern).

Each option is declared once, as a field of a job model in :mod:`finetune.config` with its help text;
:func:`job_options` walks the fields (nested models such as ``lora`` and ``train`` included) and
:func:`command_signature` turns them into Typer options. Adding a field to a job model is enough to
get its command-line option. Values are validated by the job model itself (:func:`finetune.config.load_job`),
so a bad value reads the same from the command line and from ``--config file.yaml``.

Flag names: ``--field-name`` for a job's own fields, ``--lora-<name>`` for LoRA fields and the bare
``--<name>`` for training-loop fields, except for the short or historical names in :data:`FLAG_NAMES`.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

#: Flags that differ from the naming rule (kept as the README documents them).
FLAG_NAMES: dict[str, tuple[str, ...]] = {
    "output": ("--output", "-o"),
    "collection": ("--collection", "-c"),
    "k": ("-k",),
    "train.learning_rate": ("--lr",),
    "lora.target_modules": ("--target-modules",),
    "lora.top_layers": ("--top-layers",),
}
#: Nested models whose fields get flags without the model's name as a prefix.
UNPREFIXED = frozenset({"train"})
#: Flags the commands declare themselves.
RESERVED = frozenset({"--config", "--accelerate-config", "--json", "--help"})


@dataclass(frozen=True)
class JobOption:
    """One command-line option of a job model's field."""

    key: str  #: dotted field path, as :func:`finetune.config.load_job` takes it (``lora.r``)
    flags: tuple[str, ...]
    kind: type  #: what the command line parses: int, float, str, bool or Path
    help: str
    is_list: bool = False  #: a list field, given comma-separated on the command line

    @property
    def param(self) -> str:
        """The Python parameter name of the option (``lora__r``)."""
        return self.key.replace(".", "__")

    def value(self, raw: Any) -> Any:
        """The command-line value as the job model takes it (None: not given)."""
        if raw is None or not self.is_list:
            return raw
        return [item.strip() for item in str(raw).split(",") if item.strip()]


def _unwrap(annotation: Any) -> tuple[Any, list[str] | None, bool]:
    """(command-line type, Literal choices or None, is a list) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
        return str, None, False
    if origin is Literal:
        return str, [str(a) for a in typing.get_args(annotation)], False
    if origin in (list, tuple, set, frozenset):
        return str, None, True
    return annotation, None, False


def _default_text(field: Any) -> str | None:
    if field.default is not PydanticUndefined:
        default = field.default
    elif field.default_factory is not None:
        default = field.default_factory()
    else:
        return None
    if default is None:
        return None
    if isinstance(default, (list, tuple)):
        return ",".join(map(str, default))
    return str(default).lower() if isinstance(default, bool) else str(default)


def _help(name: str, field: Any, choices: list[str] | None, is_list: bool) -> str:
    text = (field.description or name.replace("_", " ").capitalize() + ".").strip()
    notes = []
    if choices:
        notes.append("one of " + ", ".join(choices))
    if is_list:
        notes.append("comma-separated")
    default = _default_text(field)
    if default is not None:
        notes.append(f"default {default}")
    elif field.is_required():
        notes.append("required, here or in --config")
    return f"{text} ({'; '.join(notes)})" if notes else text


def _flags(key: str) -> tuple[str, ...]:
    if key in FLAG_NAMES:
        return FLAG_NAMES[key]
    *parents, leaf = key.split(".")
    parts = [p for p in parents if p not in UNPREFIXED] + [leaf]
    return ("--" + "-".join(parts).replace("_", "-"),)


def job_options(model: type[BaseModel], prefix: str = "") -> list[JobOption]:
    """The options of every field of ``model``, nested models flattened into dotted keys."""
    options: list[JobOption] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation, choices, is_list = _unwrap(field.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            options.extend(job_options(annotation, prefix=f"{key}."))
            continue
        kind = annotation if annotation in (int, float, bool, Path) else str
        options.append(JobOption(key, _flags(key), kind, _help(name, field, choices, is_list), is_list))
    if not prefix:  # the job's own fields first (required ones leading), then the nested groups
        options.sort(
            key=lambda o: ("." in o.key, not model.model_fields[o.key].is_required() if "." not in o.key else 0)
        )
        _check_unique(model, options)
    return options


def _check_unique(model: type[BaseModel], options: list[JobOption]) -> None:
    seen: dict[str, str] = {flag: "the command" for flag in RESERVED}
    for opt in options:
        for flag in opt.flags:
            if flag in seen:
                raise TypeError(
                    f"{model.__name__}: option {flag} of field {opt.key!r} clashes with {seen[flag]}; "
                    "add the field to api.cli.job_options.FLAG_NAMES with another name"
                )
            seen[flag] = f"field {opt.key!r}"


def parameters(options: list[JobOption]) -> list[inspect.Parameter]:
    """Typer parameters of the options: every one optional (None: keep the config file's or the default)."""
    params = []
    for opt in options:
        flags = opt.flags
        if opt.kind is bool:  # --flag / --no-flag, so a config file's true can be switched off too
            flags = (f"{flags[0]}/--no-{flags[0][2:]}", *flags[1:])
        # built at run time from the option's type, which mypy cannot follow
        option = typer.Option(*flags, help=opt.help, show_default=False)
        annotation = Annotated[opt.kind | None, option]  # type: ignore[name-defined]
        params.append(inspect.Parameter(opt.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return params


def with_signature(func: Any, params: list[inspect.Parameter]) -> Any:
    """``func`` with the signature Typer reads its options from."""
    func.__signature__ = inspect.Signature(params)
    func.__annotations__ = {p.name: p.annotation for p in params}
    return func


def overrides(options: list[JobOption], values: dict[str, Any]) -> dict[str, Any]:
    """Dotted-key overrides for :func:`finetune.config.load_job` from the command's keyword arguments."""
    return {opt.key: opt.value(values.get(opt.param)) for opt in options}
