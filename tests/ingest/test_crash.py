"""Crash safety with a real killed process: kill -9 during `ragqa ingest`, reopen, check, finish."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ingest.collection import Collection
from tests.conftest import ragqa_cmd

N_FILES = 120


def committed_files(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def make_corpus(root: Path) -> Path:
    rng = random.Random(7)
    words = "retrieval generation index vector chunk store crash commit answer question model token".split()
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(N_FILES):
        body = " ".join(
            f"File {i} sentence {j}: " + " ".join(rng.choice(words) for _ in range(12)) + "." for j in range(30)
        )
        (corpus / f"doc{i:03d}.txt").write_text(body)
    return corpus


def check(home: Path, name: str) -> tuple[int, set[str]]:
    """Open the collection as a fresh process would and check index and store agree."""
    coll = Collection.open(home / "collections", name)
    try:
        assert coll.check_consistency() == []
        ids, vecs = coll.store.all_vectors(coll.dim)
        rows = coll.store.get_chunks(ids.tolist())
        for i in np.random.default_rng(0).choice(len(ids), size=min(20, len(ids)), replace=False) if len(ids) else []:
            hit = coll.search(vecs[i], k=1)[0]  # every committed chunk is searchable
            assert hit.score == pytest.approx(1.0, abs=1e-4)
            assert rows[int(ids[i])].text == hit.text or np.allclose(vecs[i] @ vecs[i], 1, atol=1e-4)
        return coll.store.count_files(), {r.chunk_id for r in rows.values()}
    finally:
        coll.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_during_ingest_then_resume(tmp_path, home, tiny_st_model):
    corpus = make_corpus(tmp_path)
    env = dict(
        os.environ,
        RAGQA_HOME=str(home),
        RAGQA_INGEST__EMBEDDER__MODEL=str(tiny_st_model),
        RAGQA_INGEST__EMBEDDER__BATCH_SIZE="2",
        RAGQA_INGEST__CHUNKING__CHUNK_TOKENS="48",
        RAGQA_INGEST__CHUNKING__OVERLAP_TOKENS="8",
    )
    cmd = ragqa_cmd() + ["ingest", str(corpus), "-c", "crash", "--json"]
    store = home / "collections" / "crash" / "store.sqlite"
    rng = random.Random(1)
    acknowledged = 0
    kills = 0
    for _round in range(6):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        # Wait until this run commits something new, then kill it at a random moment.
        while proc.poll() is None and committed_files(store) <= acknowledged and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        n_files, _ = check(home, "crash")
        assert n_files >= acknowledged, "a previously committed file was lost"
        acknowledged = n_files
        if n_files == N_FILES:
            break
    assert kills >= 2, "the ingest finished before it could be killed; make the corpus larger"
    # Re-running the ingestion finishes the job.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    n_files, chunk_ids = check(home, "crash")
    assert n_files == N_FILES
    # And the result is exactly what an uninterrupted ingest produces.
    clean = subprocess.run(
        ragqa_cmd() + ["ingest", str(corpus), "-c", "clean", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert clean.returncode == 0, clean.stderr
    _, clean_ids = check(home, "clean")
    assert chunk_ids == clean_ids
