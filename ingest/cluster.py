"""Ingestion on a Ray cluster: files loaded, chunked and embedded by workers, committed by one writer here.

:class:`RayIngester` keeps a pool of :class:`FileWorker` actors on the cluster, one embedder each (one
worker per CPU of the cluster by default; a worker holds a GPU where the cluster has one). The driver is the
collection's single writer and keeps the guarantees of :func:`ingest.pipeline.ingest_paths`, whose pieces it
reuses:

- unchanged files (same content hash as committed) are skipped here, before any work is shipped;
- a changed file goes to a worker with the vectors stored for its previous version's chunk texts, which the
  worker reuses; the worker loads it (in its own isolated loader process when ``loader.isolate``), chunks it
  and embeds the chunks that need it, and streams back the whole file (``ray.wait``, in completion order);
- each file is committed in its own transaction once all of its chunks have vectors, so a crash of the
  writer or of a worker loses no committed file and a re-run finishes the job;
- a worker that dies (kill -9, out of memory) is restarted and its files retried (``ray.max_restarts``);
  a file that keeps killing workers fails alone, like a bad file, and failures read as in a local ingest.

Chunk ids, chunks and vectors are those of a local ingest with the same configuration. Every node must read
the files at the paths given here (a shared file system); documents and vectors travel between the driver
and the workers through Ray's object store, inside the cluster only.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ingest.chunker import Chunker
from ingest.collection import Collection
from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig, LoaderConfig, RayConfig
from ingest.embedder import chunk_tokenizer
from ingest.errors import ClusterUnavailableError
from ingest.pipeline import (
    FILE_ERRORS,
    FileChange,
    FileFailure,
    IngestBatch,
    IngestReport,
    PendingFile,
    _progress_bar,
    _prune,
    embedding_failure,
    expand_paths,
    file_failure,
    load_and_chunk,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[ray]"'


class FileWorker:
    """A Ray actor: loads, chunks and embeds one file at a time with its own embedder (loaded once)."""

    def __init__(self, embedder: EmbedderConfig, loader: LoaderConfig, cache_dir: str | None) -> None:
        from ingest.embedder import load_embedder

        self.embedder = load_embedder(embedder, cache_dir=Path(cache_dir) if cache_dir else None)
        self.loader = loader
        self._chunkers: dict[str, Chunker] = {}
        self._pool: Any = None

    def pid(self) -> int:
        import os

        return os.getpid()

    def chunker(self, chunking: ChunkingConfig) -> Chunker:
        key = chunking.model_dump_json()
        if key not in self._chunkers:
            emb = self.embedder
            self._chunkers[key] = Chunker.for_tokenizer(chunking, chunk_tokenizer(emb), max_tokens=emb.max_tokens)
        return self._chunkers[key]

    def prepare(
        self, path: str, change: FileChange, chunking: ChunkingConfig, stored: dict[str, np.ndarray]
    ) -> tuple[PendingFile, np.ndarray] | FileFailure:
        """``path`` loaded and chunked, with the ``stored`` vectors of unchanged chunk texts filled in, and the
        vectors of the other chunks (in order); or the file's failure as a local ingest reports it."""
        try:
            docs, chunks = load_and_chunk(Path(path), self.loader, self.chunker(chunking), self.loader_pool())
        except FILE_ERRORS as exc:
            return file_failure(path, exc)
        pending = PendingFile(
            path, change.digest, change.size, docs, chunks, [stored.get(c.text) for c in chunks], change.replaced
        )
        try:
            new = self.embedder.embed_documents([c.text for c, v in zip(chunks, pending.vectors) if v is None])
        except Exception as exc:  # e.g. out of memory: this file fails, the run goes on
            logger.exception("embedding failed")
            return embedding_failure(path, exc)
        return pending, new

    def loader_pool(self) -> Any:
        """This worker's isolated loader process (None when ``loader.isolate`` is off), started on first use."""
        if self._pool is None and self.loader.isolate:
            from ingest.loaders.isolation import LoaderPool

            self._pool = LoaderPool(self.loader)
        return self._pool


