"""The adapter registry: trained LoRA adapters under ``$RAGQA_HOME/adapters/NAME``.

Each adapter folder is a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``)
plus ``ragqa_adapter.json``: what it is (sft, reward, dpo, rlhf, rag), the base model it was
trained on, its training options, the hash of its data and its eval metrics. Folders are written
to a temporary name and renamed, so a crash never leaves half an adapter under a real name.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import (
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterRegistryError,
    InvalidAdapterError,
)
from rag.adapter_store import ADAPTER_CONFIG, ADAPTER_META, AdapterStore
from rag.errors import AdapterError

logger = logging.getLogger(__name__)

META_FILE = ADAPTER_META
GENERATOR_KINDS = ("sft", "dpo", "rlhf", "rag")

__all__ = ["AdapterInfo", "AdapterRegistry", "AdapterRegistryError", "GENERATOR_KINDS", "META_FILE"]


@dataclass
class AdapterInfo:
    name: str
    path: Path
    kind: str = "unknown"
    base_model: str | None = None
    created_at: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "base_model": self.base_model,
            "path": str(self.path),
            "created_at": self.created_at,
            "metrics": self.metrics,
            "size_bytes": self.size_bytes,
        }
        if full:
            out["meta"] = self.meta
        return out


class AdapterRegistry:
    """The fine-tune side of :class:`rag.adapter_store.AdapterStore`: adapter details for the CLI,
    staging and atomic commit of new adapters, and :mod:`finetune.errors` types."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.store = AdapterStore(self.root)

    def path(self, name: str) -> Path:
        try:
            return self.store.path(name)
        except AdapterError as exc:  # not a plain folder name
            raise InvalidAdapterError(str(exc)) from exc

    def exists(self, name: str) -> bool:
        return (self.path(name) / ADAPTER_CONFIG).is_file()

    def list(self) -> list[AdapterInfo]:
        return [self.get(name) for name in self.store.names()]

    def get(self, name: str) -> AdapterInfo:
        path = self.path(name)
        if not self.exists(name):
            known = ", ".join(self.store.names()) or "none"
            raise AdapterNotFoundError(f"adapter {name!r} not found in {self.root} (known: {known})")
        meta = self.store.meta(name)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return AdapterInfo(
            name=name,
            path=path,
            kind=meta.get("kind", "unknown"),
            base_model=meta.get("base_model") or self.store.peft_config(name).get("base_model_name_or_path"),
            created_at=meta.get("created_at"),
            metrics=meta.get("metrics", {}),
            meta=meta,
            size_bytes=size,
        )

    def require_generator_adapter(self, name: str) -> AdapterInfo:
        info = self.get(name)
        if info.kind == "reward":
            raise InvalidAdapterError(f"adapter {name!r} is a reward model, not a generator adapter")
        return info

    def delete(self, name: str) -> None:
        self.path(name)  # a plain name, or InvalidAdapterError
        try:
            self.store.delete(name)
        except AdapterError as exc:
            raise AdapterNotFoundError(str(exc)) from exc

    def staging_dir(self, name: str) -> Path:
        """A fresh temporary folder to save adapter ``name`` into before :meth:`commit`."""
        self.path(name)  # refuse a path-like name before any training output is written
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".staging-{name}-{time.time_ns()}"
        tmp.mkdir()
        return tmp

    def commit(self, staging: Path, name: str, meta: dict[str, Any], *, overwrite: bool = False) -> AdapterInfo:
        """Write ``meta`` into ``staging`` and move it to its real name (replacing an old one if allowed)."""
        meta = {"name": name, "created_at": time.time(), **meta}
        self.store.write_meta(staging, meta)
        target = self.path(name)
        if target.exists():
            if not overwrite:
                raise AdapterExistsError(f"adapter {name!r} exists; pass --overwrite or choose another --output")
            old = self.root / f".deleting-{name}-{time.time_ns()}"
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
        return self.get(name)

    def clean_staging(self) -> None:
        for p in self.root.glob(".staging-*") if self.root.exists() else []:
            shutil.rmtree(p, ignore_errors=True)
