"""The adapter store: the one place that knows the adapter folder format.

``<adapters_dir>/<name>/`` holds a PEFT LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``) and ``ragqa_adapter.json``, the metadata ragqa writes: ``kind``
(sft, dpo, rlhf, rag, or ``reward`` for a reward model that is no generator adapter), the
``base_model`` it was trained on, its options and metrics, and for a ``rag`` adapter trained with
its query encoder the ``query_encoder`` subfolder. Folders whose name starts with a dot (an
adapter still being written or deleted) are not adapters.

Adapter names are plain folder names (:data:`NAME_RE`: a letter or digit, then letters, digits, ``.``,
``_`` or ``-``): no path separator, not ``.``/``..``, no leading dot, never absolute, so a name never
resolves outside the adapters folder. A request names an adapter; it never passes a path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import AdapterNotFoundError, InvalidAdapterError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"  # written by PEFT
ADAPTER_META = "ragqa_adapter.json"  # written by ragqa next to the PEFT files
REWARD_KIND = "reward"
MAX_NAME_CHARS = 128
#: what an adapter name may look like (the folder's name under the adapters folder)
NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}")


def check_adapter_name(name: str) -> str:
    """``name`` when it is a plain folder name; else :class:`rag.errors.InvalidAdapterError`."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise InvalidAdapterError(
            f"invalid adapter name {name!r}: use a plain folder name (letters, digits, '.', '_' or '-'; "
            "no path separators, no leading '.')"
        )
    return name


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter folder: its name, path, ragqa metadata (``{}`` when absent or unreadable) and base model."""

    name: str
    path: Path
    meta: dict[str, Any]
    base_model: str | None

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "unknown"))


class AdapterStore:
    """The adapters under one folder (``$RAGQA_HOME/adapters``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- names and paths ------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """The folder of adapter ``name`` (it need not exist). Refuses names that are not plain folder names."""
        path = self.root / check_adapter_name(name)
        if path.resolve().parent != self.root.resolve():  # belt and braces: never leave the adapters folder
            raise InvalidAdapterError(f"invalid adapter name {name!r}: it resolves outside {self.root}")
        return path

    def exists(self, name: str) -> bool:
        return (self.path(name) / ADAPTER_CONFIG).is_file()

    def names(self) -> list[str]:
        """The adapters, sorted: visible folders holding ``adapter_config.json``."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and NAME_RE.fullmatch(p.name) and (p / ADAPTER_CONFIG).is_file()
        )

    def list(self) -> list[AdapterEntry]:
        """Every adapter with its metadata, sorted by name."""
        return [self.entry(name) for name in self.names()]

    def entry(self, name: str) -> AdapterEntry:
        """Adapter ``name`` with its metadata; :class:`rag.errors.AdapterNotFoundError` when absent."""
        path = self.require(name)
        meta = self.meta(name)
        base = meta.get("base_model") or self.peft_config(name).get("base_model_name_or_path")
        return AdapterEntry(name=name, path=path, meta=meta, base_model=base)

    def require(self, name: str) -> Path:
        """The folder of adapter ``name``; :class:`rag.errors.AdapterNotFoundError` (naming the others) if absent."""
        path = self.path(name)
        if not (path / ADAPTER_CONFIG).is_file():
            known = ", ".join(self.names()) or "none"
            raise AdapterNotFoundError(f"adapter {name!r} not found in {self.root} (known: {known})")
        return path

    # -- metadata ---------------------------------------------------------------------------
    def meta(self, name: str) -> dict[str, Any]:
        """``ragqa_adapter.json`` of adapter ``name``; ``{}`` when absent, unreadable or not an object (logged)."""
        return _read_object(self.path(name) / ADAPTER_META)

    def peft_config(self, name: str) -> dict[str, Any]:
        """``adapter_config.json`` of adapter ``name``; ``{}`` when absent, unreadable or not an object (logged)."""
        return _read_object(self.path(name) / ADAPTER_CONFIG)

    @staticmethod
    def write_meta(folder: Path, meta: dict[str, Any]) -> None:
        """Write ``meta`` as ``ragqa_adapter.json`` into ``folder`` (a staging folder, or an adapter's), atomically."""
        folder = Path(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{ADAPTER_META}.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(meta, indent=2, default=str))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / ADAPTER_META)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def query_encoder(self, name: str) -> Path | None:
        """The query encoder trained with adapter ``name`` (``ragqa finetune rag --train-query-encoder``), or None."""
        sub = self.meta(name).get("query_encoder")
        if not sub:
            return None
        folder = self.path(name) / str(sub)
        inside = folder.resolve().is_relative_to(self.path(name).resolve())
        return folder if inside and folder.is_dir() else None

    # -- checks -----------------------------------------------------------------------------
    def validate_for_generator(self, name: str, generator_name: str) -> Path:
        """The folder of ``name`` when it can serve the generator ``generator_name``.

        Raises :class:`rag.errors.AdapterNotFoundError` when it does not exist and
        :class:`rag.errors.InvalidAdapterError` for a reward model or an adapter of another base model
        (per its ``ragqa_adapter.json``; an adapter without one is not checked here).
        """
        path = self.require(name)
        meta = self.meta(name)
        if meta.get("kind") == REWARD_KIND:
            raise InvalidAdapterError(
                f"adapter {name!r} is a reward model (for `ragqa finetune rlhf`), not a generator adapter"
            )
        base = meta.get("base_model")
        if base and base != generator_name:
            raise InvalidAdapterError(
                f"adapter {name!r} was trained on the generator {base!r}, but the configured generator is "
                f"{generator_name!r}; set RAGQA_GENERATOR__MODEL to {base!r} or train a new adapter"
            )
        return path

    # -- removal ----------------------------------------------------------------------------
    def delete(self, name: str) -> None:
        """Remove adapter ``name``: renamed to a hidden name first (atomic), then its files go."""
        path = self.path(name)
        if not path.exists():
            raise AdapterNotFoundError(f"adapter {name!r} not found in {self.root}")
        trash = self.root / f".deleting-{name}-{time.time_ns()}"
        path.rename(trash)  # atomic: the name is gone at once, the files follow
        shutil.rmtree(trash, ignore_errors=True)


def _read_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        logger.warning("%s holds no JSON object; ignored", path)
        return {}
    return data
