"""Shard retrieval latency: rag.sharded_retriever over 1 and 2 Ray shards against the single FAISS index.

    .venv/bin/python -m bench.scale_retrieval --address 127.0.0.1:6379 [--chunks 50000] [--dim 384] \
        [--queries 200] [--shards 1 2] [--json out.json]

A synthetic collection is written with the real collection code (store.sqlite + flat FAISS index): ``--chunks``
random unit vectors of ``--dim`` dimensions (the bundled MiniLM's 384 by default), each chunk a short text of
random words for BM25. Queries are random unit vectors (with random words for BM25), fed through a fixed query
embedder, so the figures are retrieval only (no model). Per configuration: the p50/p95 wall time of
``Retriever.retrieve`` (dense and hybrid, k=4, 20 candidates), after warm-up (shard actors built, BM25 index
built). The dense top-k of every sharded query is checked against the single index's.

``--address``: an existing cluster (e.g. two local nodes: ``ray start --head --num-cpus 1`` and
``ray start --address HEAD --num-cpus 1``); ``--nodes N``: a loopback cluster of N one-CPU nodes started here
(:func:`ingest.ray_local.local_ray_cluster`, untimed) and stopped at the end; with neither, a local Ray is
started in this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("bench.scale_retrieval")

WORDS = [f"w{i}" for i in range(5000)]


class FixedQueries:
    """A query embedder that returns pre-drawn unit vectors by query text (no model in the timing)."""

    def __init__(self, dim: int, vectors: dict[str, np.ndarray]) -> None:
        self.dim = dim
        self.vectors = vectors

    def embed_query(self, text: str) -> np.ndarray:
        return self.vectors[text]


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build_collection(root: Path, n_chunks: int, dim: int, seed: int = 0, per_file: int = 1000):
    """A flat-index collection of ``n_chunks`` random chunks, written through :class:`ingest.collection.Collection`."""
    from ingest.collection import Collection
    from ingest.config import ChunkingConfig, IndexConfig
    from ingest.documents import Chunk, Document, stable_hash

    rng = np.random.default_rng(seed)
    coll = Collection.create(
        root, "scale", embedder_name="random", dim=dim, chunking=ChunkingConfig(), index=IndexConfig(kind="flat")
    )
    with coll:
        for start in range(0, n_chunks, per_file):
            n = min(per_file, n_chunks - start)
            source = f"/synthetic/file{start // per_file:05d}.txt"
            docs, chunks = [], []
            for i in range(start, start + n):
                text = " ".join(rng.choice(WORDS, 24))
                doc = Document(text=text, source=source, key=str(i), title=f"doc {i}")
                docs.append(doc)
                chunks.append(Chunk(stable_hash(doc.doc_id, "0"), doc.doc_id, 0, text, {"source": source}))
            coll.replace_file(source, stable_hash(source), n, docs, chunks, _unit(rng, n, dim))
        coll.flush()


def percentiles(times_s: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times_s)
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def measure(retriever, coll, queries: list[str], mode: str) -> tuple[dict[str, float], list[list[str]]]:
    retriever.retrieve(coll, queries[0], mode=mode)  # warm-up: BM25 index, shard actors
    times, tops = [], []
    for q in queries:
        t0 = time.perf_counter()
        ret = retriever.retrieve(coll, q, mode=mode)
        times.append(time.perf_counter() - t0)
        tops.append([c.chunk_id for c in ret.chunks])
    return percentiles(times), tops


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from ingest.collection import Collection
    from rag.config import RetrieverConfig
    from rag.retriever import Retriever
    from rag.sharded_retriever import ShardedRetriever

    if args.faiss_threads is not None:
        import faiss

        faiss.omp_set_num_threads(args.faiss_threads)
    rng = np.random.default_rng(1)
    qtexts = [" ".join(rng.choice(WORDS, 6)) + f" #{i}" for i in range(args.queries)]
    embedder = FixedQueries(args.dim, dict(zip(qtexts, _unit(rng, args.queries, args.dim))))
    results: dict[str, Any] = {
        "chunks": args.chunks,
        "dim": args.dim,
        "queries": args.queries,
        "faiss_threads": args.faiss_threads,
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="ragqa-scale-") as tmp:
        t0 = time.perf_counter()
        build_collection(Path(tmp), args.chunks, args.dim)
        results["build_s"] = round(time.perf_counter() - t0, 2)
        if not ray.is_initialized():
            ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
        results["nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
        with Collection.open(Path(tmp), "scale", readonly=True) as coll:
            reference: dict[str, list[list[str]]] = {}
            configs: list[tuple[str, Any]] = [("single index", Retriever(embedder, RetrieverConfig()))]
            for n in args.shards:
                cfg = RetrieverConfig(backend="ray", shards=n, ray_address=args.address)
                configs.append((f"ray, {n} shard(s)", ShardedRetriever(embedder, cfg)))
            for name, retriever in configs:
                for mode in ("dense", "hybrid"):
                    t_build = time.perf_counter()
                    if isinstance(retriever, ShardedRetriever):
                        retriever.shard_set(coll)
                    warm = time.perf_counter() - t_build
                    stats, tops = measure(retriever, coll, qtexts, mode)
                    same = None
                    if name == "single index":
                        reference[mode] = tops
                    else:
                        same = sum(a == b for a, b in zip(tops, reference[mode])) / len(tops)
                    row = {"retriever": name, "mode": mode, **stats, "same_top_k": same}
                    if isinstance(retriever, ShardedRetriever) and mode == "dense":
                        row["shard_build_s"] = round(warm, 3)
                    results["rows"].append(row)
                    logger.info("%s", row)
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['chunks']} chunks x {results['dim']} dims, {results['queries']} queries, "
        f"{results['nodes']} Ray node(s); k=4, 20 candidates per part; "
        f"driver FAISS threads: {results['faiss_threads'] or 'default'}",
        "",
        "| retriever | mode | p50 ms | p95 ms | mean ms | same top-k as single |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        same = "-" if r["same_top_k"] is None else f"{100 * r['same_top_k']:.0f}%"
        lines.append(
            f"| {r['retriever']} | {r['mode']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['mean_ms']:.2f} | {same} |"
        )
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray in this process)")
    p.add_argument(
        "--nodes", type=int, default=None, help="start a loopback cluster of this many one-CPU nodes (not --address)"
    )
    p.add_argument("--chunks", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--faiss-threads",
        type=int,
        default=None,
        help="OpenMP threads of FAISS in this process (the single index); Ray's shard actors run with 1. "
        "Default: FAISS's own (all cores), which on a busy machine can be much slower than 1",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    # `timeout`/kill: exit through the finally blocks, which stop the Ray nodes started here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.nodes is not None:
        if args.address is not None or args.nodes < 1:
            parser.error("--nodes takes a count >= 1 and excludes --address")
        from ingest.ray_local import local_ray_cluster

        with local_ray_cluster(nodes=args.nodes, num_cpus=1) as cluster:
            args.address = cluster.address
            try:
                results = run(args)
            finally:
                import ray

                ray.shutdown()
    else:
        results = run(args)
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
