"""Reliability of a real ``ragqa serve`` process (bundled models): health under load, kill -9, memory.

One server process over a throw-away workspace (``--models-from`` copies a prepared ``models/`` folder in,
as hard links where it can), three measurements:

* **Health under load**: collection ``rel`` gets ``--paragraphs`` SQuAD 2.0 paragraphs; then
  ``--questions`` client threads each post one of their questions to ``POST /v1/ask`` at the same moment
  (``answer_style`` ``--style``, default settings otherwise: continuous batching, ``serving.max_queue``,
  ``serving.request_timeout_s``, or ``--request-timeout``), while a separate process polls ``GET /healthz`` every
  ``--poll`` seconds (a 30 s client timeout) and, from another thread, ``GET /v1/collections`` with the key (a
  route served from the server's thread pool). Reported: p50 / p95 / max and status codes of both, the times of
  ``/healthz`` polls over 0.5 s, and how the questions fared (200, 429, 503, 504, other; latency p50 / p95 / max
  of the 200s; time to refusal and ``Retry-After`` of the 503s). ``--admission off`` turns the scheduler's
  admission by predicted finish time off (``serving.admission``), for a before / after comparison.
  ``--kills 0`` runs this part only; ``--append`` keeps the runs already recorded.
* **Memory bound**: the server's VmRSS (and that of its loader processes) sampled with every poll; the peak
  during the load, and the process's VmHWM.
* **kill -9 survival**: one upload job of ``--files`` text files (a few KB each, into collection ``crash``);
  the server is killed with SIGKILL ``--kills`` times, at evenly spaced points of the job's progress, and
  restarted each time. At the end the job must be ``done``, every file must be in the collection exactly once
  (one document per file, no duplicate chunk), and index and store must agree
  (:meth:`ingest.collection.Collection.check_consistency`, the crash-safety check of the collection).

    .venv/bin/python -m bench.reliability --models-from ~/.ragqa/models --write
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

from bench import common
from bench.api_load import Server, free_port, squad_items
from bench.common import pct

logger = logging.getLogger("bench.reliability")

START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
HEADING = "## Reliability"
HEALTH_TARGET_S = 0.5


# -- process memory --------------------------------------------------------------------------------


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            with open(task / "children") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


def rss_mib(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS of ``pid``, VmRSS of ``pid`` and all its descendants), in MiB."""
    own = _status_kb(pid, "VmRSS")
    if own is None:
        return None, None
    total, todo = own, _children(pid)
    while todo:
        child = todo.pop()
        total += _status_kb(child, "VmRSS") or 0
        todo += _children(child)
    return own / 1024, total / 1024


# -- the server --------------------------------------------------------------------------------------


