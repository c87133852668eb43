"""The answer engine under concurrent load, on any device (a GPU too): continuous batching against the
serialised pipeline, with HTTP and retrieval taken out of the timed loop.

``bench/api_load.py`` measures the whole server on this machine's CPU. This script measures what the
server's answer path does once the evidence is retrieved, so that it runs where only the generator can be
brought (a GPU machine without the ingestion stack): real ``QAPipeline.answer`` calls (prompts, RAG-Token
decoding, the abstention reference, citations, the default answer style) over **recorded** retrievals.

Two steps:

``record`` (here, with the ingestion stack): ingest the SQuAD 2.0 public dev paragraphs with ragqa's
defaults, retrieve every answerable question with the real retriever (hybrid, k 4) and write the results
(chunks, scores, log posterior, the collection's abstention calibration) to a JSON file::

    .venv/bin/python -m bench.engine_load record --out /tmp/retrievals.json

``run`` (anywhere the generator loads): replay those retrievals through two configurations, the same
question stream for both:

* ``serialised``: no scheduler and ``generator.prefix_cache_bytes=0``: every answer holds the model alone
  (the server with ``serving.batching=false``);
* ``batched``: a :class:`rag.scheduler.Scheduler` built as the server builds it (``api.factory.build_scheduler``,
  ``serving`` defaults: admission by predicted finish time included) with
  the prefix KV cache on.

Closed-loop client threads (1, 4 and 16 by default, ``--duration`` seconds each) ask questions in turn;
reported per phase: answers/s, p50/p95 latency, time to the first streamed token, generated tokens per
answer, and (batched) rows per decode step and the mean step time. Then ``--check`` questions answered
16 at a time by the batched engine must equal the serialised answers (greedy)::

    .venv/bin/python -m bench.engine_load run --retrievals /tmp/retrievals.json --device cuda \
        --model /path/SmolLM2-135M-Instruct.Q4_1.gguf --duration 30 --json /tmp/engine.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import pathlib
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench import common

logger = logging.getLogger("bench.engine_load")

SECTION = common.Section("engine", "## Answer engine under load (GPU and CPU)")


# -- recorded retrievals ----------------------------------------------------------------------------


@dataclass
class RecordedCollection:
    """What ``QAPipeline.answer`` reads of a collection besides retrieval: its name and its calibration."""

    name: str
    stored_calibration: dict[str, Any] | None = None

    def calibration(self) -> dict[str, Any] | None:
        return self.stored_calibration


@dataclass
class ReplayRetriever:
    """Answers ``retrieve`` with the retrieval recorded for the question (the real retriever's output)."""

    by_question: dict[str, Any] = field(default_factory=dict)

    def retrieve(self, collection: Any, query: str, k: int | None = None, **_: Any):
        try:
            return self.by_question[query.strip()]
        except KeyError:
            raise KeyError(f"no recorded retrieval for {query!r}: record again with this question") from None


def retrieval_to_json(retrieval) -> dict[str, Any]:
    out = retrieval.to_dict()
    out["log_posterior"] = [float(x) for x in retrieval.log_posterior]
    return out


def retrieval_from_json(data: dict[str, Any]):
    import numpy as np

    from rag.retriever import Retrieval, RetrievedChunk

    chunks = [
        RetrievedChunk(
            chunk_id=c["chunk_id"],
            doc_id=c["doc_id"],
            text=c["text"],
            title=c["title"],
            source=c["source"],
            metadata=c.get("metadata") or {},
            score=c["score"],
            dense_score=c["dense_score"],
            bm25_score=c.get("bm25_score"),
            posterior=c["posterior"],
            rank=c["rank"],
            rrf_score=c.get("rrf_score"),
            dense_rank=c.get("dense_rank"),
            bm25_rank=c.get("bm25_rank"),
        )
        for c in data["chunks"]
    ]
    return Retrieval(
        query=data["query"],
        chunks=chunks,
        log_posterior=np.asarray(data["log_posterior"], dtype=np.float64),
        max_dense_score=data["max_dense_score"],
        mode=data.get("mode", "hybrid"),
        posterior_score=data.get("posterior_score", "dense"),
        temperature=data.get("temperature", 0.05),
    )


def record(args: argparse.Namespace) -> int:
    """Ingest the SQuAD file, retrieve every answerable question and write the recording."""
    from ingest.squad import iter_paragraphs, read_squad

    home = pathlib.Path(args.home or tempfile.mkdtemp(prefix="ragqa-engine-"))
    if args.models_from:
        (home / "models").parent.mkdir(parents=True, exist_ok=True)
        if not (home / "models").exists():
            (home / "models").symlink_to(pathlib.Path(args.models_from).expanduser().resolve())
    settings, ws, qa = common.open_pipeline(home, "squad", common.SQUAD)
    collection = ws.open("squad")
    from rag.calibration import calibrate_if_stale

    calibrate_if_stale(collection, lambda: ws.embedder)  # the abstention threshold a server's collection carries
    paragraphs = iter_paragraphs(read_squad(common.SQUAD))
    questions = [q.question for _, p in paragraphs for q in p.questions if not q.is_impossible]
    questions = list(dict.fromkeys(questions))  # a few questions repeat: one recording each
    k = settings.retriever.k
    out = make_recording(questions, lambda q: qa.retriever.retrieve(collection, q, k), k, collection.calibration())
    out["source"] = str(common.SQUAD.relative_to(common.ROOT))
    pathlib.Path(args.out).write_text(json.dumps(out), encoding="utf-8")
    print(f"recorded {len(questions)} retrievals (k {k}) to {args.out}")
    return 0


def make_recording(questions: list[str], retrieve, k: int, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """The recording ``run`` replays: each question's retrieval (``retrieve(question)``) and the calibration."""
    retrievals = [{"question": q, **retrieval_to_json(retrieve(q))} for q in questions]
    return {"revision": common.git_revision(), "k": k, "calibration": calibration, "retrievals": retrievals}


# -- the two engines -------------------------------------------------------------------------------


@dataclass
class Engine:
    """A QA pipeline over recorded retrievals, with (batched) or without (serialised) a scheduler."""

    name: str
    qa: Any
    collection: RecordedCollection
    scheduler: Any = None
    steps: list[tuple[int, float]] = field(default_factory=list)  # (rows, seconds) per batched forward

    def answer(self, question: str, on_token=None):
        return self.qa.answer(self.collection, question, on_token=on_token)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()


def build_engine(name: str, recording: dict[str, Any], args: argparse.Namespace, models_dir: pathlib.Path) -> Engine:
    from api.factory import build_scheduler
    from api.settings import ServingConfig
    from rag.config import GeneratorConfig, QAConfig
    from rag.generator import Generator
    from rag.qa import QAPipeline

    batched = name == "batched"
    gen_cfg = GeneratorConfig(
        model=args.model,
        gguf_file=args.gguf_file,
        device=args.device,
        int8_decode=getattr(args, "int8_decode", "auto"),
        **({} if batched else {"prefix_cache_bytes": 0}),
    )
    generator = Generator(gen_cfg, models_dir).warm_up()
    retriever = ReplayRetriever({r["question"].strip(): retrieval_from_json(r) for r in recording["retrievals"]})
    collection = RecordedCollection("squad", recording.get("calibration"))
    engine = Engine(name, None, collection)
    if batched:  # as the server builds it (api/factory.py), with the serving defaults
        engine.scheduler = build_scheduler(
            generator,
            ServingConfig(),
            int(recording["k"]),
            on_step=lambda rows, seconds: engine.steps.append((rows, seconds)),
        )
    engine.qa = QAPipeline(retriever, generator, QAConfig(), scheduler=engine.scheduler)  # type: ignore[arg-type]
    return engine


# -- closed-loop phases ----------------------------------------------------------------------------


def run_phase(engine: Engine, questions: list[str], clients: int, duration: float) -> dict[str, Any]:
    """``clients`` threads ask the next question of the stream until ``duration`` seconds have passed (as
    ``bench/api_load.py`` does: answers asked before the end all count, divided by the phase's whole wall time)."""
    stream = itertools.cycle(questions)
    lock = threading.Lock()
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    step_mark = len(engine.steps)
    start = time.perf_counter()
    stop_at = start + duration

    def client() -> None:
        while time.perf_counter() < stop_at:
            with lock:
                question = next(stream)
            first: list[float] = []
            t0 = time.perf_counter()

            def on_token(_text: str, t0=t0, first=first) -> None:
                if not first:
                    first.append(time.perf_counter() - t0)

            try:
                ans = engine.answer(question, on_token=on_token)
            except Exception as exc:  # counted and reported, the phase goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            done = time.perf_counter()
            with lock:  # every answer asked before the end counts; the phase's wall time includes the last ones
                latencies.append(done - t0)
                tokens.append(int(ans.generated_tokens))
                if first:
                    ttfts.append(first[0])

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    steps = engine.steps[step_mark:]
    rows = [r for r, _ in steps]
    secs = [s for _, s in steps]
    return {
        "clients": clients,
        "wall_s": wall,
        "answers": len(latencies),
        "answers_per_s": len(latencies) / wall if wall else None,
        "p50_s": common.pct(latencies, 0.5),
        "p95_s": common.pct(latencies, 0.95),
        "ttft_p50_s": common.pct(ttfts, 0.5),
        "tokens_per_answer": statistics.mean(tokens) if tokens else None,
        "steps": len(steps),
        "rows_per_step": statistics.mean(rows) if rows else None,
        "step_ms": 1000 * statistics.mean(secs) if secs else None,
        "errors": len(errors),
        "error_examples": errors[:3],
    }


def check_identical(batched: Engine, serialised: Engine, questions: list[str], concurrency: int = 16) -> dict:
    """``questions`` answered ``concurrency`` at a time by the batched engine and one at a time by the
    serialised one: greedy answers must be the same tokens."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(concurrency) as pool:
        together = list(pool.map(batched.answer, questions))
    alone = [serialised.answer(q) for q in questions]
    differ = [q for q, a, b in zip(questions, together, alone) if (a.raw_answer, a.answer) != (b.raw_answer, b.answer)]
    return {"checked": len(questions), "identical": len(questions) - len(differ), "differ_examples": differ[:3]}


def device_summary(engine: Engine) -> dict[str, Any]:
    import torch

    gen = engine.qa.generator
    out: dict[str, Any] = {"device": str(gen.device), "dtype": str(gen.dtype).replace("torch.", "")}
    if gen.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(gen.device)
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(gen.device) / 2**30
    else:
        out["cpu"] = common.cpu_model()
    out["int8_decode_layers"] = getattr(gen, "int8_layers", 0)
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    recording = json.loads(pathlib.Path(args.retrievals).read_text(encoding="utf-8"))
    questions = [r["question"] for r in recording["retrievals"]]
    random.Random(args.seed).shuffle(questions)
    clients = [int(c) for c in args.clients.split(",")]
    models_dir = pathlib.Path(args.models_dir or tempfile.mkdtemp(prefix="ragqa-engine-models-"))
    results: dict[str, Any] = {
        "command": common.command_line(pathlib.Path(__file__), sys.argv[1:]),
        "date": common.today(),
        "revision": recording.get("revision"),
        "torch": torch.__version__,
        "questions": len(questions),
        "phases": {},
    }
    names = [n for n in ("serialised", "batched") if n in args.engines.split(",")]
    if not names:
        raise SystemExit(f"--engines {args.engines!r}: name serialised and/or batched")
    engines = {name: build_engine(name, recording, args, models_dir) for name in names}
    try:
        for name, engine in engines.items():
            warm = questions[-4:]  # outside the measured stream's start: first calls pay kernel set-up
            for q in warm:
                engine.answer(q)
            results[name] = device_summary(engine)
            for n in clients:
                logger.info("%s: %d client(s) for %.0f s", name, n, args.duration)
                phase = run_phase(engine, questions, n, args.duration)
                results["phases"].setdefault(str(n), {})[name] = phase
                logger.info("%s %d clients: %s", name, n, {k: v for k, v in phase.items() if k != "error_examples"})
        if "batched" in engines:
            cache = engines["batched"].qa.generator.prefix_cache.stats()
            results["prefix_cache"] = {"hits": cache.hits, "misses": cache.misses}
        if args.check and len(engines) == 2:
            results["check"] = check_identical(engines["batched"], engines["serialised"], questions[: args.check])
            logger.info("check: %s", results["check"])
    finally:
        for engine in engines.values():
            engine.close()
    common.save_json(args.json, results)
    SECTION.publish(render(results), write=args.write, append=True)
    return 0


def render(results: dict[str, Any]) -> str:
    """The phase table (serialised vs batched) of a ``run``'s results."""
    rows = []
    for n, phase in sorted(results["phases"].items(), key=lambda kv: int(kv[0])):
        ser, bat = phase.get("serialised", {}), phase.get("batched", {})
        rows.append(
            f"| {n} | {common.fmt(ser.get('answers_per_s'), '.2f')} | {common.fmt(bat.get('answers_per_s'), '.2f')} | "
            f"{common.fmt(common.ratio(bat.get('answers_per_s'), ser.get('answers_per_s')), '.2f')}x | "
            f"{common.fmt(ser.get('p50_s'), '.2f')} / {common.fmt(bat.get('p50_s'), '.2f')} | "
            f"{common.fmt(ser.get('p95_s'), '.2f')} / {common.fmt(bat.get('p95_s'), '.2f')} "
            f"({common.fmt(common.ratio(bat.get('p95_s'), ser.get('p95_s')), '.2f')}x) | "
            f"{common.fmt(ser.get('ttft_p50_s'), '.2f')} / {common.fmt(bat.get('ttft_p50_s'), '.2f')} | "
            f"{common.fmt(bat.get('tokens_per_answer'), '.1f')} | {common.fmt(bat.get('rows_per_step'), '.1f')} | "
            f"{common.fmt(ser.get('step_ms'), '.1f')} / {common.fmt(bat.get('step_ms'), '.1f')} | "
            f"{ser.get('errors', 0) + bat.get('errors', 0)} |"
        )
    head = (
        "| clients | serialised answers/s | batched answers/s | throughput | p50 s (ser / bat) | p95 s (ser / bat) "
        "| TTFT p50 s | tokens / answer | rows / step | step ms | errors |\n"
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    )
    dev = results.get("batched") or results.get("serialised") or {}
    where = dev.get("gpu") or dev.get("cpu") or "?"
    lines = [
        f"- Command: `{results['command']}`",
        f"- Date: {results['date']}; revision {results.get('revision')}; torch {results.get('torch')}",
        f"- Device: {where} ({dev.get('device')}, {dev.get('dtype')}, int8 decode layers "
        f"{dev.get('int8_decode_layers')}); GPU peak "
        f"{common.fmt(dev.get('gpu_peak_gib'), '.2f')} GiB",
        "",
        head,
        *rows,
        "",
    ]
    cache = results.get("prefix_cache")
    if cache:
        total = cache["hits"] + cache["misses"]
        lines.append(f"- Prefix-cache hit rate (batched): {cache['hits'] / total if total else 0:.2f} of {total}")
    check = results.get("check")
    if check:
        lines.append(
            f"- Greedy answers, batched 16 at a time vs serialised alone: {check['identical']}/{check['checked']} "
            "identical" + (f"; differing: {check['differ_examples']}" if check["differ_examples"] else "")
        )
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    rec = sub.add_parser("record", help="retrieve every answerable SQuAD question and write the recording")
    rec.add_argument("--out", required=True, help="JSON file to write")
    rec.add_argument("--home", default=None, help="RAGQA_HOME (default: a temporary one)")
    rec.add_argument("--models-from", default=None, help="prepared models folder to link (default: the home's)")
    r = sub.add_parser("run", help="replay a recording through the serialised and the batched engine")
    r.add_argument("--retrievals", required=True, help="the JSON file `record` wrote")
    r.add_argument("--model", default="SmolLM2-135M-Instruct", help="generator: bundled name, folder or .gguf file")
    r.add_argument("--gguf-file", default=None, help="GGUF file inside --model when it is a folder")
    r.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    r.add_argument(
        "--int8-decode",
        default="auto",
        choices=("auto", "on", "off"),
        help="the generator's int8 decode copy (generator.int8_decode); the CPU dtype follows RAGQA_CPU_BF16",
    )
    r.add_argument("--models-dir", default=None, help="where converted models are cached (default: temporary)")
    r.add_argument("--clients", default="1,4,16", help="closed-loop client counts, one phase each")
    r.add_argument("--engines", default="serialised,batched", help="which engines to run (the check needs both)")
    r.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    r.add_argument("--check", type=int, default=32, help="questions whose batched and serialised answers must match")
    r.add_argument("--seed", type=int, default=0, help="question order")
    r.add_argument("--json", default=None, help="also write the raw results to this file")
    r.add_argument("--write", action="store_true", help="append the report to BENCHMARKS.md")
    for q in (rec, r):
        q.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    if args.step == "record":
        return record(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
