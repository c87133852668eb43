"""Loading and chunking overlap with embedding: same results as the sequential loop, errors kept per file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ingest import pipeline
from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig, LoaderConfig
from ingest.pipeline import ingest_paths
from ingest.workspace import Workspace

pytestmark = pytest.mark.unit


@pytest.fixture()
def ws(tmp_path, tiny_st_model) -> Workspace:
    cfg = IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model)),
        chunking=ChunkingConfig(chunk_tokens=40, overlap_tokens=5),
        loader=LoaderConfig(isolate=False),
    )
    return Workspace(tmp_path / "home", cfg)


@pytest.fixture()
def corpus(tmp_path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(10):
        text = "\n\n".join(f"Topic {i} paragraph {j} explains detail {i * j} of the manual." * 2 for j in range(4 + i))
        (root / f"f{i:02d}.txt").write_text(text, encoding="utf-8")
    (root / "f03b.json").write_text("{not json")  # a bad file in the middle of a batch
    (root / "f07b.txt").write_text("   \n")  # an empty one
    return root


class _Timeline:
    """When each embed call ran, and when (and in which thread) each file was loaded."""

    def __init__(self) -> None:
        self.embeds: list[tuple[float, float]] = []
        self.loads: list[tuple[float, str]] = []

    def loads_during_embeds(self) -> int:
        return sum(any(a < t < b for a, b in self.embeds) for t, _ in self.loads)


def _run(ws: Workspace, name: str, source: Path, overlap: bool, monkeypatch, timeline: _Timeline | None = None):
    real_load = pipeline.load_and_chunk

    def load_and_chunk(path, *a, **k):
        if timeline is not None:
            timeline.loads.append((time.perf_counter(), threading.current_thread().name))
        return real_load(path, *a, **k)

    def embed(texts):
        start = time.perf_counter()
        out = ws.embedder.embed_documents(texts)
        time.sleep(0.2)  # a slower embedder: room for the next files to be loaded meanwhile
        if timeline is not None:
            timeline.embeds.append((start, time.perf_counter()))
        return out

    monkeypatch.setattr(pipeline, "load_and_chunk", load_and_chunk)
    with ws.open_or_create(name) as coll:
        report = ingest_paths(
            [source],
            coll,
            embed,
            lambda: ws.chunker_for(coll),
            ws.config.loader,
            embed_batch_chunks=16,
            overlap=overlap,
        )
    monkeypatch.setattr(pipeline, "load_and_chunk", real_load)
    return report


def _contents(ws: Workspace, name: str) -> tuple[list[tuple], np.ndarray]:
    with ws.open(name, readonly=True) as coll:
        rows = [(r.faiss_id, r.chunk_id, r.doc_id, r.ordinal, r.text) for r in coll.store.iter_chunks()]
        _, vectors = coll.store.all_vectors(coll.dim)
    return rows, vectors


def test_overlapped_ingest_equals_the_sequential_one(ws, corpus, monkeypatch):
    seq_line, ovl_line = _Timeline(), _Timeline()
    seq = _run(ws, "seq", corpus, overlap=False, monkeypatch=monkeypatch, timeline=seq_line)
    ovl = _run(ws, "ovl", corpus, overlap=True, monkeypatch=monkeypatch, timeline=ovl_line)

    def comparable(report):
        d = report.to_dict()
        d.pop("seconds"), d.pop("collection")
        return d

    assert comparable(seq) == comparable(ovl)
    assert [Path(f.path).name for f in ovl.failed] == ["f03b.json", "f07b.txt"]
    assert seq.added == ovl.added and len(ovl.added) == 10 and ovl.chunks_embedded == ovl.chunks > 16
    seq_rows, seq_vecs = _contents(ws, "seq")
    ovl_rows, ovl_vecs = _contents(ws, "ovl")
    assert seq_rows == ovl_rows
    np.testing.assert_array_equal(seq_vecs, ovl_vecs)
    # the overlap is real: files were loaded, in the prefetch thread, while a batch was being embedded
    assert seq_line.loads_during_embeds() == 0
    assert ovl_line.loads_during_embeds() > 0
    assert {name for _, name in ovl_line.loads} == {"ragqa-ingest-prefetch"}

    again = _run(ws, "ovl", corpus, overlap=True, monkeypatch=monkeypatch)
    assert len(again.unchanged) == 10 and again.chunks_embedded == 0 and not again.added


def test_unexpected_error_in_the_prefetch_thread_reaches_the_caller(ws, corpus, monkeypatch):
    real_load = pipeline.load_and_chunk

    def load_and_chunk(path, *a, **k):
        if path.name == "f05.txt":
            raise RuntimeError("loader bug")  # not a file error: it stops the run, as in the sequential loop
        return real_load(path, *a, **k)

    monkeypatch.setattr(pipeline, "load_and_chunk", load_and_chunk)
    with ws.open_or_create("c") as coll, pytest.raises(RuntimeError, match="loader bug"):
        ingest_paths([corpus], coll, ws.embedder.embed_documents, lambda: ws.chunker_for(coll), ws.config.loader)
    assert not [t for t in threading.enumerate() if t.name == "ragqa-ingest-prefetch"]
    with ws.open("c", readonly=True) as coll:
        committed = {Path(p).name for p in coll.store.file_paths()}
    assert committed <= {f"f{i:02d}.txt" for i in range(5)}  # files before the error may be committed, none after


def test_prefetch_stays_within_its_chunk_budget():
    """The thread runs at most the budget ahead of a consumer that does not take anything."""
    made: list[int] = []

    def prepare(path: Path) -> pipeline.LoadedFile:
        made.append(1)
        chunks = [object()] * 10
        return pipeline.LoadedFile(path, None, chunks=chunks)  # type: ignore[arg-type]

    prefetch = pipeline.Prefetcher([Path(f"f{i}") for i in range(50)], prepare, max_chunks=30)
    time.sleep(0.3)
    assert len(made) <= 4  # 3 queued (30 chunks) + 1 waiting to be queued
    items = list(prefetch)
    prefetch.close()
    assert [p.path.name for p in items] == [f"f{i}" for i in range(50)]


def test_a_small_corpus_starts_embedding_before_its_last_file_is_loaded(ws, corpus, monkeypatch):
    """Below one embedding batch, the chunks loaded so far are embedded while the loader is still busy
    (instead of waiting for the last file), and the result is the one of the sequential loop."""
    real_load = pipeline.load_and_chunk
    line = _Timeline()

    def slow_load(path, *a, **k):
        time.sleep(0.05)  # a slow loader: the embedder finds nothing ready now and then
        line.loads.append((time.perf_counter(), threading.current_thread().name))
        return real_load(path, *a, **k)

    def embed(texts):
        line.embeds.append((time.perf_counter(), time.perf_counter()))
        return ws.embedder.embed_documents(texts)

    monkeypatch.setattr(pipeline, "EARLY_EMBED_CHUNKS", 4)
    monkeypatch.setattr(pipeline, "load_and_chunk", slow_load)
    with ws.open_or_create("early") as coll:
        early = ingest_paths(
            [corpus], coll, embed, lambda: ws.chunker_for(coll), ws.config.loader, embed_batch_chunks=10_000
        )
    monkeypatch.setattr(pipeline, "load_and_chunk", real_load)
    assert len(line.embeds) > 1 and line.embeds[0][0] < line.loads[-1][0]
    seq = _run(ws, "seq", corpus, overlap=False, monkeypatch=monkeypatch)
    assert len(early.added) == len(seq.added) == 10 and early.chunks_embedded == seq.chunks_embedded
    assert _contents(ws, "early")[0] == _contents(ws, "seq")[0]
    # other batches: the int8 path quantises activations per batch, so vectors agree to ~1e-4, not bit for bit
    np.testing.assert_allclose(_contents(ws, "early")[1], _contents(ws, "seq")[1], atol=1e-3)


def test_prefetcher_ready_says_whether_next_would_wait():
    gate = threading.Event()

    def prepare(path: Path) -> pipeline.LoadedFile:
        if path.name == "f1":
            gate.wait(5)
        return pipeline.LoadedFile(path, None)

    prefetch = pipeline.Prefetcher([Path("f0"), Path("f1")], prepare, max_chunks=10)
    items = iter(prefetch)
    assert next(items).path.name == "f0"
    assert not prefetch.ready()  # f1 is still being loaded
    gate.set()
    assert next(items).path.name == "f1"
    deadline = time.monotonic() + 5
    while not prefetch.ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prefetch.ready()  # loading ended: next() returns at once (StopIteration)
    assert list(items) == []
    prefetch.close()
