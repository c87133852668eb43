"""Load test of the REST API on loopback: concurrent askers while an upload is being ingested.

What it does (all traffic to 127.0.0.1 only):

1. starts ``ragqa serve`` on a free loopback port with the real bundled models, in a fresh
   workspace (the converted generator and embedder caches are copied in from ``--models-from``
   when given, to skip the one-off conversion), and creates an API key;
2. creates collection ``bench`` and uploads the sample corpus (``data/sample``), waits for it;
3. runs ``--clients`` concurrent clients asking SQuAD questions for ``--duration`` seconds while,
   two seconds in, the SQuAD dev paragraphs (one ``.txt`` file each) are uploaded in jobs of
   ``--batch`` files and ingested by the server's background worker;
4. reports throughput, p50/p95/max latency and errors (target 0), the ingestion time under load,
   and checks that every uploaded document ended up searchable (each paragraph's own text finds
   it in the top 3 of a read-only search of the collection after the run).

    .venv/bin/python bench/api_load.py --models-from /tmp/gg/home/models --write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import common

logger = logging.getLogger("bench.api_load")

START, END = "<!-- api:start -->", "<!-- api:end -->"
HEADING = "## REST API under load"
SAMPLE = common.ROOT / "data" / "sample"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def squad_items(path: pathlib.Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(file name, paragraph text) per SQuAD paragraph, and the questions not marked impossible."""
    sys.path.insert(0, str(common.ROOT))  # the ragqa packages first: bench/ingest.py would shadow `ingest`
    from ingest.squad import iter_paragraphs, read_squad

    paragraphs, questions = [], []
    for art, p in iter_paragraphs(read_squad(path)):
        name = f"{art.title[:40].replace(' ', '_')}-{p.index:03d}.txt"
        paragraphs.append((name, f"{art.title}\n\n{p.context}\n"))
        questions += [q.question for q in p.questions if not q.is_impossible]
    return paragraphs, questions


