"""Job leases in server.sqlite (api.jobs.JobStore): several server processes over one RAGQA_HOME never work
the same upload job at once, and the job of one that died is taken over (after the lease expires, or at once
when its process is gone from this host)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from api.jobs import JobStore

FILES = [{"filename": "a.txt", "original": "a.txt", "size": 1}]


def _stores(tmp_path: Path, lease_s: float = 30.0) -> tuple[JobStore, JobStore]:
    db = tmp_path / "server.sqlite"
    return JobStore(db, lease_s=lease_s, owner="host-a:1:a"), JobStore(db, lease_s=lease_s, owner="host-b:2:b")


def test_two_claimers_one_winner(tmp_path) -> None:
    a, b = _stores(tmp_path)
    a.create("j", "kb", FILES, None)
    job = a.claim("j")
    assert job is not None and job["status"] == "running"
    assert b.claim("j") is None and b.claim_next() is None
    assert [r["job_id"] for r in b.runnable()] == []  # B's fair queue does not even consider it
    assert a.holds("j") and not b.holds("j")
    assert a.claim("j") is not None  # the owner takes it again for its next turn
    a.release_lease("j")
    assert b.claim("j") is not None and b.holds("j") and not a.holds("j")
    a.close()
    b.close()


def test_an_expired_lease_is_taken_over_and_renewal_keeps_it(tmp_path) -> None:
    a, b = _stores(tmp_path, lease_s=0.4)
    a.create("j", "kb", FILES, None)
    assert a.claim("j") is not None
    for _ in range(3):  # renewed in time: B never gets it
        time.sleep(0.2)
        assert a.renew(["j"]) == {"j"}
        assert b.claim("j") is None
    time.sleep(0.6)  # A stopped renewing (crashed elsewhere): the lease expires
    job = b.claim("j")
    assert job is not None and b.holds("j")
    assert job["status"] == "running"
    assert a.renew(["j"]) == set() and not a.holds("j")  # A learns it lost the job
    b.finish("j")
    assert b.get("j")["status"] == "done"  # type: ignore[index]
    assert b.claim("j") is None  # a finished job is never claimed again


def test_concurrent_claimers_take_each_job_exactly_once(tmp_path) -> None:
    db = tmp_path / "server.sqlite"
    stores = [JobStore(db, owner=f"h:{i}:n") for i in range(4)]
    for i in range(40):
        stores[0].create(f"j{i:02d}", "kb", FILES, None)
    taken: dict[int, list[str]] = {i: [] for i in range(4)}
    start = threading.Barrier(4)

    def claim_all(i: int) -> None:
        start.wait()
        while (job := stores[i].claim_next()) is not None:
            taken[i].append(job["job_id"])

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [j for ids in taken.values() for j in ids]
    assert sorted(every) == [f"j{i:02d}" for i in range(40)]  # all taken, none twice
    for store in stores:
        store.close()


def test_recover_leaves_a_live_replicas_job_and_close_gives_leases_back(tmp_path) -> None:
    a, b = _stores(tmp_path)
    a.create("j", "kb", FILES, None)
    assert a.claim("j") is not None
    assert b.recover() == []  # B starting up does not requeue A's running job
    assert a.get("j")["status"] == "running"  # type: ignore[index]
    a.close()  # a clean stop gives the lease back
    assert b.recover() == ["j"]
    assert b.claim("j") is not None
    b.close()


def test_the_job_of_a_dead_process_on_this_host_is_freed_at_once(tmp_path) -> None:
    db = tmp_path / "server.sqlite"
    b = JobStore(db, lease_s=3600)
    b.create("j", "kb", FILES, None)
    code = (
        "import os, sys; from api.jobs import JobStore; "
        "s = JobStore(sys.argv[1], lease_s=3600); assert s.claim('j') is not None; os._exit(0)"  # dies holding it
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, cwd=root, timeout=60)
    owner = b._db.execute("SELECT lease_owner FROM jobs WHERE job_id='j'").fetchone()[0]
    assert owner and owner != b.owner
    assert b.claim("j") is None  # the lease has an hour left ...
    assert [r["job_id"] for r in b.runnable()] == ["j"]  # ... but its owner's pid is gone: freed
    assert b.claim("j") is not None
    b.close()


def test_leases_are_added_to_an_old_database(tmp_path) -> None:
    import sqlite3

    db = tmp_path / "server.sqlite"
    old = sqlite3.connect(db)
    old.executescript(JobStore.schema)
    old.close()
    jobs = JobStore(db)
    jobs.create("j", "kb", FILES, None)
    assert jobs.claim("j") is not None and jobs.holds("j")
    jobs.close()
    with pytest.raises(ValueError):
        JobStore(db, lease_s=0)
