"""The shipped reader adapter: a LoRA adapter kept in the repository (``data/adapters/reader``) and
installed by ``ragqa models prepare`` into ``$RAGQA_HOME/adapters/reader``.

It is installed only when its ``ragqa_adapter.json`` names the configured generator as its
``base_model`` (the bundled SmolLM2-135M-Instruct). The installed copy is marked ``"shipped": true``,
which makes it the lowest-priority default of :class:`rag.adapter_defaults.AdapterResolver`: a
promoted collection or server default, or a named adapter, always comes first. Its metadata keeps the
``recipe`` (the recipe file and its sha256) and ``data`` hashes it was trained from (``make adapter``
retrains it from the recipe).

Where the shipped folder is looked for, first found wins: the ``shipped_adapter`` setting
(``RAGQA_SHIPPED_ADAPTER``), ``data/adapters/reader`` of the source tree (a checkout or an editable
install), ``share/ragqa/adapters/reader`` under the installation prefix (a wheel; ``pyproject.toml``
data-files).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.adapters import AdapterRegistry
from finetune.data import file_sha256
from finetune.errors import FinetuneError
from rag.adapter_defaults import SHIPPED_ADAPTER
from rag.adapter_store import ADAPTER_CONFIG, ADAPTER_META

logger = logging.getLogger(__name__)

WEIGHTS = "adapter_model.safetensors"
REPO_DIR = Path(__file__).resolve().parents[1] / "data" / "adapters" / SHIPPED_ADAPTER
PREFIX_DIR = Path(sys.prefix) / "share" / "ragqa" / "adapters" / SHIPPED_ADAPTER


class ShippedAdapterError(FinetuneError):
    """The shipped adapter folder is incomplete or unreadable."""


@dataclass
class InstallReport:
    """What :func:`install_shipped` did: ``installed``, ``up-to-date``, ``skipped`` or ``absent``, and why."""

    status: str
    reason: str
    source: Path | None = None
    adapter: str = SHIPPED_ADAPTER

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "source": str(self.source) if self.source else None,
            "adapter": self.adapter,
        }


def shipped_dir(setting: Path | None = None) -> Path | None:
    """The shipped adapter folder: the setting, else the source tree's, else the installation's (None: none)."""
    candidates = [Path(setting).expanduser()] if setting is not None else [REPO_DIR, PREFIX_DIR]
    for folder in candidates:
        if (folder / ADAPTER_CONFIG).is_file():
            return folder
    return None


def read_shipped(folder: Path) -> dict[str, Any]:
    """The shipped adapter's metadata, checked: PEFT files present, base model, recipe and data hashes recorded."""
    folder = Path(folder)
    missing = [f for f in (ADAPTER_CONFIG, WEIGHTS, ADAPTER_META) if not (folder / f).is_file()]
    if missing:
        raise ShippedAdapterError(
            f"the shipped adapter {folder} lacks {', '.join(missing)}; retrain it with `make adapter`"
        )
    try:
        meta = json.loads((folder / ADAPTER_META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShippedAdapterError(f"cannot read {folder / ADAPTER_META}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ShippedAdapterError(f"{folder / ADAPTER_META} holds no JSON object")
    problems = []
    if not meta.get("base_model"):
        problems.append("'base_model'")
    recipe = meta.get("recipe")
    if not isinstance(recipe, dict) or not recipe.get("sha256"):
        problems.append("'recipe' with its 'sha256'")
    if not isinstance(meta.get("data"), dict) or not meta["data"]:
        problems.append("'data' hashes")
    if problems:
        raise ShippedAdapterError(f"{folder / ADAPTER_META} does not record {', '.join(problems)}")
    return meta


def install_shipped(source: Path | None, adapters_dir: Path, generator_name: str) -> InstallReport:
    """Copy the shipped adapter ``source`` into ``adapters_dir/reader`` when it fits ``generator_name``.

    An adapter the user named ``reader`` themselves (not marked shipped) is never replaced; an
    installed copy with the same weights is left as it is (``up-to-date``)."""
    if source is None:
        return InstallReport("absent", "no shipped adapter in this installation")
    meta = read_shipped(source)
    if meta["base_model"] != generator_name:
        return InstallReport(
            "skipped",
            f"the shipped adapter is for {meta['base_model']!r}; the configured generator is {generator_name!r}",
            source,
        )
    weights_sha = file_sha256(Path(source) / WEIGHTS)
    registry = AdapterRegistry(adapters_dir)
    if registry.exists(SHIPPED_ADAPTER):
        installed = registry.store.meta(SHIPPED_ADAPTER)
        if not installed.get("shipped"):
            return InstallReport(
                "skipped",
                f"an adapter of yours is named {SHIPPED_ADAPTER!r}; the shipped one was not installed",
                source,
            )
        # Up to date only when the weights and every shipped metadata field match: a metadata-only change
        # (e.g. the answer styles it is the default for) must reach existing installs too.
        if installed.get("weights_sha256") == weights_sha and all(installed.get(k) == v for k, v in meta.items()):
            return InstallReport("up-to-date", "the shipped adapter is installed", source)
    staging = registry.staging_dir(SHIPPED_ADAPTER)
    try:
        for item in Path(source).iterdir():
            if item.is_file() and item.name != ADAPTER_META:
                shutil.copy2(item, staging / item.name)
        registry.commit(
            staging,
            SHIPPED_ADAPTER,
            {**meta, "shipped": True, "weights_sha256": weights_sha, "installed_from": str(source)},
            overwrite=True,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("installed the shipped adapter from %s as %r", source, SHIPPED_ADAPTER)
    return InstallReport(
        "installed", f"installed as {SHIPPED_ADAPTER!r}; it answers when no default is promoted", source
    )
