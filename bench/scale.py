"""Scaling-out benchmark: ragqa on a Ray cluster of local nodes, against the plain single process.

    .venv/bin/python -m bench.scale [--only ingest-overhead,embedding-throughput] [--limit N] [--repeat N] [-v]

One function per measurement (``MEASUREMENTS``; ``--only`` picks some). Every ``ragqa`` run is a whole
process timed from spawn to exit, on the same corpus, into a fresh collection of one workspace whose embedder
cache (ONNX) was built by an untimed warm-up ingest. The cluster is started here on this machine (loopback,
one CPU and its own temp dir per node, ``ray start --head`` and ``ray start --address``) and torn down at
the end; cluster start-up is not timed, a driver's connection and its workers' start-up are.

Measurements
  ingest-overhead       ``ragqa ingest DOCS -c NAME`` against ``... --ray ADDRESS`` on a one-node cluster
                        (target: at most 1.3x the single-process wall time). The runs alternate.
  embedding-throughput  chunks embedded per second of ingest time (the report's ``seconds``: loading,
                        chunking, embedding and committing, worker start included) with 1 and then 2 nodes.

Corpus: the Python 3.11 HTML docs (tutorial, faq, howto, reference; Debian package python3.11-doc) as in
``bench/ingest.py``; ``--limit N`` keeps the first N pages (a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import common

logger = logging.getLogger("bench.scale")

OVERHEAD_TARGET = 1.3
OBJECT_STORE_BYTES = 200_000_000


# -- a local Ray cluster -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRayCluster:
    """Ray nodes on this machine, each started by ``ray start`` in its own process group and temp dir,
    killed as whole groups by :meth:`stop` (``ray stop`` would also stop other clusters of the machine)."""

    def __init__(self, env: dict[str, str]) -> None:
        # Ray starts its workers at nice 15 (RAY_worker_niceness); on a machine shared with other work that
        # starves them, so they run at the plain process's priority here for a fair comparison.
        self.env = {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0", "RAY_AUTH_MODE": "disabled"}
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[tuple[int, Path]] = []

    def add_node(self, num_cpus: int = 1) -> None:
        temp_dir = Path(tempfile.mkdtemp(prefix="rqb", dir="/tmp"))  # short: Ray's unix sockets live under it
        head = not self.nodes
        role = ["--head", "--port", str(self.port), "--include-dashboard=false"] if head else []
        role += ["--ray-client-server-port", str(_free_port())] if head else ["--address", self.address]
        cmd = [
            common.venv_bin("ray"),
            "start",
            *role,
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            "0",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(temp_dir),
            "--object-store-memory",
            str(OBJECT_STORE_BYTES),
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--disable-usage-stats",
        ]
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.nodes.append((proc.pid, temp_dir))
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"`ray start` failed:\n{out[-3000:]}")
        self._wait_for(len(self.nodes))

    def _wait_for(self, n: int, timeout_s: float = 120.0) -> None:
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))"
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            cmd = [sys.executable, "-c", code, self.address]
            done = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip() == str(n):
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster at {self.address} did not reach {n} live node(s)")

    def stop(self) -> None:
        for pgid, temp_dir in reversed(self.nodes):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            shutil.rmtree(temp_dir, ignore_errors=True)
        self.nodes = []


@contextlib.contextmanager
def local_cluster(env: dict[str, str], nodes: int = 1) -> Iterator[LocalRayCluster]:
    cluster = LocalRayCluster(env)
    try:
        for _ in range(nodes):
            cluster.add_node()
        yield cluster
    finally:
        cluster.stop()


# -- runs ------------------------------------------------------------------------------------------
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


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="ragqa-bench-scale-", dir=args.workdir))
        self.home = self.work / "home"
        # This tree's code in the CLI processes and in the Ray workers (they inherit the nodes' environment).
        # Drivers and nodes agree: no Ray token auth on this loopback-only cluster.
        self.env = common.offline_env(RAGQA_HOME=str(self.home), PYTHONPATH=str(common.ROOT), RAY_AUTH_MODE="disabled")
        self.res = Results()
        self.corpus = self.build_corpus()
        self._n = 0

    def build_corpus(self) -> Path:
        if not common.PY_DOCS.is_dir():
            raise SystemExit(
                f"The Python 3.11 HTML docs are not under {common.PY_DOCS}: apt-get install python3.11-doc"
            )
        pages = [p for s in common.PY_DOCS_SECTIONS for p in sorted((common.PY_DOCS / s).rglob("*.html"))]
        pages = pages[: self.args.limit] if self.args.limit else pages
        corpus = self.work / "corpus"
        for src in pages:
            dest = corpus / src.relative_to(common.PY_DOCS)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        self.res.files = len(pages)
        return corpus

    def ingest(self, *extra: str) -> Run | None:
        """One timed ``ragqa ingest`` of the corpus into a new collection."""
        self._n += 1
        cmd = [sys.executable, "-m", "api.cli", "ingest", str(self.corpus), "-c", f"run{self._n}", "--json", *extra]
        timed = common.run_timed(cmd, env=self.env, cwd=common.ROOT)
        report = timed.last_json()
        if not timed.ok or report is None or not report.get("ok"):
            self.res.failures.append(timed.describe_failure())
            logger.error("%s", timed.describe_failure())
            return None
        return Run(timed.seconds, float(report["seconds"]), int(report["chunks"]))

    def warm_up(self) -> None:
        """Untimed: the embedder cache (ONNX) and the OS file cache."""
        self.ingest()


def _median(values: list[float]) -> float | None:
    return common.Samples(values).median


def measure_ingest_overhead(bench: Bench) -> None:
    """Plain single-process ingest against the same ingest on a one-node Ray cluster (alternating)."""
    with local_cluster(bench.env, nodes=1) as cluster:
        plain: list[float] = []
        ray: list[float] = []
        for rep in range(bench.args.repeat):
            order = [False, True] if rep % 2 == 0 else [True, False]
            for on_ray in order:
                run = bench.ingest("--ray", cluster.address) if on_ray else bench.ingest()
                if run is not None:
                    (ray if on_ray else plain).append(run.seconds)
    a, b = _median(ray), _median(plain)
    ratio = common.ratio(a, b)
    met = "n/a" if ratio is None else ("yes" if ratio <= OVERHEAD_TARGET else "no")
    bench.res.rows += [
        ("plain single-process ingest, wall s (median)", common.fmt(b)),
        ("--ray on 1 node, wall s (median)", common.fmt(a)),
        (f"Ray overhead (target <= {OVERHEAD_TARGET}x)", f"{common.fmt(ratio, '.2f')}x (met: {met})"),
    ]


def measure_embedding_throughput(bench: Bench) -> None:
    """Chunks per second of ingest time on one node, then on two (one CPU each)."""
    with local_cluster(bench.env, nodes=1) as cluster:
        for nodes in (1, 2):
            if nodes == 2:
                cluster.add_node()
            runs = [bench.ingest("--ray", cluster.address) for _ in range(bench.args.repeat)]
            rates = [r.chunks_per_s for r in runs if r is not None]
            chunks = next((r.chunks for r in runs if r is not None), 0)
            bench.res.rows.append(
                (f"throughput on {nodes} node(s), chunks/s ({chunks} chunks)", common.fmt(_median(rates)))
            )


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
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in args.only if m not in MEASUREMENTS]
    if unknown:
        p.error(f"unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    if args.repeat < 1 or (args.limit is not None and args.limit < 1):
        p.error("--repeat and --limit must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    bench = Bench(args)
    try:
        bench.warm_up()
        for name in args.only:
            MEASUREMENTS[name](bench)
    finally:
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
    print(f"corpus: {bench.res.files} Python docs pages; {common.machine_summary()}")
    width = max((len(k) for k, _ in bench.res.rows), default=0)
    for key, value in bench.res.rows:
        print(f"{key:<{width}}  {value}")
    for failure in bench.res.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if bench.res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
