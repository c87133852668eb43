"""Ingestion on a real two-node Ray cluster (:mod:`ingest.cluster`) against the single-machine pipeline.

The cluster comes from the ``ray_cluster`` fixture (tests/distributed/conftest.py); the embedder is the tiny
random sentence-transformers model, run by the Ray workers exactly as configured here.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig, RayConfig
from ingest.workspace import Workspace

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def connected(ray_cluster):
    """This process connected to the cluster as its driver for the module's tests."""
    import ray

    ray.init(address=ray_cluster, logging_level="ERROR", log_to_driver=False)
    yield ray_cluster
    ray.shutdown()


def config(tiny_st_model: Path, address: str | None = None, **ray: object) -> IngestConfig:
    return IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model), backend="torch"),
        chunking=ChunkingConfig(chunk_tokens=40, overlap_tokens=5),
        ray=RayConfig(address=address, **ray),
    )


def para(tag: str, n: int) -> str:
    return "\n\n".join(f"{tag} paragraph {i} explains one more detail about {tag}." * 2 for i in range(n))


def corpus(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i % 3 == 2:
            (folder / f"page{i}.html").write_text(
                f"<html><head><title>Page {i}</title></head><body><h1>Topic {i}</h1><p>{para(f'html{i}', 3)}</p>"
                "</body></html>"
            )
        elif i % 3 == 1:
            (folder / f"note{i}.md").write_text(
                f"# Note {i}\n\n{para(f'markdown{i}', 4)}\n\n## More\n\n{para('more', 2)}"
            )
        else:
            (folder / f"text{i}.txt").write_text(para(f"plain{i}", 5))
    return folder


def contents(ws: Workspace, name: str) -> tuple[list[tuple[str, str, str, int]], np.ndarray]:
    """Every chunk (chunk id, doc id, text, ordinal) and its vector, in faiss id order."""
    with ws.open(name, readonly=True) as coll:
        rows = [(r.chunk_id, r.doc_id, r.text, r.ordinal) for r in coll.store.iter_chunks()]
        _ids, vectors = coll.store.all_vectors(coll.dim)
        assert coll.check_consistency() == []
    return rows, vectors


def test_cluster_ingest_equals_local_ingest(connected, tiny_st_model, tmp_path):
    docs = corpus(tmp_path / "docs", 6)
    local = Workspace(tmp_path / "local", config(tiny_st_model))
    cluster = Workspace(tmp_path / "cluster", config(tiny_st_model, connected))
    try:
        expected = local.ingest([docs], "c")
        got = cluster.ingest([docs], "c")
        assert got.ok and sorted(got.added) == sorted(expected.added) and len(got.added) == 6
        assert (got.documents, got.chunks, got.chunks_embedded) == (
            expected.documents,
            expected.chunks,
            expected.chunks,
        )
        assert len(cluster.ray_ingester().workers()) == 2  # one per CPU of the two nodes
        rows, vectors = contents(cluster, "c")
        want_rows, want_vectors = contents(local, "c")
        assert rows == want_rows and len(rows) == got.chunks
        np.testing.assert_allclose(vectors, want_vectors, atol=1e-5)

        # A changed file: the same replacement and reuse of stored vectors as a local re-ingest.
        changed = docs / "text0.txt"
        changed.write_text(para("plain0", 5) + "\n\nA brand new closing paragraph about gamma rays.")
        expected = local.ingest([docs], "c")
        got = cluster.ingest([docs], "c")
        assert got.replaced == expected.replaced == [str(changed.resolve())]
        assert (got.chunks_reused, got.chunks_embedded) == (expected.chunks_reused, expected.chunks_embedded)
        assert got.chunks_reused > 0
        rows, vectors = contents(cluster, "c")
        want_rows, want_vectors = contents(local, "c")
        assert rows == want_rows
        np.testing.assert_allclose(vectors, want_vectors, atol=1e-5)
    finally:
        cluster.close()


def test_unchanged_files_are_skipped_before_any_work_is_shipped(connected, tiny_st_model, tmp_path):
    docs = corpus(tmp_path / "docs", 3)
    cfg = config(tiny_st_model, connected)
    first = Workspace(tmp_path / "home", cfg)
    try:
        assert len(first.ingest([docs], "c").added) == 3
    finally:
        first.close()
    fresh = Workspace(tmp_path / "home", cfg)
    again = fresh.ingest([docs], "c")
    assert len(again.unchanged) == 3 and again.chunks_embedded == 0 and not again.added and again.ok
    assert fresh.ray_ingester()._workers == []  # no worker was started, nothing shipped
    assert fresh._embedder is None  # and no model loaded by the writer


def test_bad_files_fail_alone_as_in_a_local_ingest(connected, tiny_st_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = folder / "good.txt"
    good.write_text(para("good", 3))
    (folder / "empty.txt").write_text("   \n")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    (folder / "bad.json").write_text("{not json")
    local = Workspace(tmp_path / "local", config(tiny_st_model))
    cluster = Workspace(tmp_path / "cluster", config(tiny_st_model, connected))
    try:
        expected = local.ingest([folder, tmp_path / "missing.txt"], "c")
        got = cluster.ingest([folder, tmp_path / "missing.txt"], "c")
    finally:
        cluster.close()
    assert got.added == [str(good.resolve())] and not got.ok
    failed = {Path(f.path).name: f.reason for f in got.failed}
    assert set(failed) == {"empty.txt", "broken.pdf", "bad.json", "missing.txt"}
    assert failed == {Path(f.path).name: f.reason for f in expected.failed}
    assert contents(cluster, "c")[0] == contents(local, "c")[0]


def test_a_worker_killed_mid_ingest_loses_nothing(connected, tiny_st_model, tmp_path):
    docs = corpus(tmp_path / "docs", 10)
    cluster = Workspace(tmp_path / "cluster", config(tiny_st_model, connected, files_in_flight=2))
    ingester = cluster.ray_ingester()
    try:
        import ray

        victim = ingester.workers()[0]
        pid = ray.get(victim.pid.remote())
        committed: list[str] = []

        def kill_after_first_commit(path: str) -> None:
            committed.append(path)
            if len(committed) == 1:  # other files are queued on every worker now
                os.kill(pid, signal.SIGKILL)

        with cluster.open_or_create("c") as coll:
            report = ingester.ingest([docs], coll, on_commit=kill_after_first_commit)
        assert report.ok and len(report.added) == 10 and len(committed) == 10
        assert ray.get(victim.pid.remote()) != pid  # the worker was restarted and its files retried
        rows, _ = contents(cluster, "c")
        assert {r[1] for r in rows} and len(rows) == report.chunks

        # A re-run after the kill has nothing left to do: every file was committed once.
        again = cluster.ingest([docs], "c")
        assert len(again.unchanged) == 10 and again.chunks_embedded == 0
    finally:
        cluster.close()
    local = Workspace(tmp_path / "local", config(tiny_st_model))
    local.ingest([docs], "c")
    assert contents(cluster, "c")[0] == contents(local, "c")[0]
