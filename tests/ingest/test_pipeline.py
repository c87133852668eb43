"""The ingestion pipeline: incremental re-ingest, replacement, deletion, bad files in a batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
from ingest.pipeline import expand_paths
from ingest.workspace import Workspace


@pytest.fixture()
def ws(tmp_path, tiny_st_model) -> Workspace:
    cfg = IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model)), chunking=ChunkingConfig(chunk_tokens=40, overlap_tokens=5)
    )
    return Workspace(tmp_path / "home", cfg)


def write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def para(tag: str, n: int) -> str:
    return "\n\n".join(f"{tag} paragraph {i} explains one more detail about {tag}." * 2 for i in range(n))


class TestPipeline:
    def test_unchanged_reingest_embeds_nothing(self, ws, tmp_path):
        write(tmp_path / "docs" / "a.txt", para("alpha", 6))
        write(tmp_path / "docs" / "b.md", "# Beta\n\n" + para("beta", 4))
        first = ws.ingest([tmp_path / "docs"], "c")
        assert len(first.added) == 2 and first.chunks > 2 and first.ok
        fresh = Workspace(ws.home, ws.config)  # a new process: nothing loaded yet
        again = fresh.ingest([tmp_path / "docs"], "c")
        assert len(again.unchanged) == 2 and again.chunks_embedded == 0 and not again.added and not again.replaced
        assert fresh._embedder is None  # an unchanged re-ingest loads no model

    def test_changed_file_replaces_exactly_its_chunks(self, ws, tmp_path):
        a = write(tmp_path / "a.txt", para("alpha", 6))
        write(tmp_path / "b.txt", para("beta", 6))
        ws.ingest([tmp_path / "a.txt", tmp_path / "b.txt"], "c")
        with ws.open("c") as coll:
            before = {r.chunk_id for r in coll.store.iter_chunks()}
            b_chunks = {r.chunk_id for r in coll.store.iter_chunks() if "beta" in r.text}
        write(a, para("alpha", 6) + "\n\nA brand new closing paragraph about gamma rays.")
        rep = ws.ingest([tmp_path / "a.txt", tmp_path / "b.txt"], "c")
        assert rep.replaced == [str(a.resolve())] and len(rep.unchanged) == 1
        assert rep.chunks_reused > 0 and rep.chunks_embedded < rep.chunks  # unchanged chunks keep their vectors
        with ws.open("c") as coll:
            after = {r.chunk_id for r in coll.store.iter_chunks()}
            assert b_chunks <= after  # the other file is untouched
            assert any("gamma rays" in r.text for r in coll.store.iter_chunks())
            assert coll.check_consistency() == []
        assert after != before

    def test_bad_files_fail_alone(self, ws, tmp_path):
        good = write(tmp_path / "in" / "good.txt", para("good", 3))
        (tmp_path / "in" / "empty.txt").write_text("   \n")
        (tmp_path / "in" / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
        (tmp_path / "in" / "bad.json").write_text("{not json")
        (tmp_path / "in" / "image.png").write_bytes(b"\x89PNG....")  # an image (OCR), but not a readable one
        (tmp_path / "in" / "blob.bin").write_bytes(b"\x00\x01")  # unsupported, found in a folder: skipped
        named_unsupported = write(tmp_path / "notes.xyz", "hello")
        rep = ws.ingest([tmp_path / "in", named_unsupported, tmp_path / "missing.txt"], "c")
        assert rep.added == [str(good.resolve())]
        failed = {Path(f.path).name: f.reason for f in rep.failed}
        assert set(failed) == {"empty.txt", "broken.pdf", "bad.json", "image.png", "notes.xyz", "missing.txt"}
        assert all(reason for reason in failed.values())
        assert len(rep.skipped_unsupported) == 1 and not rep.ok
        hits = ws.search("good paragraph", "c", k=3)
        assert hits and all(h.source == str(good.resolve()) for h in hits)

    def test_delete_by_source_disappears_from_search(self, ws, tmp_path):
        a = write(tmp_path / "a.txt", para("alpha", 3))
        b = write(tmp_path / "b.txt", para("beta", 3))
        ws.ingest([a, b], "c")
        with ws.open("c") as coll:
            assert coll.delete_documents(sources=[str(a.resolve())]) == 1
        hits = ws.search("alpha paragraph", "c", k=10)
        assert hits and all(h.source == str(b.resolve()) for h in hits)
        # Deleted files are ingested again when asked.
        assert len(ws.ingest([a], "c").added) == 1

    def test_expand_paths_globs_and_hidden(self, tmp_path):
        write(tmp_path / "d" / "x.txt", "x")
        write(tmp_path / "d" / "sub" / "y.md", "y")
        write(tmp_path / "d" / ".hidden" / "z.txt", "z")
        files, failures, skipped = expand_paths(
            [tmp_path / "d", str(tmp_path / "d" / "*.txt"), str(tmp_path / "nomatch*.txt")]
        )
        assert sorted(f.name for f in files) == ["x.txt", "y.md"]
        assert len(failures) == 1 and "matched no files" in failures[0].reason


def test_prune_removes_files_gone_from_the_folder(ws, tmp_path):
    a = write(tmp_path / "docs" / "a.txt", para("alpha", 3))
    write(tmp_path / "docs" / "b.txt", para("beta", 3))
    ws.ingest([tmp_path / "docs"], "c")
    a.unlink()
    kept = ws.ingest([tmp_path / "docs"], "c")  # without --prune nothing is removed
    assert kept.removed == []
    rep = ws.ingest([tmp_path / "docs"], "c", prune=True)
    assert rep.removed == [str(a.resolve())]
    with ws.open("c") as coll:
        assert coll.store.file_paths() == [str((tmp_path / "docs" / "b.txt").resolve())]