def connect(address: str) -> Any:
    """The ``ray`` module, connected to the cluster at ``address`` ('auto' or HOST:PORT); an existing
    connection of this process is kept."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterUnavailableError(f"Ray is not installed; install it with {INSTALL_HINT}") from exc
    if not ray.is_initialized():
        _probe(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterUnavailableError(
                f"cannot connect to a Ray cluster at {address!r} ({exc}); start one with "
                "`ray start --head` and pass its address (HOST:PORT) with --ray, or 'auto' on its head node"
            ) from exc
    return ray


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing listens at HOST:PORT (``ray.init`` would retry for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # 'auto': Ray finds the local cluster, or says there is none
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterUnavailableError(
            f"no Ray cluster answers at {address} ({exc}); start one with `ray start --head --port {port}` "
            "and join the other nodes with `ray start --address HOST:PORT`"
        ) from exc


class RayIngester:
    """A pool of :class:`FileWorker` actors on a Ray cluster, and the single writer that commits their files.

    Workers start on the first :meth:`ingest` that has changed files and serve later runs (the server's
    upload jobs keep one ingester); :meth:`close` ends them.
    """

    def __init__(self, config: IngestConfig, cache_dir: Path | None = None) -> None:
        if not config.ray.address:
            raise ValueError("RayIngester needs ingest.ray.address (a Ray cluster's HOST:PORT, or 'auto')")
        self.config = config
        self.ray_config: RayConfig = config.ray
        self.cache_dir = cache_dir
        self._ray: Any = None
        self._workers: list[Any] = []
        self._on_gpu: dict[Any, bool] = {}
        self._gpu_workers = 0

    # -- the pool -------------------------------------------------------------------------------------
    def connect(self) -> Any:
        """The ``ray`` module, connected to the cluster (raises :class:`ClusterUnavailableError` at once when
        there is none)."""
        if self._ray is None:
            self._ray = connect(self.ray_config.address or "auto")
        return self._ray

    def workers(self, wanted: int | None = None) -> list[Any]:
        """The worker actors (started here when fewer than ``wanted`` run, at most the pool's size)."""
        ray = self.connect()
        resources = ray.cluster_resources()
        size = self.ray_config.workers or max(1, int(resources.get("CPU", 1)))
        target = min(size, wanted if wanted is not None else size)
        gpus = int(resources.get("GPU", 0))
        started = []
        while len(self._workers) < target:
            started.append(self._start_worker(use_gpu=self._gpu_workers < gpus))
        if started:
            try:
                ray.get([w.pid.remote() for w in started])
            except ray.exceptions.RayError as exc:
                self.close()
                raise ClusterUnavailableError(f"the Ray file workers could not start: {exc}") from exc
            logger.info("%d Ray file worker(s) running (%d with a GPU)", len(self._workers), self._gpu_workers)
        return list(self._workers)

    def _start_worker(self, use_gpu: bool) -> Any:
        ray = self._ray
        embedder = self.config.embedder
        if not use_gpu and embedder.device == "auto":
            embedder = embedder.model_copy(update={"device": "cpu"})
        restarts = self.ray_config.max_restarts
        actor = (
            ray.remote(FileWorker)
            .options(num_cpus=1, num_gpus=1 if use_gpu else 0, max_restarts=restarts, max_task_retries=restarts)
            .remote(embedder, self.config.loader, str(self.cache_dir) if self.cache_dir else None)
        )
        self._workers.append(actor)
        self._on_gpu[actor] = use_gpu
        self._gpu_workers += use_gpu
        return actor

    def _replace(self, dead: Any) -> Any:
        """A fresh worker (with the GPU, if the dead one had it) in place of one that died past its restarts."""
        self._workers.remove(dead)
        use_gpu = self._on_gpu.pop(dead, False)
        self._gpu_workers -= use_gpu
        try:
            self._ray.kill(dead, no_restart=True)
        except Exception as exc:  # already gone
            logger.debug("could not end a dead Ray worker: %s", exc)
        return self._start_worker(use_gpu)

    def close(self) -> None:
        """End the workers (the cluster stays up)."""
        for actor in self._workers:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception as exc:  # the cluster may be gone already
                logger.debug("could not end a Ray worker: %s", exc)
        self._workers, self._on_gpu, self._gpu_workers = [], {}, 0

    def __enter__(self) -> RayIngester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer -----------------------------------------------------------------------------------
    def ingest(
        self,
        paths: Sequence[str | Path],
        collection: Collection,
        *,
        progress: bool = False,
        prune: bool = False,
        on_commit: Callable[[str], None] | None = None,
    ) -> IngestReport:
        """Ingest ``paths`` into ``collection`` on the cluster; never raises for a single bad file.

        The same contract and report as :func:`ingest.pipeline.ingest_paths` (``prune`` included), with the
        work spread over the workers. ``on_commit`` is called with each file's path once it is committed.
        """
        t0 = time.perf_counter()
        report = IngestReport(collection=collection.name)
        files, failures, skipped = expand_paths(paths)
        report.failed.extend(failures)
        report.skipped_unsupported = [str(p) for p in skipped]
        batch = IngestBatch(collection, _computed_on_workers, _chunked_on_workers, self.config.loader, report)
        bar = _progress_bar(progress, len(files), collection.name)
        try:
            todo: deque[tuple[str, FileChange]] = deque()
            for path in files:
                try:
                    change = batch.change(path)
                except FILE_ERRORS as exc:
                    report.failed.append(file_failure(str(path), exc))
                    change = None
                if change is None and bar is not None:
                    bar.update(1)
                elif change is not None:
                    todo.append((str(path), change))
            if todo:
                self._run(todo, collection, batch, bar, on_commit)
            if prune:
                report.removed = _prune(collection, paths, {str(f) for f in files})
        finally:
            if bar is not None:
                bar.close()
            collection.flush()
        report.seconds = time.perf_counter() - t0
        return report

    def _run(
        self,
        todo: deque[tuple[str, FileChange]],
        collection: Collection,
        batch: IngestBatch,
        bar: Any,
        on_commit: Callable[[str], None] | None,
    ) -> None:
        """Ship ``todo`` to the workers (a few files queued on each) and commit each file as it comes back."""
        workers = self.workers(len(todo))
        ray = self._ray
        per_worker = self.ray_config.files_in_flight
        in_flight: dict[Any, tuple[Any, str, FileChange]] = {}
        load = dict.fromkeys(workers, 0)

        def submit() -> None:
            while todo:
                worker = min(load, key=load.__getitem__)
                if load[worker] >= per_worker:
                    return
                path, change = todo.popleft()
                stored = batch.stored_vectors(path, change)
                ref = worker.prepare.remote(path, change, collection.chunking, stored)
                in_flight[ref] = (worker, path, change)
                load[worker] += 1

        submit()
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            worker, path, _change = in_flight.pop(ref)
            load[worker] -= 1
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                logger.error("a Ray worker died %d time(s) on %s: %s", self.ray_config.max_restarts + 1, path, exc)
                result = FileFailure(
                    path,
                    f"the Ray worker died {self.ray_config.max_restarts + 1} time(s) while reading or embedding "
                    "this file (a crash, a kill or running out of memory); check or split the file",
                )
                if worker in load:  # the first of its files to come back: replace it, queue its other files again
                    del load[worker]
                    load[self._replace(worker)] = 0
                    for other, (w, p, c) in list(in_flight.items()):
                        if w == worker:
                            del in_flight[other]
                            todo.appendleft((p, c))
            self._commit(batch, result)
            if on_commit is not None and not isinstance(result, FileFailure):
                on_commit(path)
            if bar is not None:
                bar.update(1)
            submit()

    @staticmethod
    def _commit(batch: IngestBatch, result: tuple[PendingFile, np.ndarray] | FileFailure) -> None:
        """Commit one file the workers finished (its own transaction), or report its failure."""
        if isinstance(result, FileFailure):
            batch.report.failed.append(result)
            return
        pending, new = result
        batch.add(pending)
        batch.embed = _precomputed(new)
        batch.commit()


def _precomputed(vectors: np.ndarray) -> Callable[[list[str]], np.ndarray]:
    """The writer's embed step for one file: the vectors its worker computed, in chunk order."""

    def embed(texts: list[str]) -> np.ndarray:
        if len(texts) != len(vectors):
            raise ValueError(f"the worker returned {len(vectors)} vectors for {len(texts)} chunks")
        return vectors

    return embed


def _computed_on_workers(texts: list[str]) -> np.ndarray:
    raise RuntimeError("the writer embeds nothing itself: the Ray workers do")


def _chunked_on_workers() -> Chunker:
    raise RuntimeError("the writer chunks nothing itself: the Ray workers do")


def ingest_paths_on_ray(
    paths: Sequence[str | Path],
    collection: Collection,
    config: IngestConfig,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
    prune: bool = False,
) -> IngestReport:
    """One run of :class:`RayIngester` (its workers end with it) on the cluster at ``config.ray.address``."""
    with RayIngester(config, cache_dir) as ingester:
        return ingester.ingest(paths, collection, progress=progress, prune=prune)
