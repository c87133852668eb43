"""The per-machine embedder cache: shared by workspaces, safe under concurrent builds, with a fallback."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from ingest import embedder as E
from ingest import onnx_export
from ingest.config import EmbedderConfig, IngestConfig
from ingest.workspace import CACHE_DIR_ENV, Workspace, user_cache_dir
from tests.conftest import ROOT


def _onnx_config(model: pathlib.Path, **kw) -> IngestConfig:
    return IngestConfig(embedder=EmbedderConfig(model=str(model), backend="onnx-int8", device="cpu"), **kw)


def _no_export(*_a, **_k):
    raise AssertionError("exported again although a cache holds the model")


@pytest.mark.unit
class TestUserCacheDir:
    def test_order_setting_env_xdg_home(self, tmp_path, monkeypatch):
        monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert user_cache_dir() == tmp_path / "xdg" / "ragqa"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert user_cache_dir() == pathlib.Path.home() / ".cache" / "ragqa"
        monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env"))
        assert user_cache_dir() == tmp_path / "env"
        assert user_cache_dir(tmp_path / "set") == tmp_path / "set"


@pytest.mark.unit
class TestSharedCache:
    def test_two_fresh_workspaces_share_one_build(self, tiny_st_model, tmp_path, monkeypatch):
        cache = tmp_path / "cache"
        monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
        first = Workspace(tmp_path / "home-a", _onnx_config(tiny_st_model)).embedder
        assert isinstance(first, E.OnnxEmbedder) and first.model_file is not None
        assert first.model_file.is_relative_to(cache / "onnx")
        assert not (tmp_path / "home-a" / "models").exists()

        monkeypatch.setattr(onnx_export, "_export_raw", _no_export)
        monkeypatch.setattr(onnx_export, "_quantize", _no_export)
        second = Workspace(tmp_path / "home-b", _onnx_config(tiny_st_model)).embedder
        assert isinstance(second, E.OnnxEmbedder) and second.model_file == first.model_file
        assert not (tmp_path / "home-b" / "models").exists()
        assert (second.embed_documents(["a shared cache"]) == first.embed_documents(["a shared cache"])).all()

    def test_setting_beats_env(self, tiny_st_model, tmp_path, monkeypatch):
        monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env-cache"))
        ws = Workspace(tmp_path / "home", _onnx_config(tiny_st_model, cache_dir=tmp_path / "set-cache"))
        assert ws.cache_dir == tmp_path / "set-cache"
        assert ws.embedder.model_file.is_relative_to(tmp_path / "set-cache")
        assert not (tmp_path / "env-cache").exists()

    def test_old_workspace_artefacts_are_used(self, tiny_st_model, tmp_path, monkeypatch):
        home = tmp_path / "old-home"
        legacy = onnx_export.build_onnx(tiny_st_model, home / "models", "int8", 128)  # where older versions built
        monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
        monkeypatch.setattr(onnx_export, "_export_raw", _no_export)
        monkeypatch.setattr(onnx_export, "_quantize", _no_export)
        assert Workspace(home, _onnx_config(tiny_st_model)).embedder.model_file == legacy

    def test_unwritable_cache_falls_back_to_the_workspace(self, tiny_st_model, tmp_path, monkeypatch, caplog):
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))  # cannot be created, even by root
        ws = Workspace(tmp_path / "home", _onnx_config(tiny_st_model))
        with caplog.at_level(logging.WARNING, logger="ingest.onnx_export"):
            emb = ws.embedder
        assert emb.model_file.is_relative_to(ws.models_dir / "onnx")
        assert emb.embed_documents(["still works"]).shape == (1, emb.dim)
        assert any("not writable" in r.getMessage() and str(ws.models_dir) in r.getMessage() for r in caplog.records)


_BUILDER = textwrap.dedent(
    """
    import json, pathlib, sys, time
    from ingest import onnx_export

    model, cache, counter, me, other = sys.argv[1:6]
    real_export = onnx_export._export_raw

    def counted_export(*a, **k):
        with open(counter, "a") as fh:
            fh.write(me + "\\n")
        time.sleep(1.0)  # widen the window in which the other process would start a second export
        return real_export(*a, **k)

    onnx_export._export_raw = counted_export
    pathlib.Path(cache, me + ".ready").parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(cache, me + ".ready").touch()
    deadline = time.monotonic() + 120
    while not pathlib.Path(cache, other + ".ready").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    out = onnx_export.build_onnx(model, pathlib.Path(cache), "int8", 128)
    print(json.dumps({"file": str(out)}))
    """
)


@pytest.mark.integration
def test_concurrent_first_builds_export_once(tiny_st_model, tmp_path):
    """Two processes that start building the same artefact at the same moment: one exports, the other waits
    for it and uses its files; no temporary or half-written file is left."""
    cache, counter = tmp_path / "cache", tmp_path / "exports.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, str(tiny_st_model), str(cache), str(counter), me, other],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for me, other in (("p1", "p2"), ("p2", "p1"))
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    files = {json.loads(out.strip().splitlines()[-1])["file"] for out, _ in outs}
    assert len(files) == 1
    assert counter.read_text().split() in (["p1"], ["p2"])
    folder = pathlib.Path(files.pop()).parent
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    import onnxruntime as ort

    ort.InferenceSession(str(onnx_export.onnx_path(folder, "int8")), providers=["CPUExecutionProvider"])
    ort.InferenceSession(str(onnx_export.onnx_path(folder, "fp32")), providers=["CPUExecutionProvider"])


_INGESTER = textwrap.dedent(
    """
    import json, pathlib, sys
    from ingest.config import EmbedderConfig, IngestConfig, LoaderConfig
    from ingest.workspace import Workspace
    model, home, cache, docs = sys.argv[1:5]
    cfg = IngestConfig(
        embedder=EmbedderConfig(model=model, backend="onnx-int8", device="cpu"),
        loader=LoaderConfig(isolate=False),
        cache_dir=cache,
    )
    report = Workspace(pathlib.Path(home), cfg).ingest([docs], "c")
    print(json.dumps({"chunks": report.chunks, "torch": "torch" in sys.modules,
                      "transformers": "transformers" in sys.modules}))
    """
)


@pytest.mark.integration
def test_an_ingest_on_a_prepared_onnx_cache_imports_neither_torch_nor_transformers(tiny_st_model, tmp_path):
    """A CLI ingest on the ONNX path: the embedder and the chunker's token counts need only onnxruntime and the
    Rust tokenizer once the per-machine cache is prepared (torch and transformers are ~2-3 s of start-up)."""
    cache = tmp_path / "cache"
    prepared = Workspace(
        tmp_path / "prep", _onnx_config(tiny_st_model, cache_dir=str(cache))
    ).embedder  # prepares the cache
    assert isinstance(prepared, E.OnnxEmbedder)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text(f"Document {i} talks about topic {i}. " * 40, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-c", _INGESTER, str(tiny_st_model), str(tmp_path / "home"), str(cache), str(docs)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"chunks": got["chunks"], "torch": False, "transformers": False} and got["chunks"] >= 3
