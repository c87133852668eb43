"""Loaders in a worker process: same documents as in-process, and a runaway file fails alone with its reason."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig, LoaderConfig
from ingest.errors import EmptyDocumentError, LoaderError, UnsupportedFileError
from ingest.loaders import load_file
from ingest.loaders.isolation import LoaderPool
from ingest.workspace import Workspace
from tests.ingest.test_loaders import make_docx, make_pdf

pytestmark = pytest.mark.integration  # starts loader processes

HERE = "tests.ingest.isolation_targets"  # a light module: the loader process imports it


def _corpus(root: Path) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "plain.txt": "Plain text.\r\nSecond line with ünïcödé and 中文.\n",
        "guide.md": "---\ntitle: 'The Guide'\n---\n# Setup\nInstall.\n\n## Linux\nUse apt.\n\nUsage\n=====\nRun it.\n",
        "page.html": "<html><head><title>T</title></head><body><h1>Top</h1><p>One <b>two</b></p>"
        "<ul><li>a</li><li>b</li></ul><h2>Sub</h2><table><tr><td>x</td><td>y</td></tr></table></body></html>",
        "records.json": json.dumps([{"text": "first", "title": "A", "id": 1, "score": 0.5}, {"text": "second"}]),
        "lines.jsonl": '{"text": "one", "url": "http://x"}\nnot json\n{"text": "two"}\n',
        "squad.json": json.dumps(
            {
                "data": [
                    {"title": "Normans", "paragraphs": [{"context": "The Normans were...", "qas": []}] * 2},
                    {"title": "Normans", "paragraphs": [{"context": "Again.", "qas": []}]},
                ]
            }
        ),
    }
    paths = []
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
        paths.append(root / name)
    (root / "latin1.txt").write_bytes("café crème brûlée, naïve façade".encode("cp1252"))
    paths.append(root / "latin1.txt")
    paths.append(make_pdf(root / "report.pdf", ["Alpha page.", "", "Gamma page."], title="Report"))
    paths.append(make_docx(root / "handbook.docx"))
    return paths


def test_documents_are_identical_to_in_process_loading(tmp_path):
    files = _corpus(tmp_path / "in")
    with LoaderPool(LoaderConfig()) as pool:
        for path in files:
            assert pool.load(path) == load_file(path), path.name
        assert pool.started == 1  # one process served every file


def test_errors_are_identical_to_in_process_loading(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "x.xyz").write_text("hello")
    cases = ["empty.txt", "broken.pdf", "bad.json", "x.xyz", "missing.txt"]
    with LoaderPool(LoaderConfig()) as pool:
        for name in cases:
            with pytest.raises(LoaderError) as local:
                load_file(tmp_path / name)
            with pytest.raises(LoaderError) as isolated:
                pool.load(tmp_path / name)
            assert type(isolated.value) is type(local.value) and str(isolated.value) == str(local.value)
    assert isinstance(isolated.value, LoaderError)
    assert issubclass(EmptyDocumentError, LoaderError) and issubclass(UnsupportedFileError, LoaderError)


def test_loader_warnings_reach_the_parent_log(tmp_path, caplog):
    path = tmp_path / "lines.jsonl"
    path.write_text('{"text": "one"}\nnot json\n')
    with caplog.at_level(logging.WARNING), LoaderPool(LoaderConfig()) as pool:
        pool.load(path)
    assert any(
        "skipped 1 malformed line" in r.getMessage() and r.name == "ingest.loaders.jsonl" for r in caplog.records
    )


def test_a_file_over_the_time_limit_fails_alone(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine")
    evil = tmp_path / "evil.txt"
    evil.write_text("spins")
    with LoaderPool(LoaderConfig(timeout_s=1.0), target=f"{HERE}:slow_load") as pool:
        assert pool.load(good)[0].text == "fine"
        t0 = time.monotonic()
        with pytest.raises(LoaderError, match=r"evil.txt: took longer than 1 s to read; raise ingest.loader.timeout_s"):
            pool.load(evil)
        assert time.monotonic() - t0 < 10
        assert pool.load(good)[0].text == "fine"  # a fresh process took over
        assert pool.started == 2


def test_a_file_over_the_memory_limit_fails_alone(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine")
    evil = tmp_path / "evil.txt"
    evil.write_text("grows")
    with LoaderPool(LoaderConfig(memory_mb=1024), target=f"{HERE}:greedy_load") as pool:
        with pytest.raises(LoaderError, match=r"evil.txt: .*memory limit.*1024 MB.*ingest.loader.memory_mb"):
            pool.load(evil)
        assert pool.load(good)[0].text == "fine"


def test_a_crashing_loader_fails_its_file_with_the_reason(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine")
    evil = tmp_path / "evil.txt"
    evil.write_text("boom")
    with LoaderPool(LoaderConfig(), target=f"{HERE}:crashing_load") as pool:
        with pytest.raises(LoaderError, match=r"evil.txt: the loader process died .*signal 9.*memory_mb"):
            pool.load(evil)
        assert pool.load(good)[0].text == "fine"


def test_pipeline_fails_the_runaway_file_and_ingests_the_rest(tmp_path, tiny_st_model):
    cfg = IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model)), chunking=ChunkingConfig(chunk_tokens=40, overlap_tokens=5)
    )
    ws = Workspace(tmp_path / "home", cfg)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.txt", "evil.txt", "b.txt"):
        (folder / name).write_text(f"{name} holds a paragraph about its own topic.")
    from ingest.pipeline import ingest_paths

    with ws.open_or_create("c") as coll, LoaderPool(LoaderConfig(timeout_s=1.0), target=f"{HERE}:slow_load") as pool:
        report = ingest_paths(
            [folder], coll, ws.embedder.embed_documents, lambda: ws.chunker_for(coll), cfg.loader, loader_pool=pool
        )
    assert sorted(Path(p).name for p in report.added) == ["a.txt", "b.txt"]
    assert [(Path(f.path).name, "took longer than 1 s" in f.reason) for f in report.failed] == [("evil.txt", True)]


def test_workspace_ingest_isolates_by_default_and_can_turn_it_off(tmp_path, tiny_st_model, monkeypatch):
    from ingest import pipeline

    started = []
    real = pipeline.LoaderPool

    def counting(config):
        started.append(config)
        return real(config)

    monkeypatch.setattr(pipeline, "LoaderPool", counting)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.md").write_text("# A\ntext about a")
    for isolate in (True, False):
        cfg = IngestConfig(embedder=EmbedderConfig(model=str(tiny_st_model)), loader=LoaderConfig(isolate=isolate))
        report = Workspace(tmp_path / f"home-{isolate}", cfg).ingest([tmp_path / "in"], "c")
        assert report.ok and report.documents == 1
    assert len(started) == 1 and started[0].isolate
