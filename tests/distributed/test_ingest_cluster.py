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

from ingest.cluster import RayIngester
from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig, RayConfig
from ingest.pipeline import IngestReport
from ingest.workspace import Workspace

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def connected(ray_cluster):
    """This process connected to the cluster as its driver for the module's tests."""
    import ray

    ray.init(address=ray_cluster, logging_level="ERROR", log_to_driver=False)
    yield ray_cluster
    ray.shutdown()


@pytest.fixture(scope="module")
def ingester(connected, tiny_st_model):
    """One pool of workers for the module (a worker loads torch and its model once: seconds)."""
    with RayIngester(config(tiny_st_model, connected)) as shared:
        yield shared


def cluster_ingest(ws: Workspace, ingester: RayIngester, paths: list[Path], **kw: object) -> IngestReport:
    """``ws.ingest`` with ``ingest.ray.address`` set, on the module's workers."""
    with ws.open_or_create("c") as coll:
        return ingester.ingest(paths, coll, **kw)  # type: ignore[arg-type]


def config(tiny_st_model: Path, address: str | None = None, **ray: object) -> IngestConfig:
    return IngestConfig(
        # float32: bf16 (auto on CPUs with AMX / AVX512-BF16) rounds differently for different batch shapes, and the
        # workers batch differently from one local process
        embedder=EmbedderConfig(model=str(tiny_st_model), backend="torch", dtype="float32"),
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


def test_cli_says_what_to_do_without_a_cluster(home, tmp_path):
    """No cluster at the address: a clear error at once, before a new collection loads the embedder.
    First in the module: no driver is connected yet (a connected one would be kept)."""
    import socket

    from typer.testing import CliRunner

    from api.cli import app

    docs = corpus(tmp_path / "docs", 1)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(app, ["ingest", str(docs), "-c", "c", "--ray", f"127.0.0.1:{port}", "--json"])
    assert result.exit_code == 2, result.stdout
    assert "no Ray cluster answers at" in result.stdout and "ray start --head" in result.stdout
    result = CliRunner().invoke(app, ["ingest", str(docs), "-c", "c", "--ray", "not an address", "--json"])
    assert result.exit_code == 2 and "HOST:PORT" in result.stdout


def test_cluster_ingest_equals_local_ingest(ingester, tiny_st_model, tmp_path):
    docs = corpus(tmp_path / "docs", 6)
    local = Workspace(tmp_path / "local", config(tiny_st_model))
    cluster = Workspace(tmp_path / "cluster", config(tiny_st_model, ingester.ray_config.address))
    expected = local.ingest([docs], "c")
    got = cluster_ingest(cluster, ingester, [docs])
    assert got.ok and sorted(got.added) == sorted(expected.added) and len(got.added) == 6
    assert (got.documents, got.chunks) == (expected.documents, expected.chunks) == (6, got.chunks_embedded)
    assert len(ingester.workers()) == 2  # one per CPU of the two nodes
    rows, vectors = contents(cluster, "c")
    want_rows, want_vectors = contents(local, "c")
    assert rows == want_rows and len(rows) == got.chunks
    np.testing.assert_allclose(vectors, want_vectors, atol=1e-5)

    # A changed file: the same replacement and reuse of stored vectors as a local re-ingest.
    changed = docs / "text0.txt"
    changed.write_text(para("plain0", 5) + "\n\nA brand new closing paragraph about gamma rays.")
    expected = local.ingest([docs], "c")
    got = cluster_ingest(cluster, ingester, [docs])
    assert got.replaced == expected.replaced == [str(changed.resolve())]
    assert (got.chunks_reused, got.chunks_embedded) == (expected.chunks_reused, expected.chunks_embedded)
    assert got.chunks_reused > 0
    rows, vectors = contents(cluster, "c")
    want_rows, want_vectors = contents(local, "c")
    assert rows == want_rows
    np.testing.assert_allclose(vectors, want_vectors, atol=1e-5)


def test_unchanged_files_are_skipped_before_any_work_is_shipped(ingester, tiny_st_model, tmp_path):
    docs = corpus(tmp_path / "docs", 3)
    cfg = config(tiny_st_model, ingester.ray_config.address)
    assert len(cluster_ingest(Workspace(tmp_path / "home", cfg), ingester, [docs]).added) == 3
    fresh = Workspace(tmp_path / "home", cfg)  # ingest.ray.address set: Workspace.ingest runs on the cluster
    again = fresh.ingest([docs], "c")
    assert len(again.unchanged) == 3 and again.chunks_embedded == 0 and not again.added and again.ok
    assert fresh.ray_ingester()._workers == []  # no worker was started, nothing shipped
    assert fresh._embedder is None  # and no model loaded by the writer


def test_bad_files_fail_alone_as_in_a_local_ingest(ingester, tiny_st_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = folder / "good.txt"
    good.write_text(para("good", 3))
    (folder / "empty.txt").write_text("   \n")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    (folder / "bad.json").write_text("{not json")
    local = Workspace(tmp_path / "local", config(tiny_st_model))
    cluster = Workspace(tmp_path / "cluster", config(tiny_st_model, ingester.ray_config.address))
    expected = local.ingest([folder, tmp_path / "missing.txt"], "c")
    got = cluster_ingest(cluster, ingester, [folder, tmp_path / "missing.txt"])
    assert got.added == [str(good.resolve())] and not got.ok
    failed = {Path(f.path).name: f.reason for f in got.failed}
    assert set(failed) == {"empty.txt", "broken.pdf", "bad.json", "missing.txt"}
    assert failed == {Path(f.path).name: f.reason for f in expected.failed}
    assert contents(cluster, "c")[0] == contents(local, "c")[0]


def test_a_worker_killed_mid_ingest_loses_nothing(ingester, tiny_st_model, tmp_path):
    import ray

    docs = corpus(tmp_path / "docs", 10)
    cluster = Workspace(tmp_path / "cluster", config(tiny_st_model, ingester.ray_config.address))
    victim = ingester.workers()[0]
    pid = ray.get(victim.pid.remote())
    committed: list[str] = []

    def kill_after_first_commit(path: str) -> None:
        committed.append(path)
        if len(committed) == 1:  # other files are queued on every worker now
            os.kill(pid, signal.SIGKILL)

    report = cluster_ingest(cluster, ingester, [docs], on_commit=kill_after_first_commit)
    assert report.ok and len(report.added) == 10 and len(committed) == 10
    assert ray.get(victim.pid.remote()) != pid  # the worker was restarted and its files retried
    assert len(contents(cluster, "c")[0]) == report.chunks

    # A re-run after the kill has nothing left to do: every file was committed once.
    again = cluster_ingest(cluster, ingester, [docs])
    assert len(again.unchanged) == 10 and again.chunks_embedded == 0
    local = Workspace(tmp_path / "local", config(tiny_st_model))
    local.ingest([docs], "c")
    assert contents(cluster, "c")[0] == contents(local, "c")[0]