def copy_models(src: pathlib.Path, dst: pathlib.Path) -> None:
    """``src`` into ``dst``: hard links on the same file system (instant), else copies."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)


def new_server(home: pathlib.Path, port: int, n: int, env: dict[str, str]) -> Server:
    server = Server(home, port, home / f"server-{n}.log")
    server.env.update(env)
    return server


def descendants(pid: int) -> list[int]:
    out, todo = [], _children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo += _children(child)
    return out


def kill9(server: Server) -> None:
    """SIGKILL the server (no shutdown handler runs); its loader processes, orphaned, are reaped by pid."""
    assert server.proc is not None
    orphans = descendants(server.proc.pid)
    server.proc.kill()
    server.proc.wait()
    server.stop()  # closes its log
    deadline = time.monotonic() + 5
    for pid in orphans:  # they exit when their pipe to the server closes; force the ones that do not
        while time.monotonic() < deadline and pathlib.Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- health under load -----------------------------------------------------------------------------


def _poll(base: str, key: str, pid: int, interval: float, halt: Any, conn: Any) -> None:
    """The poller process: GET /healthz every ``interval`` s and the server's memory, until ``halt`` is set;
    meanwhile another thread GETs /v1/collections (a route with a key, answered from the server's thread pool)
    every ``interval`` s. Then the samples are sent back through ``conn``."""
    import httpx

    samples: list[tuple[float, float, int]] = []  # (time, seconds, status; 0 = no answer)
    keyed: list[tuple[float, float, int]] = []  # the same for GET /v1/collections
    rss: list[tuple[float, float, float]] = []  # (time, server MiB, server + children MiB)

    def loop(path: str, headers: dict[str, str], out: list[tuple[float, float, int]], memory: bool) -> None:
        with httpx.Client(base_url=base, timeout=300, headers=headers) as client:
            while not halt.is_set():
                t0 = time.perf_counter()
                try:
                    status = client.get(path).status_code
                except httpx.HTTPError:
                    status = 0
                now = time.perf_counter()
                out.append((t0, now - t0, status))  # by start: a poll that began during the load counts
                own, total = rss_mib(pid) if memory else (None, None)
                if own is not None and total is not None:
                    rss.append((now, own, total))
                halt.wait(max(0.0, interval - (time.perf_counter() - t0)))

    other = threading.Thread(target=loop, args=("/v1/collections", {"Authorization": f"Bearer {key}"}, keyed, False))
    other.start()
    loop("/healthz", {}, samples, True)
    other.join()
    conn.send((samples, keyed, rss))
    conn.close()


class Poller:
    """:func:`_poll` in its own process, so that the client threads asking questions (their GIL) do not delay
    or inflate the health measurement; times are ``time.perf_counter()`` (CLOCK_MONOTONIC, shared by processes)."""

    def __init__(self, base: str, key: str, pid: int, interval: float) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.halt = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_poll, args=(base, key, pid, interval, self.halt, send), daemon=True)
        self.samples: list[tuple[float, float, int]] = []
        self.keyed: list[tuple[float, float, int]] = []
        self.rss: list[tuple[float, float, float]] = []

    def start(self) -> None:
        self.proc.start()

    def stop(self) -> None:
        self.halt.set()
        self.samples, self.keyed, self.rss = self._recv.recv()
        self.proc.join(30)


def ask_all(base: str, key: str, questions: list[str], style: str | None) -> tuple[list[dict[str, Any]], float, float]:
    """Every question posted at once, one thread each: per question status and latency; (start, end) times."""
    import httpx

    results: list[dict[str, Any]] = [{} for _ in questions]
    barrier = threading.Barrier(len(questions))

    def one(i: int) -> None:
        body: dict[str, Any] = {"question": questions[i], "collection": "rel"}
        if style:
            body["answer_style"] = style
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=900) as client:
            barrier.wait()
            t0 = time.perf_counter()
            retry: str | None = None
            try:
                r = client.post("/v1/ask", json=body)
                status, detail = r.status_code, r.json().get("answer") if r.status_code == 200 else r.text[:200]
                retry = r.headers.get("Retry-After")
            except httpx.HTTPError as exc:
                status, detail = 0, f"{type(exc).__name__}: {exc}"
            results[i] = {"status": status, "seconds": time.perf_counter() - t0, "end": time.perf_counter()}
            results[i]["detail"] = detail
            results[i]["retry_after"] = int(retry) if retry and retry.isdigit() else None

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(questions))]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, t_start, max(r["end"] for r in results)


def seed_collection(base: str, key: str, name: str, files: list[tuple[str, str]]) -> dict[str, Any]:
    """Create collection ``name`` and upload ``files`` in one job; the job once it is no longer pending."""
    import httpx

    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300) as client:
        client.post("/v1/collections", json={"name": name}).raise_for_status()
        r = client.post(
            f"/v1/collections/{name}/documents",
            files=[("files", (fname, text.encode("utf-8"), "text/plain")) for fname, text in files],
        )
        r.raise_for_status()
        job_id = r.json()["job_id"]
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("done", "failed"):
                return job
            time.sleep(0.2)


def health_under_load(server: Server, key: str, args, paragraphs, questions) -> dict[str, Any]:
    import httpx

    seed = seed_collection(server.base, key, "rel", paragraphs)
    if seed["status"] != "done" or seed["progress"]["failed"]:
        raise SystemExit(f"seeding collection rel failed: {seed['errors'][:3]}")
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        body = {"question": questions[0], "collection": "rel"} | ({"answer_style": args.style} if args.style else {})
        client.post("/v1/ask", json=body).raise_for_status()  # warm-up: first-call allocations, not measured
    assert server.proc is not None
    poller = Poller(server.base, key, server.proc.pid, args.poll)
    poller.start()
    time.sleep(args.idle)  # the idle baseline
    t_idle = time.perf_counter()
    results, t0, t1 = ask_all(server.base, key, questions, args.style)
    time.sleep(1.0)
    poller.stop()
    idle = [s for t, s, _ in poller.samples if t < t_idle]
    during = [(s, st) for t, s, st in poller.samples if t0 <= t <= t1]
    rss_during = [(own, total) for t, own, total in poller.rss if t0 <= t <= t1]
    statuses = Counter(r["status"] for r in results)
    ok = [r["seconds"] for r in results if r["status"] == 200]
    busy = [r for r in results if r["status"] == 503]
    retry = [r["retry_after"] for r in busy if r["retry_after"] is not None]
    return {
        "idle_p50": pct(idle, 0.5),
        "polls": len(during),
        "health_status": Counter(st for _, st in during),
        "p50": pct([s for s, _ in during], 0.5),
        "p95": pct([s for s, _ in during], 0.95),
        "max": max((s for s, _ in during), default=None),
        "over_target": sum(1 for s, _ in during if s > HEALTH_TARGET_S),
        "keyed": [s for t, s, st in poller.keyed if t0 <= t <= t1],
        "keyed_status": Counter(st for t, _, st in poller.keyed if t0 <= t <= t1),
        "slow_at": [(t - t0, s) for t, s, _ in poller.samples if t0 <= t <= t1 and s > HEALTH_TARGET_S],
        "load_s": t1 - t0,
        "statuses": statuses,
        "ask_p50": pct(ok, 0.5),
        "ask_p95": pct(ok, 0.95),
        "refusal_p50": pct([r["seconds"] for r in busy], 0.5),
        "refusal_max": max((r["seconds"] for r in busy), default=None),
        "retry_after": (min(retry), max(retry)) if retry else None,
        "late_504": max((r["seconds"] for r in results if r["status"] == 504), default=None),
        "ask_max": max(ok, default=None),
        "errors": list(dict.fromkeys(str(r["detail"]) for r in results if r["status"] != 200))[:3],
        "rss_before": poller.rss[0][1:] if poller.rss else (None, None),
        "rss_peak": max(o for o, _ in rss_during) if rss_during else None,
        "rss_peak_total": max(t for _, t in rss_during) if rss_during else None,
        "hwm": (_status_kb(server.proc.pid, "VmHWM") or 0) / 1024,
    }


# -- kill -9 during an upload job -------------------------------------------------------------------

WORDS = (
    "retrieval generation index vector chunk store crash commit answer question model token river "
    "bridge harbour lantern meadow orchard quarry summit valley"
).split()


def crash_corpus(n: int, sentences: int) -> list[tuple[str, str]]:
    rng = random.Random(7)
    return [
        (
            f"crash{i:03d}.txt",
            "\n".join(
                f"File {i} sentence {j}: " + " ".join(rng.choice(WORDS) for _ in range(14)) + "."
                for j in range(sentences)
            )
            + "\n",
        )
        for i in range(n)
    ]


def committed_files(store: pathlib.Path) -> int:
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute("SELECT COUNT(*) FROM files").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def kill_during_upload(server: Server, key: str, args, home: pathlib.Path, env: dict[str, str]) -> dict[str, Any]:
    """Upload ``--files`` files in one job, SIGKILL the server ``--kills`` times during it (restarting it each
    time), then check the collection as a fresh process would."""
    import httpx

    files = crash_corpus(args.files, args.sentences)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base, headers=headers, timeout=300) as client:
        client.post("/v1/collections", json={"name": "crash"}).raise_for_status()
        r = client.post(
            "/v1/collections/crash/documents",
            files=[("files", (name, text.encode("utf-8"), "text/plain")) for name, text in files],
        )
        r.raise_for_status()
        job_id = r.json()["job_id"]
    store = home / "collections" / "crash" / "store.sqlite"
    thresholds = [round(args.files * (i + 1) / (args.kills + 1)) for i in range(args.kills)]
    kills: list[dict[str, Any]] = []
    t_job = time.perf_counter()
    job: dict[str, Any] = {}
    n = 1
    while True:
        try:
            job = httpx.get(f"{server.base}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        except httpx.HTTPError:
            time.sleep(0.05)
            continue
        if job["status"] in ("done", "failed"):
            break
        if len(kills) < len(thresholds) and job["progress"]["processed"] >= thresholds[len(kills)]:
            kill9(server)
            kills.append({"processed": job["progress"]["processed"], "committed": committed_files(store)})
            logger.warning("  kill -9 at %d / %d files processed", job["progress"]["processed"], args.files)
            n += 1
            server = new_server(home, server.port, n, env)
            kills[-1]["restart_s"] = server.start()
            continue
        time.sleep(0.05)
    job_s = time.perf_counter() - t_job
    server.stop()
    return {"job": job, "kills": kills, "job_s": job_s, "thresholds": thresholds, **check_collection(home, files)}


def check_collection(home: pathlib.Path, files: list[tuple[str, str]]) -> dict[str, Any]:
    """The crash collection as a fresh process opens it: consistency, files, documents and chunks per file."""
    sys.path.insert(0, str(common.ROOT))  # the ragqa packages first: bench/ingest.py would shadow `ingest`
    from ingest.collection import Collection

    coll = Collection.open(home / "collections", "crash")
    try:
        problems = coll.check_consistency()
        ids, _ = coll.store.all_vectors(coll.dim)
        rows = coll.store.get_chunks(ids.tolist())
        docs = coll.store.list_documents()
        per_file = Counter(pathlib.Path(d.source).name for d in docs)
        chunk_keys = Counter(
            (pathlib.Path(next(d.source for d in docs if d.doc_id == r.doc_id)).name, r.text) for r in rows.values()
        )
        return {
            "problems": problems,
            "index_vectors": int(coll.index.ntotal),
            "store_chunks": coll.store.count_chunks(),
            "store_files": coll.store.count_files(),
            "lost": [name for name, _ in files if per_file[name] == 0],
            "duplicate_docs": sum(c - 1 for c in per_file.values() if c > 1),
            "duplicate_chunks": sum(c - 1 for c in chunk_keys.values() if c > 1),
        }
    finally:
        coll.close()


# -- report ------------------------------------------------------------------------------------------


def fmt_s(v: float | None, spec: str = ".3f") -> str:
    return common.fmt(v, spec)


def render(args, argv, startup_s: float, load: dict[str, Any], crash: dict[str, Any] | None, loadavg: str) -> str:
    cmd = common.command_line(pathlib.Path(__file__), [a for a in argv if a not in ("-v", "--verbose")])
    st = load["statuses"]
    other = sum(c for s, c in st.items() if s not in (200, 429, 503, 504))
    health_ok = all(s == 200 for s in load["health_status"].elements())
    crash = crash or {}
    timeout = (
        f"serving.request_timeout_s {args.request_timeout:g} s"
        if args.request_timeout
        else "serving.request_timeout_s at its default, 120 s"
    )
    job = crash.get("job", {})
    prog = job.get("progress", {})
    kills = crash.get("kills", [])
    restarts = ", ".join(f"{k['restart_s']:.0f}" for k in kills) or "-"
    versions = ", ".join(
        f"{k} {v}" for k, v in common.package_versions(("ragqa", "fastapi", "uvicorn", "torch", "transformers")).items()
    )
    retry = "-" if load["retry_after"] is None else "{} / {}".format(*load["retry_after"])
    rows = [
        "| measure | value |",
        "|---|---|",
        f"| `/healthz` during {args.questions} concurrent "
        f"questions: p50 / p95 / max (s) | {fmt_s(load['p50'])} / {fmt_s(load['p95'])} / {fmt_s(load['max'])} "
        f"(target < {HEALTH_TARGET_S}; idle p50 {fmt_s(load['idle_p50'])}) |",
        f"| `/healthz` polls during the load, all 200 | {load['polls']} polls over {load['load_s']:.0f} s, "
        f"{'all 200' if health_ok else dict(load['health_status'])}; {load['over_target']} over {HEALTH_TARGET_S} s |",
        f"| `GET /v1/collections` (a route with a key) during the load: polls, p50 / p95 / max (s) | "
        f"{len(load['keyed'])} ({dict(load['keyed_status'])}), {fmt_s(pct(load['keyed'], 0.5))} / "
        f"{fmt_s(pct(load['keyed'], 0.95))} / {fmt_s(max(load['keyed'], default=None))} |",
        f"| questions: 200 / 429 / 503 / 504 / other | {st.get(200, 0)} / {st.get(429, 0)} / {st.get(503, 0)} / "
        f"{st.get(504, 0)} / {other} |",
        f"| question latency (200s): p50 / p95 / max (s) | {fmt_s(load['ask_p50'], '.1f')} / "
        f"{fmt_s(load['ask_p95'], '.1f')} / {fmt_s(load['ask_max'], '.1f')} |",
        f"| time to refusal (503s): p50 / max (s); Retry-After min / max (s) | {fmt_s(load['refusal_p50'], '.1f')} / "
        f"{fmt_s(load['refusal_max'], '.1f')}; {retry} |",
        f"| 504s: the latest (s) | {fmt_s(load['late_504'], '.1f')} |",
        f"| server memory (VmRSS, MiB): before the load / peak during it / VmHWM | "
        f"{fmt_s(load['rss_before'][0], '.0f')} / {fmt_s(load['rss_peak'], '.0f')} / {fmt_s(load['hwm'], '.0f')} |",
        f"| server + loader processes (VmRSS, MiB): before / peak | {fmt_s(load['rss_before'][1], '.0f')} / "
        f"{fmt_s(load['rss_peak_total'], '.0f')} |",
    ]
    if args.kills:
        rows += [
            f"| kill -9 during a {args.files}-file upload job: kills survived | {len(kills)} of {args.kills} "
            f"(at {', '.join(str(k['processed']) for k in kills) or '-'} files processed; restarts "
            f"{restarts} s) |",
            f"| job after the kills | {job.get('status')}: added {prog.get('added')}, "
            f"replaced {prog.get('replaced')}, unchanged {prog.get('unchanged')}, failed {prog.get('failed')} "
            f"({crash['job_s']:.0f} s with the restarts) |",
            f"| files lost / duplicate documents / duplicate chunks | {len(crash['lost'])} / "
            f"{crash['duplicate_docs']} / {crash['duplicate_chunks']} |",
            f"| FAISS vectors / store chunks / store files; consistency check | {crash['index_vectors']} / "
            f"{crash['store_chunks']} / {crash['store_files']}; {'; '.join(crash['problems']) or 'no problem'} |",
        ]
    notes = [
        "",
        f"- Command: `{cmd}`",
        f"- Date {common.today()}, git {common.git_revision()}; machine: {common.machine_summary()}, load average "
        f"before the run {loadavg}; {versions}.",
        f"- One `ragqa serve` process with the bundled models (start-up {startup_s:.0f} s), default settings "
        f"({timeout}, serving.admission {args.admission}); "
        f"collection `rel`: {args.paragraphs} SQuAD 2.0 public dev paragraphs; {args.questions} of their questions "
        f"posted at once by {args.questions} client threads (`answer_style` {args.style or 'default'}, one question "
        f"each), `/healthz` polled every {args.poll} s from a separate process (and `GET /v1/collections` with the "
        f"key by another thread of it)"
        + (
            f"; the crash job: {args.files} text files of {args.sentences} lines (about "
            f"{len(crash_corpus(1, args.sentences)[0][1]) // 1024 + 1} KB each), killed with SIGKILL at evenly "
            "spaced points of its progress."
            if args.kills
            else "."
        ),
    ]
    if load["slow_at"]:
        slow = ", ".join(f"{s:.2f} s at +{t:.1f} s" for t, s in load["slow_at"][:10])
        notes.append(f"- `/healthz` polls over {HEALTH_TARGET_S} s (time from the first question): {slow}")
    if load["errors"]:
        notes.append(f"- First refused questions: {'; '.join(map(str, load['errors']))}")
    return "\n".join(rows + notes) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=48, help="Questions posted at once (one client thread each).")
    p.add_argument("--paragraphs", type=int, default=12, help="SQuAD paragraphs in the question collection.")
    p.add_argument(
        "--style", default="short", help="answer_style of the questions ('short' bounds the run time; '' = default)."
    )
    p.add_argument(
        "--request-timeout", type=float, default=None, help="serving.request_timeout_s (default: the server's)."
    )
    p.add_argument(
        "--admission",
        choices=("predict", "off"),
        default="predict",
        help="serving.admission: refuse questions predicted to miss their deadline (503) or admit all (off).",
    )
    p.add_argument("--poll", type=float, default=0.1, help="Seconds between two /healthz polls.")
    p.add_argument("--idle", type=float, default=3.0, help="Seconds of polling before the load (idle baseline).")
    p.add_argument("--files", type=int, default=40, help="Files of the upload job killed with SIGKILL.")
    p.add_argument("--sentences", type=int, default=20, help="Lines per file of that job.")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs during the job (0: no upload job).")
    p.add_argument(
        "--models-from",
        type=pathlib.Path,
        default=None,
        help="A workspace's models/ folder to copy in (skips the generator's one-off conversion).",
    )
    p.add_argument(
        "--write", action="store_true", help=f"Record the results in BENCHMARKS.md between {START} and {END}."
    )
    p.add_argument("--append", action="store_true", help="With --write: add this run below the ones recorded.")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def pick_questions(n_paragraphs: int, n_questions: int) -> tuple[list[tuple[str, str]], list[str]]:
    """The first ``n_paragraphs`` SQuAD paragraphs and ``n_questions`` of their answerable questions."""
    paragraphs, asked = squad_items(common.SQUAD)
    chosen = paragraphs[:n_paragraphs]
    names = {name for name, _ in chosen}
    pool = [q for name, q in asked if name in names]
    if not pool:
        raise SystemExit("no questions for the chosen paragraphs")
    return chosen, [pool[i % len(pool)] for i in range(n_questions)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    paragraphs, questions = pick_questions(args.paragraphs, args.questions)
    loadavg = " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ragqa-reliability-"))
    home = tmp / "home"
    home.mkdir()
    env = {"RAGQA_SERVER__MAX_FILES": str(max(32, args.files))}
    if args.request_timeout:
        env["RAGQA_SERVING__REQUEST_TIMEOUT_S"] = str(args.request_timeout)
    env["RAGQA_SERVING__ADMISSION"] = args.admission
    server: Server | None = None
    try:
        if args.models_from:
            copy_models(args.models_from.expanduser(), home / "models")
        server = new_server(home, free_port(), 1, env)
        key = server.create_key()
        startup_s = server.start()
        logger.warning("server up in %.1f s at %s", startup_s, server.base)
        load = health_under_load(server, key, args, paragraphs, questions)
        logger.warning(
            "health under load: p95 %.3f s, max %.3f s; questions %s", load["p95"], load["max"], dict(load["statuses"])
        )
        crash = kill_during_upload(server, key, args, home, env) if args.kills else None
        server = None if args.kills else server  # stopped by kill_during_upload
    finally:
        if server is not None:
            server.stop()
    body = render(args, argv, startup_s, load, crash, loadavg)
    print(body)
    shutil.rmtree(tmp, ignore_errors=True)
    if args.write:
        common.update_markdown_section(common.BENCHMARKS_MD, START, END, body, HEADING, append=args.append)
        print(f"wrote {common.BENCHMARKS_MD}", file=sys.stderr)
    bad = (
        (load["p95"] or 0) > HEALTH_TARGET_S
        or crash is not None
        and (
            crash["lost"]
            or crash["duplicate_docs"]
            or crash["duplicate_chunks"]
            or crash["problems"]
            or crash["job"].get("status") != "done"
        )
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
