"""The workspace: one folder (``$RAGQA_HOME``) holding every collection and model cache, except the
embedder's prepared ONNX files, which are built once per machine in :func:`user_cache_dir`.

A :class:`Workspace` is the entry point the interfaces (CLI, API) use for ingestion: it
opens collections, loads the embedder once, and runs the pipeline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.chunker import Chunker
from ingest.collection import Collection, SearchHit, delete_collection, list_collections
from ingest.config import IngestConfig
from ingest.embedder import chunk_tokenizer
from ingest.errors import CollectionNotFoundError
from ingest.pipeline import IngestReport, ingest_paths

if TYPE_CHECKING:
    from ingest.cluster import RayIngester

logger = logging.getLogger(__name__)

#: Environment variable naming the per-machine cache when ``ingest.cache_dir`` is not set.
CACHE_DIR_ENV = "RAGQA_CACHE_DIR"


def user_cache_dir(configured: Path | None = None) -> Path:
    """The per-machine cache of prepared models: ``configured`` (``ingest.cache_dir``), else
    ``$RAGQA_CACHE_DIR``, else ``$XDG_CACHE_HOME/ragqa``, else ``~/.cache/ragqa``."""
    if configured is not None:
        return Path(configured).expanduser()
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ragqa"


class Workspace:
    def __init__(self, home: Path, config: IngestConfig) -> None:
        self.home = Path(home).expanduser()
        self.config = config
        self._embedder = None
        self._ray_ingester: RayIngester | None = None

    @property
    def collections_dir(self) -> Path:
        return self.home / "collections"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        """Where prepared embedder files (ONNX) are built and shared by all workspaces (:func:`user_cache_dir`).
        Files that older versions built in :attr:`models_dir` are still used, and new ones go there when
        this folder cannot be written."""
        return user_cache_dir(self.config.cache_dir)

    # -- embedder -----------------------------------------------------------------------
    @property
    def embedder(self):
        """The configured embedder, loaded on first use and then shared."""
        if self._embedder is None:
            from ingest.embedder import load_embedder

            logger.info("embedder cache (per machine): %s", self.cache_dir)
            self._embedder = load_embedder(self.config.embedder, cache_dir=self.cache_dir, fallback_dir=self.models_dir)
        return self._embedder

    def chunker_for(self, collection: Collection) -> Chunker:
        emb = self.embedder
        return Chunker.for_tokenizer(collection.chunking, chunk_tokenizer(emb), max_tokens=emb.max_tokens)

    # -- collections --------------------------------------------------------------------
    def list_collections(self) -> list[str]:
        return list_collections(self.collections_dir)

    @property
    def embedder_name(self) -> str:
        """The configured embedder's canonical name, known without loading the model."""
        if self._embedder is not None:
            return self._embedder.name
        from ingest.embedder import canonical_name

        return canonical_name(self.config.embedder.model)

    def open(self, name: str, *, readonly: bool = False, check_embedder: bool = True) -> Collection:
        embedder_name = self.embedder_name if check_embedder else None
        return Collection.open(self.collections_dir, name, embedder_name=embedder_name, readonly=readonly)

    def open_or_create(self, name: str) -> Collection:
        try:
            return self.open(name)
        except CollectionNotFoundError:
            emb = self.embedder
            return Collection.create(
                self.collections_dir,
                name,
                embedder_name=emb.name,
                dim=emb.dim,
                chunking=self.config.chunking,
                index=self.config.index,
            )

    def delete(self, name: str) -> None:
        delete_collection(self.collections_dir, name)

    # -- work ---------------------------------------------------------------------------
    def ingest(
        self, paths: Sequence[str | Path], name: str, *, progress: bool = False, prune: bool = False
    ) -> IngestReport:
        if self.config.ray.address:
            ingester = self.ray_ingester()
            ingester.connect()  # no cluster: say so before a new collection loads the embedder
            with self.open_or_create(name) as coll:
                return ingester.ingest(paths, coll, progress=progress, prune=prune)
        with self.open_or_create(name) as coll:
            # The model loads only when a file has changed: an unchanged re-ingest reads hashes only.
            return ingest_paths(
                paths,
                coll,
                lambda texts: self.embedder.embed_documents(texts, progress=progress and len(texts) > 64),
                lambda: self.chunker_for(coll),
                self.config.loader,
                progress=progress,
                embed_batch_chunks=max(64, 8 * self.config.embedder.batch_size),
                prune=prune,
            )

    def ray_ingester(self) -> RayIngester:
        """The ingester on the Ray cluster of ``ingest.ray.address`` (its workers start on first use and are
        kept for later runs)."""
        if self._ray_ingester is None:
            from ingest.cluster import RayIngester

            self._ray_ingester = RayIngester(self.config, cache_dir=self.models_dir)
        return self._ray_ingester

    def close(self) -> None:
        """End what the workspace started outside this process (the Ray workers)."""
        if self._ray_ingester is not None:
            self._ray_ingester.close()
            self._ray_ingester = None

    def search(
        self,
        query: str,
        name: str,
        k: int = 5,
        *,
        sources: list[str] | None = None,
        titles: list[str] | None = None,
    ) -> list[SearchHit]:
        with self.open(name, readonly=True) as coll:
            return coll.search(self.embedder.embed_query(query), k, sources=sources, titles=titles)
