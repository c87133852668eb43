"""Load test of the REST API on loopback: the serialised server against continuous batching.

One run, two configurations, the same question stream (SQuAD 2.0 public dev questions, default mode
rag-token, k 4), each against its own ``ragqa serve`` process with the real bundled models:

* ``serialised``: ``serving.batching=false`` and ``generator.prefix_cache_bytes=0`` — every answer
  holds the model alone, one after the other (the server before the scheduler);
* ``batched``: the defaults — one scheduler thread decodes all concurrent answers in shared steps and
  reuses the chunks' prompt-prefix KV states.

For each: create collection ``bench`` from ``data/sample`` and the SQuAD paragraphs (so every
question has its article), then closed-loop phases of 1, 4 and 16 clients (``--duration`` seconds
each) asking with ``stream=true`` (time to first token = first ``token`` event). During the
16-client phase ``--upload-files`` more documents are uploaded and ingested by the background worker.
Then: 50 sampled questions asked 16 at a time and again one at a time must give the same answers
(greedy), every uploaded file must be searchable, and the server's peak RSS and its Prometheus
counters (prefix-cache hits, decode steps) are read.

    .venv/bin/python -m bench.api_load --models-from ~/.ragqa/models --write
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

SECTION = common.Section("api", "## REST API under load")
SAMPLE = common.ROOT / "data" / "sample"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def squad_items(path: pathlib.Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(file name, paragraph text) per SQuAD paragraph, and (file name, question) for the questions not
    marked impossible."""
    sys.path.insert(0, str(common.ROOT))  # the ragqa packages first: bench/ingest.py would shadow `ingest`
    from ingest.squad import iter_paragraphs, read_squad

    paragraphs, questions = [], []
    for art, p in iter_paragraphs(read_squad(path)):
        name = f"{art.title[:40].replace(' ', '_')}-{p.index:03d}.txt"
        paragraphs.append((name, f"{art.title}\n\n{p.context}\n"))
        questions += [(name, q.question) for q in p.questions if not q.is_impossible]
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


CONFIGS: dict[str, dict[str, str]] = {
    "serialised": {"RAGQA_SERVING__BATCHING": "false", "RAGQA_GENERATOR__PREFIX_CACHE_BYTES": "0"},
    "batched": {},
}


#: a refused question (503 / 429 with Retry-After) is asked again after the wait, at most this many times
MAX_RETRIES = 5
#: rows of the report that count (shown as integers)
COUNTS = ("answers", "errors", "refused")


async def ask_stream(client, question: str) -> dict[str, Any]:
    """One streamed question as a well-behaved client asks it: latency (from the first try), time to first token,
    the answer (or the error), and ``refused``, how often the server said 503 / 429 with ``Retry-After`` first
    (the client waits that long and asks again, up to :data:`MAX_RETRIES` times)."""
    t0 = time.perf_counter()
    for refused in range(MAX_RETRIES + 1):
        res = await _ask_once(client, question, t0)
        wait = res.pop("retry_after", None)
        if wait is None or refused == MAX_RETRIES:
            return {**res, "refused": refused}
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")


async def _ask_once(client, question: str, t0: float) -> dict[str, Any]:
    ttft = None
    answer = None
    async with client.stream(
        "POST", "/v1/ask", json={"question": question, "collection": "bench", "stream": True}
    ) as r:
        if r.status_code in (429, 503) and r.headers.get("retry-after", "").isdigit():
            body = (await r.aread())[:200]
            return {"error": f"{r.status_code}: {body!r}", "retry_after": float(r.headers["retry-after"])}
        if r.status_code != 200:
            return {"error": f"{r.status_code}: {(await r.aread())[:200]!r}"}
        event = None
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "token" and ttft is None:
                    ttft = time.perf_counter() - t0
                elif event == "answer":
                    answer = json.loads(line[6:])
                elif event == "error":
                    return {"error": line[6:200]}
    if answer is None:
        return {"error": "the stream ended without an answer"}
    return {
        "latency": time.perf_counter() - t0,
        "ttft": ttft if ttft is not None else time.perf_counter() - t0,
        "answer": answer,
    }


