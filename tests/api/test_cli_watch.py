"""`ragqa watch` (a real process stopped by Ctrl-C and SIGTERM, restarted to catch up), `server.watch` in the
server, and `ragqa ingest URL` from the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app
from ingest.config import EmbedderConfig, IngestConfig
from ingest.source_config import WatchedFolder
from ingest.workspace import Workspace
from tests.api.test_app import make_settings
from tests.conftest import ragqa_cmd
from tests.ingest.test_web import Site, page, words

WAIT_S = 30.0


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def para(tag: str) -> str:
    return "\n\n".join(f"{tag} paragraph {i} explains one more detail about {tag}." for i in range(3))


@pytest.fixture()
def env(home, tiny_st_model) -> dict[str, str]:
    return {
        "RAGQA_HOME": str(home),
        "RAGQA_INGEST__EMBEDDER__MODEL": str(tiny_st_model),
        "RAGQA_INGEST__EMBEDDER__BACKEND": "torch",  # no ONNX export per workspace
    }


def sources(home: Path, model: Path, name: str = "notes") -> set[str]:
    ws = Workspace(home, IngestConfig(embedder=EmbedderConfig(model=str(model), backend="torch")))
    try:
        with ws.open(name, readonly=True, check_embedder=False) as coll:
            return set(coll.store.file_paths())
    except Exception:  # not created yet
        return set()


def invoke(args: list[str], env: dict[str, str], code: int = 0):
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    assert result.exit_code == code, f"{args} -> {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def one_json(result) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_watch_once_and_bad_input(env, tmp_path):
    docs = tmp_path / "docs"
    write(docs / "a.txt", para("alpha"))
    write(docs / "sub" / "b.md", "# Beta\n\n" + para("beta"))
    first = one_json(invoke(["watch", str(docs), "-c", "notes", "--once", "--json"], env))
    assert first["added"] == 2 and first["ok"] and first["folder"] == str(docs.resolve())
    (docs / "a.txt").unlink()
    again = one_json(invoke(["watch", str(docs), "-c", "notes", "--once", "--json"], env))
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 1, 1)

    bad = invoke(["watch", str(docs), "-c", "bad name", "--json"], env, code=2)
    assert "invalid collection name" in one_json(bad)["error"]
    missing = invoke(["watch", str(tmp_path / "nope"), "-c", "notes", "--json"], env, code=2)
    assert "not a folder" in one_json(missing)["error"]


@pytest.mark.integration
def test_watch_process_stops_cleanly_and_catches_up_after_a_restart(env, home, tiny_st_model, tmp_path):
    docs = tmp_path / "docs"
    a = write(docs / "a.txt", para("alpha"))
    full_env = {**os.environ, **env}

    def start(n: int) -> tuple[subprocess.Popen, Path, Path]:
        out, err = tmp_path / f"out{n}.txt", tmp_path / f"err{n}.txt"
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen(
                ragqa_cmd() + ["watch", str(docs), "-c", "notes", "--debounce-ms", "200"],
                env=full_env,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
            )
        return proc, out, err

    proc, out, err = start(1)
    try:
        wait_for(lambda: sources(home, tiny_st_model) == {str(a.resolve())}, "the catch-up", timeout=90)
        b = write(docs / "b.txt", para("beta"))
        wait_for(lambda: str(b.resolve()) in sources(home, tiny_st_model), "the new file")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=WAIT_S) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = out.read_text()
    assert "files added" in summary and "watch" in summary
    assert "synced 'notes'" in err.read_text()

    a.unlink()  # while stopped
    c = write(docs / "c.txt", para("gamma"))
    proc, out, err = start(2)
    try:
        want = {str(b.resolve()), str(c.resolve())}
        wait_for(lambda: sources(home, tiny_st_model) == want, "the catch-up after the restart", timeout=90)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "files removed" in out.read_text()


@pytest.mark.integration
def test_server_keeps_a_watched_folder_in_sync(tmp_path, tiny_st_model, tiny_llm):
    docs = tmp_path / "notes"
    write(docs / "a.txt", para("alpha"))
    settings = make_settings(tmp_path / "home", tiny_st_model, tiny_llm, auth=False)
    settings.server.watch = [WatchedFolder(dir=docs, collection="notes", debounce_ms=200)]

    def count(client: TestClient) -> int:
        r = client.get("/v1/collections/notes/documents")
        return r.json()["count"] if r.status_code == 200 else -1

    with TestClient(create_app(settings)) as client:
        wait_for(lambda: count(client) == 1, "the catch-up in the server")
        write(docs / "b.txt", para("beta"))
        wait_for(lambda: count(client) == 2, "the new file served")
        (docs / "a.txt").unlink()
        wait_for(lambda: count(client) == 1, "the deleted file gone")
        r = client.get("/v1/collections/notes/documents")
        assert [d["filename"] for d in r.json()["data"]] == ["b.txt"]
    assert not [t for t in threading.enumerate() if t.name.startswith("ragqa-watch-")]


@pytest.mark.integration
def test_ingest_url_from_the_command_line(env, tmp_path):
    site = Site(tmp_path / "site")
    site.root.mkdir()
    site.write("index.html", page("Index", words("index") + "<a href='a.html'>A</a>"))
    site.write("a.html", page("Alpha", words("alpha") + "<a href='deep.html'>deeper</a>"))
    site.write("deep.html", page("Deep", words("deep")))
    site.thread.start()
    try:
        url = site.url("index.html")
        rep = one_json(invoke(["ingest", url, "-c", "web", "--crawl", "--depth", "1", "--json"], env))
        assert rep["added"] == 2 and rep["pages_fetched"] == 2 and rep["ok"]
        again = one_json(invoke(["ingest", url, site.url("missing.html"), "-c", "web", "--json"], env, code=1))
        assert again["unchanged"] == 1 and "HTTP 404" in again["failed"][0]["reason"]
        listed = one_json(invoke(["documents", "list", "-c", "web", "--json"], env))
        assert {d["source"] for d in listed["data"]} == {url, site.url("a.html")}
        no_crawl = invoke(["ingest", url, "-c", "web", "--depth", "1", "--json"], env, code=2)
        assert "add --crawl" in one_json(no_crawl)["error"]
        no_url = invoke(["ingest", str(tmp_path), "-c", "web", "--crawl", "--json"], env, code=2)
        assert "pass an http(s):// URL" in one_json(no_url)["error"]
    finally:
        site.server.shutdown()
        site.server.server_close()
