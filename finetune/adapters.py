"""The adapter registry: trained LoRA adapters under ``$RAGQA_HOME/adapters/NAME``.

Each adapter folder is a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``)
plus ``ragqa_adapter.json``: what it is (sft, reward, dpo, rlhf, rag), the base model it was
trained on, its training options, the hash of its data and its eval metrics. Folders are written
to a temporary name and renamed, so a crash never leaves half an adapter under a real name.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.generator import ADAPTER_META

logger = logging.getLogger(__name__)

META_FILE = ADAPTER_META
GENERATOR_KINDS = ("sft", "dpo", "rlhf", "rag")


class AdapterRegistryError(ValueError):
    """An adapter is missing, exists already, or is of the wrong kind."""


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
            "name": self.name, "kind": self.kind, "base_model": self.base_model, "path": str(self.path),
            "created_at": self.created_at, "metrics": self.metrics, "size_bytes": self.size_bytes,
        }
        if full:
            out["meta"] = self.meta
        return out


class AdapterRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return (self.path(name) / "adapter_config.json").exists()

    def list(self) -> list[AdapterInfo]:
        if not self.root.exists():
            return []
        return [self.get(p.name) for p in sorted(self.root.iterdir())
                if p.is_dir() and not p.name.startswith(".") and (p / "adapter_config.json").exists()]

    def get(self, name: str) -> AdapterInfo:
        path = self.path(name)
        if not (path / "adapter_config.json").exists():
            known = ", ".join(a.name for a in self.list()) or "none"
            raise AdapterRegistryError(f"adapter {name!r} not found in {self.root} (known: {known})")
        meta: dict[str, Any] = {}
        if (path / META_FILE).exists():
            try:
                meta = json.loads((path / META_FILE).read_text())
            except json.JSONDecodeError:
                logger.warning("unreadable %s in %s", META_FILE, path)
        peft_cfg = json.loads((path / "adapter_config.json").read_text())
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return AdapterInfo(
            name=name, path=path, kind=meta.get("kind", "unknown"),
            base_model=meta.get("base_model") or peft_cfg.get("base_model_name_or_path"),
            created_at=meta.get("created_at"), metrics=meta.get("metrics", {}), meta=meta, size_bytes=size,
        )

    def require_generator_adapter(self, name: str) -> AdapterInfo:
        info = self.get(name)
        if info.kind == "reward":
            raise AdapterRegistryError(f"adapter {name!r} is a reward model, not a generator adapter")
        return info

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not path.exists():
            raise AdapterRegistryError(f"adapter {name!r} not found in {self.root}")
        trash = self.root / f".deleting-{name}-{time.time_ns()}"
        path.rename(trash)  # atomic: the name is gone at once, the files follow
        shutil.rmtree(trash, ignore_errors=True)

    def staging_dir(self, name: str) -> Path:
        """A fresh temporary folder to save adapter ``name`` into before :meth:`commit`."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".staging-{name}-{time.time_ns()}"
        tmp.mkdir()
        return tmp

    def commit(self, staging: Path, name: str, meta: dict[str, Any], *, overwrite: bool = False) -> AdapterInfo:
        """Write ``meta`` into ``staging`` and move it to its real name (replacing an old one if allowed)."""
        meta = {"name": name, "created_at": time.time(), **meta}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        target = self.path(name)
        if target.exists():
            if not overwrite:
                raise AdapterRegistryError(f"adapter {name!r} exists; pass --overwrite or choose another --output")
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