async def phase(client, clients: int, duration: float, questions: list[str], offset: int) -> dict[str, Any]:
    latencies, ttfts, errors = [], [], []
    tokens: list[int] = []
    refused = [0]
    deadline = time.perf_counter() + duration
    t_start = time.perf_counter()

    async def asker(i: int) -> None:
        n = offset + i
        while time.perf_counter() < deadline:
            q = questions[n % len(questions)]
            n += clients
            try:
                res = await ask_stream(client, q)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            refused[0] += res.get("refused", 0)
            if "error" in res:
                errors.append(res["error"])
            else:
                latencies.append(res["latency"])
                ttfts.append(res["ttft"])
                tokens.append(res["answer"].get("generated_tokens") or 0)

    await asyncio.gather(*(asker(i) for i in range(clients)))
    return {
        "clients": clients,
        "elapsed": time.perf_counter() - t_start,
        "latencies": latencies,
        "ttfts": ttfts,
        "tokens": tokens,
        "errors": errors,
        "refused": refused[0],
    }


async def same_answers(client, questions: list[str]) -> tuple[int, list[str]]:
    """The questions asked 16 at a time, then one at a time: the greedy answers must be identical."""

    async def ask(q: str) -> dict[str, Any]:
        r = await client.post("/v1/ask", json={"question": q, "collection": "bench"})
        r.raise_for_status()
        return r.json()

    together: list[dict[str, Any]] = []
    for i in range(0, len(questions), 16):
        together += await asyncio.gather(*(ask(q) for q in questions[i : i + 16]))
    alone = [await ask(q) for q in questions]
    differ = [
        f"{a['question']!r}: {a['answer']!r} vs {b['answer']!r}"
        for a, b in zip(together, alone)
        if (a["answer"], a["generated_tokens"]) != (b["answer"], b["generated_tokens"])
    ]
    return len(questions) - len(differ), differ


