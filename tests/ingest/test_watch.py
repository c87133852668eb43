"""Folder sync on a real file system with real events: catch-up, create, modify, delete, rename, debounce, restart,
busy collections and a clean stop. Waits are bounded polls for the expected state, never fixed sleeps."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import ValidationError

from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig, LoaderConfig
from ingest.source_config import WatchedFolder
from ingest.watch import FolderMissingError, FolderSync, SyncTotals
from ingest.workspace import Workspace

WAIT_S = 20.0


@pytest.fixture()
def ws(tmp_path, tiny_st_model) -> Workspace:
    cfg = IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model), backend="torch"),  # no ONNX export per workspace
        chunking=ChunkingConfig(chunk_tokens=40, overlap_tokens=5),
        loader=LoaderConfig(isolate=False),
    )
    return Workspace(tmp_path / "home", cfg)


@pytest.fixture()
def docs(tmp_path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    return d


def write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def para(tag: str, n: int = 3) -> str:
    return "\n\n".join(f"{tag} paragraph {i} explains one more detail about {tag}." for i in range(n))


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sources(ws: Workspace, name: str = "c") -> set[str]:
    try:
        with ws.open(name, readonly=True, check_embedder=False) as coll:
            return set(coll.store.file_paths())
    except Exception:  # not created yet
        return set()


def texts(ws: Workspace, name: str = "c") -> str:
    with ws.open(name, readonly=True, check_embedder=False) as coll:
        return "\n".join(r.text for r in coll.store.iter_chunks())


def key(p: Path) -> str:
    return str(p.resolve())


@contextmanager
def watching(ws: Workspace, folder: Path, **options) -> Iterator[FolderSync]:
    """A FolderSync running in a thread; stopped (and checked to stop promptly) at the end of the block."""
    kw = {k: options.pop(k) for k in ("retry_s", "hold", "on_sync") if k in options}
    sync = FolderSync(ws, WatchedFolder(dir=folder, collection="c", **{"debounce_ms": 200, **options}), **kw)
    stop = threading.Event()
    result: dict[str, SyncTotals | BaseException] = {}

    def target() -> None:
        try:
            result["totals"] = sync.run(stop)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        wait_for(lambda: sync.ready.is_set() or "error" in result, "the catch-up")
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        yield sync
    finally:
        t0 = time.monotonic()
        stop.set()
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the watcher did not stop"
        assert time.monotonic() - t0 < 10.0
    assert "error" not in result, result.get("error")
    assert result["totals"] is sync.totals


class TestFolderSync:
    def test_catch_up_then_create_modify_rename_delete(self, ws, docs):
        a = write(docs / "a.txt", para("alpha"))
        with watching(ws, docs) as sync:
            assert sources(ws) == {key(a)}  # the catch-up ingested what was there
            b = write(docs / "sub" / "b.md", "# Beta\n\n" + para("beta"))
            wait_for(lambda: sources(ws) == {key(a), key(b)}, "the new file")
            write(a, para("alpha") + "\n\nA new closing paragraph about gamma rays.")
            wait_for(lambda: "gamma rays" in texts(ws), "the modified file")
            c = docs / "sub" / "c.md"
            os.rename(b, c)
            wait_for(lambda: sources(ws) == {key(a), key(c)}, "the renamed file")
            a.unlink()
            wait_for(lambda: sources(ws) == {key(c)}, "the deleted file to go")
            write(docs / ".hidden.txt", para("hidden"))  # hidden and unsupported files are ignored
            write(docs / "notes.bin", "binary?")
            d = write(docs / "d.txt", para("delta"))
            wait_for(lambda: key(d) in sources(ws), "the last file")
            assert sources(ws) == {key(c), key(d)}
            with ws.open("c", readonly=True) as coll:
                assert coll.check_consistency() == []
        t = sync.totals
        assert (t.added, t.removed, t.failed) == (1 + 1 + 1 + 1, 2, 0)  # a (catch-up), b, c, d; b and a removed
        assert t.replaced == 1

    def test_a_burst_of_writes_is_one_sync(self, ws, docs):
        reports = []
        with watching(ws, docs, debounce_ms=500, on_sync=reports.append):
            assert reports == []  # an empty folder: the catch-up changed nothing
            target = docs / "burst.txt"
            for i in range(10):  # an editor saving repeatedly, within much less than the debounce time
                write(target, para(f"version{i}"))
                time.sleep(0.01)
            others = [write(docs / f"n{i}.txt", para(f"note{i}")) for i in range(3)]
            wait_for(lambda: len(sources(ws)) == 4, "the burst")
            wait_for(lambda: "version9" in texts(ws), "the last version")
        assert len(reports) == 1, [(r.added, r.replaced) for r in reports]
        assert sorted(reports[0].added) == sorted(key(p) for p in [target, *others])
        assert "version8" not in texts(ws)

    def test_restart_catches_up_and_unchanged_costs_nothing(self, ws, docs):
        a = write(docs / "a.txt", para("alpha"))
        b = write(docs / "b.txt", para("beta"))
        keep = write(docs / "keep.txt", para("kept"))
        with watching(ws, docs):
            assert sources(ws) == {key(a), key(b), key(keep)}
        # While stopped: one file changes, one goes, one comes.
        write(a, para("alpha") + "\n\nWritten while the watcher was stopped.")
        b.unlink()
        c = write(docs / "c.txt", para("gamma"))
        fresh = Workspace(ws.home, ws.config)  # a new process
        with watching(fresh, docs) as sync:
            assert sources(fresh) == {key(a), key(c), key(keep)}
            assert "while the watcher was stopped" in texts(fresh)
        t = sync.totals
        assert (t.syncs, t.added, t.replaced, t.removed) == (1, 1, 1, 1)
        # Nothing changed since: the catch-up hashes the files and loads no model.
        idle = Workspace(ws.home, ws.config)
        with watching(idle, docs) as sync:
            pass
        assert sync.totals.syncs == 0 and idle._embedder is None

    def test_folders_moved_in_and_out(self, ws, docs, tmp_path):
        outside = tmp_path / "outside" / "bundle"
        x = write(outside / "x.txt", para("xray"))
        write(outside / "deeper" / "y.md", "# Yankee\n\n" + para("yankee"))
        with watching(ws, docs):
            os.rename(outside, docs / "bundle")
            inside = {key(docs / "bundle" / "x.txt"), key(docs / "bundle" / "deeper" / "y.md")}
            wait_for(lambda: sources(ws) == inside, "the files of the folder moved in")
            os.rename(docs / "bundle", outside)
            wait_for(lambda: sources(ws) == set(), "the files of the folder moved out to go")
        assert x.exists()

    def test_no_prune_keeps_deleted_files(self, ws, docs):
        a = write(docs / "a.txt", para("alpha"))
        with watching(ws, docs, prune=False):
            a.unlink()
            b = write(docs / "b.txt", para("beta"))
            wait_for(lambda: key(b) in sources(ws), "the new file")
            assert key(a) in sources(ws)

    def test_a_busy_collection_is_retried_with_the_changes_kept(self, ws, docs):
        with watching(ws, docs, retry_s=0.3) as sync:
            with ws.open_or_create("c"):  # another writer holds the collection's lock
                a = write(docs / "a.txt", para("alpha"))
                wait_for(lambda: sync.totals.busy_retries >= 1, "a busy retry")
                assert key(a) not in sources(ws)
            wait_for(lambda: key(a) in sources(ws), "the file after the lock was released")

    def test_bad_files_fail_alone_and_are_retried_when_fixed(self, ws, docs):
        reports = []
        with watching(ws, docs, on_sync=reports.append):
            bad = write(docs / "bad.json", "{not json")
            good = write(docs / "good.txt", para("good"))
            wait_for(lambda: key(good) in sources(ws), "the good file")
            wait_for(lambda: any(f.path == key(bad) for r in reports for f in r.failed), "the bad file's failure")
            write(bad, '[{"text": "Now valid JSON text about the fixed record."}]')
            wait_for(lambda: key(bad) in sources(ws), "the fixed file")

    def test_missing_folder_is_a_clear_error(self, ws, tmp_path):
        sync = FolderSync(ws, WatchedFolder(dir=tmp_path / "nope", collection="c"))
        with pytest.raises(FolderMissingError, match="does not exist"):
            sync.sync_once()
        with pytest.raises(FolderMissingError, match="not a folder"):
            sync.run(threading.Event())

    def test_sync_once_is_the_ingest_prune_semantics(self, ws, docs):
        a = write(docs / "a.txt", para("alpha"))
        b = write(docs / "b.txt", para("beta"))
        sync = FolderSync(ws, WatchedFolder(dir=docs, collection="c"))
        first = sync.sync_once()
        assert sorted(first.added) == sorted([key(a), key(b)])
        b.unlink()
        again = sync.sync_once()
        assert again.removed == [key(b)] and again.unchanged == [key(a)] and not again.added
        assert sources(ws) == {key(a)}


def test_watched_folder_validation(tmp_path):
    with pytest.raises(ValidationError, match="invalid collection name"):
        WatchedFolder(dir=tmp_path, collection="no spaces allowed")
    with pytest.raises(ValidationError):
        WatchedFolder(dir=tmp_path, collection="c", debounce_ms=0)
    cfg = WatchedFolder(dir="~/notes", collection="notes")
    assert cfg.dir == Path("~/notes").expanduser() and cfg.prune
