"""Scaling-out benchmark: ragqa ingest on a Ray cluster of local nodes, against the plain single process.

    .venv/bin/python -m bench.scale [--only ingest-overhead,embedding-throughput] [--limit N] [--repeat N] \
        [--json FILE] [-v]

One function per measurement (``MEASUREMENTS``; ``--only`` picks some). Every ``ragqa ingest`` is a whole
process timed from spawn to exit, on the same corpus, into a fresh collection of one workspace whose embedder
cache (ONNX) was built by an untimed warm-up ingest of a few pages. One loopback cluster
(:class:`ingest.ray_local.LocalRayCluster`: ``ray start --head`` and ``ray start --address``, ``--num-cpus 1``
and its own temp dir per node) serves the whole run and is torn down at the end. Cluster start-up is not in
the ingest times (it is reported apart); a driver's connection and its workers' start-up are.

Measurements
  ingest-overhead       ``ragqa ingest DOCS -c NAME`` against ``... --ray ADDRESS`` on a one-node cluster
                        (target: at most 1.3x the single-process wall time). The runs alternate.
  embedding-throughput  chunks embedded per second of ingest time (the report's ``seconds``: loading,
                        chunking, embedding and committing, the driver's connection and the workers' start
                        included) with 1 node and then 2 nodes (the one-node runs of ingest-overhead count).

Corpus: the Python 3.11 HTML docs (tutorial, faq, howto, reference: 57 pages; Debian package python3.11-doc)
as in ``bench/ingest.py``; ``--limit N`` keeps the first N pages.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from ingest.ray_local import LocalRayCluster, driver_env

logger = logging.getLogger("bench.scale")

OVERHEAD_TARGET = 1.3
WARM_UP_PAGES = 1


@dataclass
class Run:
    seconds: float  # the whole process
    ingest_seconds: float  # the report's own figure
    chunks: int

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.ingest_seconds if self.ingest_seconds else 0.0


@dataclass
class Results:
    files: int = 0
    rows: list[tuple[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    runs: dict[str, list[Run]] = field(default_factory=dict)  # "plain", "ray-1-node", "ray-2-nodes"
    startup_s: dict[str, float] = field(default_factory=dict)  # "head node", "second node"
    load: list[float] = field(default_factory=list)  # 1-minute load average at start and end


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="ragqa-bench-scale-", dir=args.workdir))
        self.home = self.work / "home"
        # This tree's code in the CLI processes and in the Ray workers (they inherit the nodes' environment);
        # drivers and nodes agree on the loopback cluster's settings (no token auth).
        self.env = driver_env(common.offline_env(RAGQA_HOME=str(self.home), PYTHONPATH=str(common.ROOT)))
        self.res = Results()
        self.pages = self.build_corpus()
        self.corpus = self.work / "corpus"
        self.cluster: LocalRayCluster | None = None
        self._n = 0

    def build_corpus(self) -> list[Path]:
        if not common.PY_DOCS.is_dir():
            raise SystemExit(
                f"The Python 3.11 HTML docs are not under {common.PY_DOCS}: apt-get install python3.11-doc"
            )
        pages = [p for s in common.PY_DOCS_SECTIONS for p in sorted((common.PY_DOCS / s).rglob("*.html"))]
        pages = pages[: self.args.limit] if self.args.limit else pages
        copies = []
        for src in pages:
            dest = self.work / "corpus" / src.relative_to(common.PY_DOCS)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            copies.append(dest)
        self.res.files = len(pages)
        return copies

    def ingest(self, *extra: str, paths: list[Path] | None = None) -> Run | None:
        """One timed ``ragqa ingest`` of the corpus (or ``paths``) into a new collection."""
        self._n += 1
        targets = [str(p) for p in paths] if paths else [str(self.corpus)]
        cmd = [sys.executable, "-m", "api.cli", "ingest", *targets, "-c", f"run{self._n}", "--json", *extra]
        timed = common.run_timed(cmd, env=self.env, cwd=common.ROOT)
        report = timed.last_json()
        if not timed.ok or report is None or not report.get("ok"):
            self.res.failures.append(timed.describe_failure())
            logger.error("%s", timed.describe_failure())
            return None
        return Run(timed.seconds, float(report["seconds"]), int(report["chunks"]))

    def record(self, kind: str, run: Run | None) -> None:
        if run is not None:
            self.res.runs.setdefault(kind, []).append(run)
            logger.info("%s: %.1f s wall, %.1f s ingest, %d chunks", kind, run.seconds, run.ingest_seconds, run.chunks)

    def warm_up(self) -> None:
        """Untimed: the embedder cache (ONNX, built by a plain ingest of a few pages) and the OS file cache."""
        for page in self.pages:
            page.read_bytes()
        self.ingest(paths=self.pages[:WARM_UP_PAGES])

    def cluster_address(self, nodes: int) -> str:
        """The loopback cluster, grown to ``nodes`` nodes of one CPU (start-up timed, not part of any ingest)."""
        if self.cluster is None:
            self.cluster = LocalRayCluster(self.env)
        while len(self.cluster.nodes) < nodes:
            which = "head node" if not self.cluster.nodes else f"node {len(self.cluster.nodes) + 1} joining"
            self.res.startup_s[which] = self.cluster.add_node(num_cpus=1)
        return self.cluster.address

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def _median(values: list[float]) -> float | None:
    return common.Samples(values).median


def _load_average() -> float:
    return os.getloadavg()[0]


def measure_ingest_overhead(bench: Bench) -> None:
    """Plain single-process ingest against the same ingest on a one-node Ray cluster (alternating)."""
    address = bench.cluster_address(1)
    for rep in range(bench.args.repeat):
        for on_ray in (False, True) if rep % 2 == 0 else (True, False):
            if on_ray:
                bench.record("ray-1-node", bench.ingest("--ray", address))
            else:
                bench.record("plain", bench.ingest())
    runs = bench.res.runs
    plain = _median([r.seconds for r in runs.get("plain", [])])
    ray = _median([r.seconds for r in runs.get("ray-1-node", [])])
    ratio = common.ratio(ray, plain)
    met = "n/a" if ratio is None else ("yes" if ratio <= OVERHEAD_TARGET else "no")
    bench.res.rows += [
        ("plain single-process ingest, wall s (median)", common.fmt(plain)),
        ("--ray on 1 node, wall s (median)", common.fmt(ray)),
        (f"Ray overhead, wall (target <= {OVERHEAD_TARGET}x)", f"{common.fmt(ratio, '.2f')}x (met: {met})"),
    ]


def measure_embedding_throughput(bench: Bench) -> None:
    """Chunks per second of ingest time on one node, then on two (one CPU each)."""
    if not bench.res.runs.get("ray-1-node"):
        address = bench.cluster_address(1)
        for _ in range(bench.args.repeat):
            bench.record("ray-1-node", bench.ingest("--ray", address))
    address = bench.cluster_address(2)
    for _ in range(bench.args.repeat):
        bench.record("ray-2-nodes", bench.ingest("--ray", address))
    rates: dict[str, float | None] = {}
    for kind in ("plain", "ray-1-node", "ray-2-nodes"):
        runs = bench.res.runs.get(kind, [])
        if runs:
            rates[kind] = _median([r.chunks_per_s for r in runs])
            bench.res.rows.append(
                (
                    f"{kind}: chunks/s of ingest time ({runs[0].chunks} chunks; ingest s median)",
                    f"{common.fmt(rates[kind])} ({common.fmt(_median([r.ingest_seconds for r in runs]))} s)",
                )
            )
    speedup = common.ratio(rates.get("ray-2-nodes"), rates.get("ray-1-node"))
    bench.res.rows.append(("2 nodes / 1 node, chunks/s", f"{common.fmt(speedup, '.2f')}x"))


MEASUREMENTS: dict[str, Callable[[Bench], None]] = {
    "ingest-overhead": measure_ingest_overhead,
    "embedding-throughput": measure_embedding_throughput,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated measurements to run (default all): {', '.join(MEASUREMENTS)}",
    )
    p.add_argument("--limit", type=int, default=None, help="ingest only the first N pages of the docs corpus")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration (median reported)")
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary work folder")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and every run here")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = sorted(only - set(MEASUREMENTS))
    if unknown:
        p.error(f"unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    args.only = [m for m in MEASUREMENTS if m in only]  # this order: the one-node runs before a node joins
    if args.repeat < 1 or (args.limit is not None and args.limit < 1):
        p.error("--repeat and --limit must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # `timeout`/kill: exit through the finally blocks, which stop the Ray nodes started here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    bench = Bench(args)
    res = bench.res
    try:
        bench.warm_up()
        res.load.append(_load_average())
        for name in args.only:
            MEASUREMENTS[name](bench)
        res.load.append(_load_average())
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
    res.rows += [(f"cluster start-up: {what}, s (not in any ingest)", f"{s:.1f}") for what, s in res.startup_s.items()]
    res.rows.append(("1-minute load average, start / end", " / ".join(f"{x:.1f}" for x in res.load)))
    print(f"corpus: {res.files} Python docs pages; {common.machine_summary()}")
    if args.json is not None:
        runs = {kind: [vars(r) for r in rs] for kind, rs in res.runs.items()}
        payload: dict[str, Any] = {"files": res.files, "rows": dict(res.rows), "runs": runs, "failures": res.failures}
        args.json.write_text(json.dumps(payload, indent=2))
    width = max((len(k) for k, _ in bench.res.rows), default=0)
    for key, value in bench.res.rows:
        print(f"{key:<{width}}  {value}")
    for failure in bench.res.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if bench.res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