def metric(text: str, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` (or ``name_total``) in Prometheus text."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in (name, name + "_total"):
            return float(parts[1])
    return None


def decode_delta(before: str, after: str) -> dict[str, float]:
    """The scheduler's decode steps, rows and step seconds between two /metrics readings (one phase)."""

    def delta(name: str) -> float:
        return (metric(after, name) or 0.0) - (metric(before, name) or 0.0)

    return {
        "steps": delta("ragqa_batch_rows_count"),
        "rows": delta("ragqa_batch_rows_sum"),
        "seconds": delta("ragqa_decode_seconds"),
    }


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def run_config(base: str, key: str, args, seed_files, uploads, questions, batching: bool) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=max(args.clients) + 8)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=900, limits=limits) as client:
        (await client.post("/v1/collections", json={"name": "bench"})).raise_for_status()
        for i in range(0, len(seed_files), args.batch):
            r = await client.post(
                "/v1/collections/bench/documents",
                files=[
                    ("files", (name, text.encode("utf-8"), "text/plain"))
                    for name, text in seed_files[i : i + args.batch]
                ],
            )
            r.raise_for_status()
            await wait_job(client, r.json()["job_id"])
        await ask_stream(client, questions[0])  # warm-up: first-call allocations, not measured
        phases, ingest = [], None
        for n, clients in enumerate(args.clients):
            logger.warning("  %d client(s) for %.0f s", clients, args.duration)
            before = (await client.get("/metrics")).text
            if clients == max(args.clients) and uploads:

                async def uploader() -> dict[str, Any]:
                    await asyncio.sleep(2.0)
                    t0 = time.perf_counter()
                    ids = await upload(client, uploads, args.batch)
                    return {"seconds": time.perf_counter() - t0, "jobs": [await wait_job(client, j) for j in ids]}

                res, ingest = await asyncio.gather(
                    phase(client, clients, args.duration, questions, 1000 * n), uploader()
                )
            else:
                res = await phase(client, clients, args.duration, questions, 1000 * n)
            res["decode"] = decode_delta(before, (await client.get("/metrics")).text)
            phases.append(res)
        sample = questions[:: max(1, len(questions) // args.check)][: args.check] if batching and args.check else []
        same, differ = await same_answers(client, sample)  # only where answers share batches
        metrics = (await client.get("/metrics")).text
        coll = (await client.get("/v1/collections/bench")).json()
    return {
        "phases": phases,
        "ingest": ingest,
        "same": same,
        "differ": differ,
        "checked": len(sample),
        "metrics": metrics,
        "collection": coll,
    }


def bandwidth_bound(models_dir: pathlib.Path) -> dict[str, Any]:
    """The server's generator as it loads it here (dtype and int8 copy from this environment), its bytes read per
    decode step and this machine's memory bandwidth (``bench.qa``'s measures): the bound on decode steps/s."""
    from api.settings import Settings
    from bench.qa import decode_weight_bytes, memory_bandwidth_gbs
    from rag.generator import Generator

    with tempfile.TemporaryDirectory() as tmp:
        generator = Generator(Settings(home=pathlib.Path(tmp)).generator, models_dir)
        model = generator.model
        weight_bytes = decode_weight_bytes(model)
        dtype = str(next(model.parameters()).dtype) + (" + int8 decode copy" if generator.int8_layers else "")
    bandwidth = memory_bandwidth_gbs()
    return {
        "bandwidth_gbs": bandwidth,
        "weight_bytes": weight_bytes,
        "dtype": dtype,
        "bound_steps_per_s": bandwidth * 1e9 / weight_bytes,
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


def fmt_s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def render(args, argv, results: dict[str, dict[str, Any]]) -> str:
    cmd = common.command_line(pathlib.Path(__file__), [a for a in argv if a not in ("-v", "--verbose")])
    names = list(results)
    header = (
        "| clients | measure | "
        + " | ".join(names)
        + " | batched / serialised |\n|---|---|"
        + "---|" * (len(names) + 1)
    )
    rows = []
    for i, clients in enumerate(args.clients):

        def val(name: str, what: str, i: int = i) -> float | None:
            p = results[name]["phases"][i]
            lat = p["latencies"]
            return {
                "throughput": len(lat) / p["elapsed"] if p["elapsed"] else None,
                "p50": common.pct(lat, 0.5),
                "p95": common.pct(lat, 0.95),
                "ttft": common.pct(p["ttfts"], 0.5),
                "answers": float(len(lat)),
                "errors": float(len(p["errors"])),
                "refused": float(p.get("refused", 0)),
                "tokens": (sum(p["tokens"]) / len(p["tokens"])) if p.get("tokens") else None,
                "rows": (p["decode"]["rows"] / p["decode"]["steps"]) if p.get("decode", {}).get("steps") else None,
                "step_ms": (1000 * p["decode"]["seconds"] / p["decode"]["steps"])
                if p.get("decode", {}).get("steps")
                else None,
            }[what]

        for what, label in (
            ("throughput", "answers/s"),
            ("p50", "latency p50 (s)"),
            ("p95", "latency p95 (s)"),
            ("ttft", "time to first token p50 (s)"),
            ("answers", "answers"),
            ("errors", "errors"),
            ("refused", "refused, asked again after Retry-After"),
            ("tokens", "generated tokens per answer (mean)"),
            ("rows", "rows per decode step (mean)"),
            ("step_ms", "decode step (ms, mean)"),
        ):
            vals = [val(n, what) for n in names]
            ratio = common.ratio(vals[-1], vals[0]) if what in ("throughput", "p50", "p95", "ttft") else None
            rows.append(
                f"| {clients} | {label} | "
                + " | ".join(str(int(v or 0)) if what in COUNTS else fmt_s(v) for v in vals)
                + f" | {fmt_s(ratio) + 'x' if ratio else ''} |"
            )
    extra = []
    for name in names:
        r = results[name]
        m = r["metrics"]
        hits, misses = metric(m, "ragqa_prefix_cache_hits"), metric(m, "ragqa_prefix_cache_misses")
        rows_sum, step_s = metric(m, "ragqa_batch_rows_sum"), metric(m, "ragqa_decode_seconds")
        steps = metric(m, "ragqa_batch_rows_count")
        ingest = r["ingest"] or {"seconds": 0.0, "jobs": []}
        failed = sum(j["progress"]["failed"] for j in ingest["jobs"])
        extra.append(
            f"- **{name}**: prefix-cache hit rate "
            f"{(hits / (hits + misses)) if hits is not None and misses and hits + misses else 0:.2f}"
            f" ({int(hits or 0)} hits, {int(misses or 0)} misses); decode steps {int(steps or 0)}, "
            f"mean rows per step {(rows_sum / steps) if steps else 0:.1f}, "
            f"decode row-tokens/s {(rows_sum / step_s) if step_s else 0:.1f}; "
            f"upload during the {max(args.clients)}-client phase: {len(args.upload_names)} files in "
            f"{ingest['seconds']:.1f} s, {failed} failed, searchable {r['searchable'][0]} / {len(args.upload_names)}; "
            f"greedy answers identical asked 16 at a time and alone: {r['same']} / {r['checked']}; "
            f"peak RSS {fmt_s(r['rss_mib'])} MiB; start-up {r['startup_s']:.1f} s; "
            f"errors {sum(len(p['errors']) for p in r['phases'])}."
        )
    versions = ", ".join(
        f"{k} {v}" for k, v in common.package_versions(("ragqa", "fastapi", "uvicorn", "torch", "transformers")).items()
    )
    notes = [
        f"- Command: `{cmd}`",
        f"- Date {common.today()}, git {common.git_revision()}; machine: {common.machine_summary()}; {versions}.",
        "- Same question stream for both servers (SQuAD 2.0 public dev questions, closed loop, `stream=true`), default "
        "QA settings (mode rag-token, k 4, greedy); each server has its own fresh workspace with the same documents.",
        *extra,
    ]
    bound = getattr(args, "bound", None)
    if bound and "batched" in results:
        measured = ", ".join(
            f"{clients} client{'s' if clients > 1 else ''} {p['decode']['steps'] / p['decode']['seconds']:.1f} steps/s "
            f"of {p['decode']['rows'] / p['decode']['steps']:.1f} rows"
            for clients, p in zip(args.clients, results["batched"]["phases"])
            if p.get("decode", {}).get("seconds")
        )
        notes.append(
            "- Decode against the memory-bandwidth bound (batched server): numpy copy "
            f"{bound['bandwidth_gbs']:.1f} GB/s, {bound['weight_bytes'] / 1e6:.0f} MB of weights read per decode "
            f"step ({bound['dtype']}), so at most {bound['bound_steps_per_s']:.1f} steps/s; "
            f"measured (decode seconds only): {measured}."
        )
    for name in names:
        errs = [e for p in results[name]["phases"] for e in p["errors"]]
        if errs:
            notes.append(f"- {name}: first errors: {'; '.join(errs[:3])}")
        if results[name]["differ"]:
            notes.append(f"- {name}: answers that differ: {'; '.join(results[name]['differ'][:3])}")
    return header + "\n" + "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4, 16],
        help="Comma-separated client counts, one phase each (the largest gets the upload).",
    )
    p.add_argument("--duration", type=float, default=120.0, help="Seconds of asking per phase.")
    p.add_argument("--configs", default="serialised,batched", help="Which servers to run, in order.")
    p.add_argument("--batch", type=int, default=32, help="Files per upload job.")
    p.add_argument("--upload-files", type=int, default=40, help="SQuAD paragraphs uploaded during the last phase.")
    p.add_argument("--check", type=int, default=50, help="Questions asked together and alone at the end.")
    p.add_argument(
        "--models-from",
        type=pathlib.Path,
        default=None,
        help="A workspace's models/ folder to copy in (skips the generator's one-off conversion).",
    )
    markers = f"{SECTION.start_marker} and {SECTION.end_marker}"
    p.add_argument("--write", action="store_true", help=f"Record the results in BENCHMARKS.md between {markers}.")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    paragraphs, asked = squad_items(common.SQUAD)
    uploads = paragraphs[: args.upload_files]
    # only questions whose paragraph is in the collection from the start: the files uploaded during the
    # 16-client phase are not there before it, and their questions would abstain at once (the default
    # per-collection evidence threshold), turning a load test of answering into one of abstaining
    uploaded = {name for name, _ in uploads}
    questions = [q for name, q in asked if name not in uploaded]
    seed = [
        (p.name, p.read_text(encoding="utf-8", errors="replace"))
        for p in sorted(SAMPLE.iterdir())
        if p.suffix in (".md", ".txt")
    ] + paragraphs[args.upload_files :]
    args.upload_names = [name for name, _ in uploads]
    results: dict[str, dict[str, Any]] = {}
    for name in args.configs.split(","):
        tmp = tempfile.mkdtemp(prefix=f"ragqa-api-bench-{name}-")
        home = pathlib.Path(tmp) / "home"
        home.mkdir(parents=True)
        if args.models_from:
            shutil.copytree(args.models_from, home / "models", symlinks=True)
        server = Server(home, free_port(), home / "server.log")
        server.env.update({"RAGQA_SERVING__REQUEST_TIMEOUT_S": "900", **CONFIGS[name]})
        try:
            key = server.create_key()
            startup = server.start()
            logger.warning("%s server up in %.1f s at %s", name, startup, server.base)
            res = asyncio.run(run_config(server.base, key, args, seed, uploads, questions, name != "serialised"))
            res["rss_mib"] = peak_rss_mib(server.proc.pid) if server.proc else None
            res["startup_s"] = startup
        finally:
            server.stop()
        res["searchable"] = check_searchable(home, uploads)
        results[name] = res
        shutil.rmtree(tmp, ignore_errors=True)
    if args.models_from:
        args.bound = bandwidth_bound(pathlib.Path(args.models_from))
    body = render(args, argv, results)
    print(body)
    if args.write:
        SECTION.write(body)
        print(f"wrote {common.BENCHMARKS_MD}", file=sys.stderr)
    bad = any(p["errors"] for r in results.values() for p in r["phases"]) or any(r["differ"] for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
