"""Default adapters: which LoRA adapter answers when a request names none.

Resolution, first match wins:

1. the request names an adapter: that one; ``"none"`` (:data:`NO_ADAPTER`) means the bare model;
2. the collection's default (``ragqa adapters promote NAME -c COLLECTION``);
3. the server-wide default (``ragqa adapters promote NAME --server``);
4. the shipped default: the adapter ``reader`` installed by ``ragqa models prepare`` for the bundled
   base model (its ``ragqa_adapter.json`` says ``"shipped": true`` and names the configured generator);
5. none: the bare model.

The pointers live in ``$RAGQA_HOME/adapter_defaults.json``: per scope (``server`` or
``collection:NAME``) the ``current`` adapter, a ``stack`` of the previous ones (what
``ragqa adapters rollback`` returns to) and a ``log`` of every change with its evaluation. The file is
replaced atomically (temporary file, fsync, ``os.replace``) under a lock file, so a crash between
two writes leaves either the old or the new pointers, never a broken file. A pointer to an adapter
that has since been deleted is skipped (logged) and resolution goes on to the next level.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.adapter_store import AdapterStore, check_adapter_name
from rag.errors import RagError

logger = logging.getLogger(__name__)

#: the adapter name that asks for the bare model (no adapter), in the CLI and the API
NO_ADAPTER = "none"
#: the name the shipped reader adapter is installed under
SHIPPED_ADAPTER = "reader"
DEFAULTS_FILE = "adapter_defaults.json"
SERVER_SCOPE = "server"
#: most log entries kept per scope (the oldest go first)
MAX_LOG = 200
#: most previous defaults kept for rollback per scope
MAX_STACK = 50


class AdapterDefaultsError(RagError):
    """The defaults file cannot be read or the change is impossible (e.g. nothing to roll back to)."""


def scope_key(collection: str | None) -> str:
    """``"server"`` for ``None``, else ``"collection:NAME"``."""
    return SERVER_SCOPE if collection is None else f"collection:{collection}"


def scope_label(key: str) -> str:
    return "server" if key == SERVER_SCOPE else f"collection {key.partition(':')[2]!r}"


@dataclass(frozen=True)
class Resolved:
    """The adapter that answers (``None``: the bare model) and why: ``request``, ``collection``,
    ``server``, ``shipped`` or ``none``."""

    adapter: str | None
    source: str


class AdapterDefaults:
    """The default-adapter pointers of one workspace (``$RAGQA_HOME/adapter_defaults.json``)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.path = self.home / DEFAULTS_FILE
        self._lock_path = self.home / f".{DEFAULTS_FILE}.lock"

    # -- reading --------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """The whole file: ``{"version": 1, "scopes": {key: {"current", "stack", "log"}}}`` (empty when absent)."""
        if not self.path.is_file():
            return {"version": 1, "scopes": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AdapterDefaultsError(
                f"cannot read {self.path}: {exc}; fix or delete the file (defaults then fall back to the shipped one)"
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("scopes"), dict):
            raise AdapterDefaultsError(f"{self.path} is not a defaults file; delete it to start over")
        return data

    def scope(self, collection: str | None) -> dict[str, Any]:
        """One scope's record: ``current`` (or None), ``stack`` and ``log``."""
        return _scope(self.read(), scope_key(collection))

    def current(self, collection: str | None) -> str | None:
        """The default set for ``collection`` (``None``: the server-wide one), or None when unset."""
        return self.scope(collection).get("current")

    def defaults(self) -> dict[str, str]:
        """Every scope key with a current default -> that adapter."""
        return {k: v["current"] for k, v in self.read()["scopes"].items() if isinstance(v, dict) and v.get("current")}

    # -- changing -----------------------------------------------------------------------------
    def set(
        self, collection: str | None, adapter: str | None, *, action: str, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Make ``adapter`` the default of the scope (the old one goes on the rollback stack); returns the log entry."""
        if adapter is not None:
            check_adapter_name(adapter)
        key = scope_key(collection)
        with self._locked() as data:
            rec = _scope(data, key)
            previous = rec.get("current")
            rec["stack"] = (rec["stack"] + [previous])[-MAX_STACK:]
            rec["current"] = adapter
            entry = {"at": time.time(), "action": action, "adapter": adapter, "previous": previous, **(details or {})}
            rec["log"] = (rec["log"] + [entry])[-MAX_LOG:]
            data["scopes"][key] = rec
        logger.info("default adapter of %s: %s -> %s (%s)", scope_label(key), previous, adapter, action)
        return entry

    def rollback(self, collection: str | None) -> dict[str, Any]:
        """Return the scope to its previous default; returns the log entry. Raises when there is none."""
        key = scope_key(collection)
        with self._locked() as data:
            rec = _scope(data, key)
            if not rec["stack"]:
                raise AdapterDefaultsError(
                    f"the {scope_label(key)} has no previous default adapter to roll back to "
                    "(promote one first with `ragqa adapters promote NAME`)"
                )
            previous = rec["stack"].pop()
            entry = {"at": time.time(), "action": "rollback", "adapter": previous, "previous": rec.get("current")}
            rec["current"] = previous
            rec["log"] = (rec["log"] + [entry])[-MAX_LOG:]
            data["scopes"][key] = rec
        logger.info("default adapter of %s rolled back to %s", scope_label(key), previous)
        return entry

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under an exclusive lock; the new content is written atomically on exit."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self.read()
                yield data
                self._write(data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{DEFAULTS_FILE}.", suffix=".tmp", dir=self.home)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(data, indent=2, default=str))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(self.home, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def _scope(data: dict[str, Any], key: str) -> dict[str, Any]:
    rec = data["scopes"].get(key)
    if not isinstance(rec, dict):
        rec = {}
    return {
        "current": rec.get("current"),
        "stack": list(rec.get("stack") or []),
        "log": list(rec.get("log") or []),
    }


class AdapterResolver:
    """Which adapter answers a request: see the module docstring for the order."""

    def __init__(self, home: Path, adapters_dir: Path, generator_name: str) -> None:
        self.defaults = AdapterDefaults(home)
        self.store = AdapterStore(adapters_dir)
        self.generator_name = str(generator_name)

    def shipped(self, style: str | None = None) -> str | None:
        """The installed shipped adapter when it was made for the configured generator, else None.

        ``style``: the answer style of the request. A shipped adapter whose metadata lists
        ``default_styles`` is the default only for those styles (the others get the bare model), so
        an adapter is never the default where it was measured to answer worse than the bare model.
        """
        if not self.store.exists(SHIPPED_ADAPTER):
            return None
        meta = self.store.meta(SHIPPED_ADAPTER)
        if not meta.get("shipped") or meta.get("base_model") != self.generator_name:
            return None
        styles = meta.get("default_styles")
        if style is not None and isinstance(styles, list) and style not in styles:
            return None
        return SHIPPED_ADAPTER

    def resolve(self, collection: str | None, requested: str | None = None, style: str | None = None) -> Resolved:
        if requested == NO_ADAPTER:
            return Resolved(None, "none")
        if requested:
            return Resolved(requested, "request")
        try:
            data = self.defaults.read()
        except AdapterDefaultsError as exc:
            logger.warning("%s", exc)
            data = {"scopes": {}}
        keys = ([scope_key(collection)] if collection is not None else []) + [SERVER_SCOPE]
        for key in keys:
            name = _scope(data, key).get("current")
            if not name:
                continue
            if self.store.exists(name):
                return Resolved(name, "server" if key == SERVER_SCOPE else "collection")
            logger.warning("default adapter %r of the %s no longer exists; skipped", name, scope_label(key))
        shipped = self.shipped(style)
        if shipped is not None:
            return Resolved(shipped, "shipped")
        return Resolved(None, "none")