class Server:
    def __init__(self, home: pathlib.Path, port: int, log: pathlib.Path) -> None:
        self.home, self.port, self.log_path = home, port, log
        self.env = common.offline_env(RAGQA_HOME=str(home))
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{port}"

    def create_key(self) -> str:
        out = subprocess.run(
            [common.venv_bin("ragqa"), "keys", "create", "bench", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["key"]

    def start(self, timeout: float = 600) -> float:
        import httpx

        t0 = time.perf_counter()
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                common.venv_bin("ragqa"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise SystemExit("server did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()


async def wait_job(client, job_id: str, timeout: float = 1800) -> dict[str, Any]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("done", "failed"):
            return job
        await asyncio.sleep(0.25)
    raise SystemExit(f"job {job_id} did not finish")


async def upload(client, files: list[tuple[str, str]], batch: int) -> list[str]:
    ids = []
    for i in range(0, len(files), batch):
        part = [("files", (name, text.encode("utf-8"), "text/plain")) for name, text in files[i : i + batch]]
        r = await client.post("/v1/collections/bench/documents", files=part)
        r.raise_for_status()
        ids.append(r.json()["job_id"])
    return ids


async def run_load(base: str, key: str, args, paragraphs, questions) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600, limits=limits) as client:
        r = await client.post("/v1/collections", json={"name": "bench"})
        r.raise_for_status()
        seed_files = [
            ("files", (p.name, p.read_bytes(), "application/octet-stream"))
            for p in sorted(SAMPLE.iterdir())
            if p.suffix in (".md", ".txt", ".html", ".pdf", ".docx", ".jsonl")
        ]
        r = await client.post("/v1/collections/bench/documents", files=seed_files)
        r.raise_for_status()
        seed_job = await wait_job(client, r.json()["job_id"])

        latencies: list[float] = []
        errors: list[str] = []
        abstained = 0
        t_start = time.perf_counter()
        deadline = t_start + args.duration

        async def asker(i: int) -> None:
            nonlocal abstained
            n = i
            while time.perf_counter() < deadline:
                q = questions[n % len(questions)]
                n += args.clients
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/v1/ask", json={"question": q, "collection": "bench"})
                    if resp.status_code != 200:
                        errors.append(f"{resp.status_code}: {resp.text[:200]}")
                        continue
                    abstained += bool(resp.json()["abstained"])
                    latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        async def uploader() -> dict[str, Any]:
            await asyncio.sleep(2.0)
            t0 = time.perf_counter()
            ids = await upload(client, paragraphs, args.batch)
            jobs = [await wait_job(client, j) for j in ids]
            return {"seconds": time.perf_counter() - t0, "jobs": jobs, "finished_at": time.perf_counter() - t_start}

        results = await asyncio.gather(uploader(), *(asker(i) for i in range(args.clients)))
        elapsed = time.perf_counter() - t_start
        ingest = results[0]
        metrics = (await client.get("/metrics")).text
        coll = (await client.get("/v1/collections/bench")).json()
    return {
        "latencies": latencies,
        "errors": errors,
        "abstained": abstained,
        "elapsed": elapsed,
        "ingest": ingest,
        "seed_job": seed_job,
        "metrics": metrics,
        "collection": coll,
    }


def check_searchable(home: pathlib.Path, paragraphs: list[tuple[str, str]]) -> tuple[int, list[str]]:
    """Each uploaded paragraph's document exists and its own text finds it in the top 3."""
    os.environ["RAGQA_HOME"] = str(home)
    from api.factory import RagStack
    from api.settings import Settings

    ws = RagStack(Settings(home=home)).workspace
    missing = []
    uploads = (home / "uploads" / "bench").resolve()
    with ws.open("bench", readonly=True) as coll:
        texts = [text for _, text in paragraphs]
        vecs = ws.embedder.embed_documents([t[:1000] for t in texts])
        for (name, _), vec in zip(paragraphs, vecs):
            source = str(uploads / name)
            if not coll.store.list_documents(source=source):
                missing.append(f"{name}: not in the collection")
                continue
            hits = coll.search(vec, 3)
            if source not in {h.source for h in hits}:
                missing.append(f"{name}: not in the top 3 for its own text")
    return len(paragraphs) - len(missing), missing


def render(args, argv, res: dict[str, Any], startup_s: float, found: int, missing: list[str], n_files: int) -> str:
    lat = res["latencies"]
    ingest = res["ingest"]
    files_failed = sum(j["progress"]["failed"] for j in ingest["jobs"])
    cmd = common.command_line(pathlib.Path(__file__), [a for a in argv if a not in ("-v", "--verbose")])
    rows = [
        ("clients", str(args.clients)),
        ("duration (s)", f"{res['elapsed']:.1f}"),
        ("answers", str(len(lat))),
        ("throughput (answers/s)", f"{len(lat) / res['elapsed']:.2f}"),
        (
            "latency p50 / p95 / max (s)",
            f"{pct(lat, 0.5):.2f} / {pct(lat, 0.95):.2f} / {max(lat):.2f}" if lat else "n/a",
        ),
        ("mean service time (s) = duration / answers", f"{res['elapsed'] / len(lat):.2f}" if lat else "n/a"),
        ("errors", str(len(res["errors"]))),
        ("abstained answers", str(res["abstained"])),
        ("files uploaded during the load (jobs)", f"{n_files} ({len(ingest['jobs'])})"),
        ("ingestion time under load (s)", f"{ingest['seconds']:.1f}"),
        ("files failed", str(files_failed)),
        ("uploaded documents searchable (own text in top 3)", f"{found} / {n_files}"),
        (
            "collection at the end: documents / chunks / generation",
            f"{res['collection']['documents']} / {res['collection']['chunks']} / {res['collection']['generation']}",
        ),
        ("server start-up incl. model load (s)", f"{startup_s:.1f}"),
    ]
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    versions = ", ".join(
        f"{k} {v}"
        for k, v in common.package_versions(
            ("ragqa", "fastapi", "uvicorn", "torch", "transformers", "faiss-cpu")
        ).items()
    )
    notes = [
        f"- Command: `{cmd}`",
        f"- Date {common.today()}, git {common.git_revision()}; machine: {common.machine_summary()}; {versions}.",
        "- Models: bundled all-MiniLM-L6-v2 (ONNX) embedder and SmolLM2-135M-Instruct generator on CPU; "
        f"default QA settings (mode {res.get('mode', 'rag-token')}, k 4, at most 24 new tokens).",
        f"- Load: {args.clients} clients in a closed loop asking SQuAD dev questions over loopback for {args.duration:.0f} s; "
        f"2 s in, {n_files} SQuAD paragraphs (one .txt each) are uploaded in jobs of {args.batch} files and ingested by the "
        "server's single background worker while the questions go on, answered from the last committed state.",
        "- Generation is serialised (one model, one lock), so answers/s is bounded by one answer's generation time and "
        "latency grows with the number of clients (queueing): p50 ≈ clients × service time. Throughput scales with "
        "faster generation (GPU, smaller k, `stuff` mode), not with more clients.",
    ]
    if missing:
        notes.append(f"- Not searchable: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}")
    if res["errors"]:
        notes.append(f"- First errors: {'; '.join(res['errors'][:3])}")
    return table + "\n\n" + "\n".join(notes) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=60.0, help="Seconds of asking.")
    p.add_argument("--batch", type=int, default=32, help="Files per upload job.")
    p.add_argument("--limit-files", type=int, default=None, help="Upload only the first N SQuAD paragraphs.")
    p.add_argument(
        "--models-from",
        type=pathlib.Path,
        default=None,
        help="A workspace's models/ folder to copy in (skips the generator's one-off conversion).",
    )
    p.add_argument("--home", type=pathlib.Path, default=None, help="Workspace to use (default: a fresh temporary one).")
    p.add_argument(
        "--write", action="store_true", help=f"Record the results in BENCHMARKS.md between {START} and {END}."
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    tmp = None
    home = args.home
    if home is None:
        tmp = tempfile.mkdtemp(prefix="ragqa-api-bench-")
        home = pathlib.Path(tmp) / "home"
    home.mkdir(parents=True, exist_ok=True)
    if args.models_from and not (home / "models").exists():
        shutil.copytree(args.models_from, home / "models", symlinks=True)
    paragraphs, questions = squad_items(common.SQUAD)
    if args.limit_files:
        paragraphs = paragraphs[: args.limit_files]
    server = Server(home, free_port(), home / "server.log")
    try:
        key = server.create_key()
        startup = server.start()
        print(
            f"server up in {startup:.1f} s at {server.base}; {args.clients} clients for {args.duration:.0f} s",
            file=sys.stderr,
        )
        res = asyncio.run(run_load(server.base, key, args, paragraphs, questions))
    finally:
        server.stop()
    found, missing = check_searchable(home, paragraphs)
    body = render(args, argv, res, startup, found, missing, len(paragraphs))
    print(body)
    print(
        json.dumps(
            {
                "answers": len(res["latencies"]),
                "errors": len(res["errors"]),
                "searchable": found,
                "uploaded": len(paragraphs),
            }
        )
    )
    if args.write:
        common.update_markdown_section(common.BENCHMARKS_MD, START, END, body, HEADING)
        print(f"wrote {common.BENCHMARKS_MD}", file=sys.stderr)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not res["errors"] and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
