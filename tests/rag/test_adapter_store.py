"""The adapter store: listing, metadata, generator checks, query encoder folder, deletion, and name safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.adapters import AdapterRegistry
from finetune.errors import AdapterNotFoundError as RegistryNotFound
from finetune.errors import InvalidAdapterError as RegistryInvalid
from rag.adapter_store import ADAPTER_META, AdapterStore, check_adapter_name
from rag.errors import AdapterError, AdapterNotFoundError, InvalidAdapterError


def make_adapter(root: Path, name: str, meta: dict | str | None = None, base: str = "base-path") -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 4}))
    if meta is not None:
        (path / ADAPTER_META).write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return path


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    make_adapter(root, "sft-a", {"kind": "sft", "base_model": "tiny"})
    make_adapter(root, "rm", {"kind": "reward", "base_model": "tiny"})
    make_adapter(root, "other", {"kind": "sft", "base_model": "Big-7B"})
    make_adapter(root, "plain")  # no ragqa metadata
    make_adapter(root, "broken", "not json")
    make_adapter(root, ".staging-x-1")  # being written: not an adapter
    (root / "no-config").mkdir()
    return root


class TestNames:
    @pytest.mark.parametrize(
        "bad", ["", ".", "..", "../x", "a/b", "a\\b", "/etc", "..\\..\\x", ".hidden", " x", "x\0y", "x" * 129]
    )
    def test_path_like_names_are_refused(self, root: Path, bad: str) -> None:
        store = AdapterStore(root)
        with pytest.raises(InvalidAdapterError, match="invalid adapter name"):
            store.path(bad)
        with pytest.raises(InvalidAdapterError):
            store.validate_for_generator(bad, "tiny")
        with pytest.raises(InvalidAdapterError):
            store.delete(bad)
        with pytest.raises(RegistryInvalid):
            AdapterRegistry(root).get(bad)
        with pytest.raises(RegistryInvalid):
            AdapterRegistry(root).staging_dir(bad)

    @pytest.mark.parametrize("good", ["sft-a", "a.b_c-1", "x" * 128, "v1..2"])
    def test_plain_names_resolve_inside_the_folder(self, root: Path, good: str) -> None:
        assert check_adapter_name(good) == good
        assert AdapterStore(root).path(good) == root / good

    def test_symlink_out_of_the_folder_is_refused(self, root: Path, tmp_path: Path) -> None:
        (tmp_path / "elsewhere").mkdir()
        (root / "link").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(InvalidAdapterError, match="outside"):
            AdapterStore(root).path("link")


class TestStore:
    def test_list_and_meta(self, root: Path) -> None:
        store = AdapterStore(root)
        assert store.names() == ["broken", "other", "plain", "rm", "sft-a"]
        entries = {e.name: e for e in store.list()}
        assert entries["sft-a"].kind == "sft" and entries["sft-a"].base_model == "tiny"
        assert entries["plain"].meta == {} and entries["plain"].base_model == "base-path"
        assert entries["broken"].meta == {} and entries["broken"].kind == "unknown"  # unreadable: listed without it
        assert AdapterStore(root / "missing").names() == []

    def test_validate_for_generator(self, root: Path) -> None:
        store = AdapterStore(root)
        assert store.validate_for_generator("sft-a", "tiny") == root / "sft-a"
        assert store.validate_for_generator("plain", "tiny") == root / "plain"
        with pytest.raises(AdapterNotFoundError, match=r"not found .*\(known: broken, other, plain, rm, sft-a\)"):
            store.validate_for_generator("nope", "tiny")
        with pytest.raises(InvalidAdapterError, match="reward model"):
            store.validate_for_generator("rm", "tiny")
        with pytest.raises(InvalidAdapterError, match="Big-7B"):
            store.validate_for_generator("other", "tiny")
        assert issubclass(AdapterNotFoundError, AdapterError) and issubclass(InvalidAdapterError, AdapterError)

    def test_query_encoder_folder(self, root: Path) -> None:
        store = AdapterStore(root)
        path = make_adapter(root, "rag-a", {"kind": "rag", "query_encoder": "query_encoder"})
        assert store.query_encoder("rag-a") is None  # named but not there
        (path / "query_encoder").mkdir()
        assert store.query_encoder("rag-a") == path / "query_encoder"
        assert store.query_encoder("sft-a") is None
        make_adapter(root, "sneaky", {"kind": "rag", "query_encoder": "../sft-a"})
        assert store.query_encoder("sneaky") is None  # never a folder outside the adapter

    def test_write_meta_and_delete(self, root: Path) -> None:
        store = AdapterStore(root)
        store.write_meta(root / "plain", {"kind": "sft", "note": "é"})
        assert store.meta("plain") == {"kind": "sft", "note": "é"}
        assert not [p for p in (root / "plain").iterdir() if p.name.startswith(".")]  # no temp file left
        store.delete("plain")
        assert "plain" not in store.names() and not any(p.name.startswith(".deleting") for p in root.iterdir())
        with pytest.raises(AdapterNotFoundError):
            store.delete("plain")

    def test_registry_wraps_the_store(self, root: Path) -> None:
        reg = AdapterRegistry(root)
        assert [a.name for a in reg.list()] == AdapterStore(root).names()
        assert reg.get("sft-a").kind == "sft"
        with pytest.raises(RegistryNotFound, match="known:"):
            reg.get("nope")
        with pytest.raises(RegistryInvalid, match="reward model"):
            reg.require_generator_adapter("rm")
        staging = reg.staging_dir("new")
        (staging / "adapter_config.json").write_text("{}")
        info = reg.commit(staging, "new", {"kind": "dpo"})
        assert info.kind == "dpo" and info.meta["name"] == "new"
        with pytest.raises(RegistryNotFound):
            reg.delete("ghost")
