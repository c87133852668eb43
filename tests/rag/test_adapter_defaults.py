"""Default-adapter pointers: resolution order, rollback, and crash safety of the pointer file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rag.adapter_defaults import (
    DEFAULTS_FILE,
    SHIPPED_ADAPTER,
    AdapterDefaults,
    AdapterDefaultsError,
    AdapterResolver,
    Resolved,
)
from rag.errors import InvalidAdapterError

pytestmark = pytest.mark.unit


def make_adapter(adapters: Path, name: str, **meta) -> None:
    folder = adapters / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "ragqa_adapter.json").write_text(json.dumps({"kind": "sft", **meta}))


@pytest.fixture()
def ws(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "home"
    adapters = home / "adapters"
    for name in ("a", "b", "c"):
        make_adapter(adapters, name, base_model="tiny")
    return home, adapters


def test_resolution_order(ws):
    home, adapters = ws
    resolver = AdapterResolver(home, adapters, "tiny")
    defaults = resolver.defaults
    assert resolver.resolve("docs") == Resolved(None, "none")
    make_adapter(adapters, SHIPPED_ADAPTER, base_model="tiny", shipped=True)
    assert resolver.resolve("docs") == Resolved(SHIPPED_ADAPTER, "shipped")
    defaults.set(None, "a", action="promote")
    assert resolver.resolve("docs") == Resolved("a", "server")
    defaults.set("docs", "b", action="promote")
    assert resolver.resolve("docs") == Resolved("b", "collection")
    assert resolver.resolve("other") == Resolved("a", "server")
    assert resolver.resolve("docs", "c") == Resolved("c", "request")  # a named adapter wins
    assert resolver.resolve("docs", "none") == Resolved(None, "none")  # "none" is the bare model
    assert defaults.defaults() == {"server": "a", "collection:docs": "b"}


def test_shipped_adapter_only_for_its_base_model(ws):
    home, adapters = ws
    make_adapter(adapters, SHIPPED_ADAPTER, base_model="tiny", shipped=True)
    assert AdapterResolver(home, adapters, "another-model").resolve(None) == Resolved(None, "none")
    (adapters / SHIPPED_ADAPTER / "ragqa_adapter.json").write_text(json.dumps({"kind": "sft", "base_model": "tiny"}))
    assert AdapterResolver(home, adapters, "tiny").resolve(None) == Resolved(None, "none")  # not marked shipped


def test_shipped_adapter_only_for_the_styles_it_serves(ws):
    home, adapters = ws
    make_adapter(adapters, SHIPPED_ADAPTER, base_model="tiny", shipped=True, default_styles=["short"])
    resolver = AdapterResolver(home, adapters, "tiny")
    assert resolver.resolve("docs", style="short") == Resolved(SHIPPED_ADAPTER, "shipped")
    assert resolver.resolve("docs", style="full") == Resolved(None, "none")  # the bare model answers full
    assert resolver.resolve("docs") == Resolved(SHIPPED_ADAPTER, "shipped")  # no style: listed as the default
    resolver.defaults.set("docs", "a", action="promote")
    assert resolver.resolve("docs", style="full") == Resolved("a", "collection")  # promoted ones serve every style
    assert resolver.resolve("docs", SHIPPED_ADAPTER, style="full") == Resolved(SHIPPED_ADAPTER, "request")


def test_a_deleted_default_falls_through(ws, caplog):
    home, adapters = ws
    resolver = AdapterResolver(home, adapters, "tiny")
    resolver.defaults.set(None, "a", action="promote")
    resolver.defaults.set("docs", "b", action="promote")
    (adapters / "b" / "adapter_config.json").unlink()
    assert resolver.resolve("docs") == Resolved("a", "server")
    assert "no longer exists" in caplog.text


def test_rollback_walks_back_the_history(ws):
    home, _ = ws
    d = AdapterDefaults(home)
    with pytest.raises(AdapterDefaultsError, match="no previous default"):
        d.rollback("docs")
    d.set("docs", "a", action="promote", details={"candidate_f1": 0.5})
    d.set("docs", "b", action="force")
    assert d.current("docs") == "b"
    assert d.rollback("docs")["adapter"] == "a"
    assert d.current("docs") == "a"
    assert d.rollback("docs")["adapter"] is None
    assert d.current("docs") is None
    log = d.scope("docs")["log"]
    assert [e["action"] for e in log] == ["promote", "force", "rollback", "rollback"]
    assert log[0]["candidate_f1"] == 0.5 and log[1]["previous"] == "a"


def test_names_that_are_paths_are_refused(ws):
    with pytest.raises(InvalidAdapterError):
        AdapterDefaults(ws[0]).set(None, "../etc", action="promote")


def test_a_crash_while_writing_leaves_the_old_pointer(ws, monkeypatch):
    home, adapters = ws
    d = AdapterDefaults(home)
    d.set("docs", "a", action="promote")
    before = (home / DEFAULTS_FILE).read_text()

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        d.set("docs", "b", action="promote")
    monkeypatch.undo()
    assert (home / DEFAULTS_FILE).read_text() == before  # the old file, whole
    assert d.current("docs") == "a"
    assert not list(home.glob(f".{DEFAULTS_FILE}.*.tmp"))  # the half-written file was removed
    # a temp file left by a killed process is ignored; the next write goes through
    (home / f".{DEFAULTS_FILE}.dead.tmp").write_text('{"scopes": ')
    d.set("docs", "b", action="promote")
    assert AdapterResolver(home, adapters, "tiny").resolve("docs") == Resolved("b", "collection")


def test_a_broken_file_is_reported_and_ignored_when_answering(ws, caplog):
    home, adapters = ws
    (home / DEFAULTS_FILE).write_text("{not json")
    with pytest.raises(AdapterDefaultsError, match="fix or delete"):
        AdapterDefaults(home).current(None)
    assert AdapterResolver(home, adapters, "tiny").resolve("docs") == Resolved(None, "none")
    assert "fix or delete" in caplog.text
