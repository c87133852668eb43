"""FAISS index construction, (de)serialisation and atomic persistence.

Indexes hold L2-normalised vectors, so inner product is cosine similarity. Every index maps
vectors to the chunks' int64 ids. Files are written with FAISS's own binary format (never
pickle) to a temporary file, fsynced, then renamed into place.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ingest.config import IndexConfig

logger = logging.getLogger(__name__)

# Trained kinds need this many vectors per centroid before they are built; below it the
# collection keeps an exact index (and says so) until the corpus is large enough.
MIN_POINTS_PER_CENTROID = 39
PQ_MIN_VECTORS = 256 * MIN_POINTS_PER_CENTROID // 4


def _faiss():
    import faiss

    return faiss


def effective_kind(config: IndexConfig, n_vectors: int) -> str:
    """The index kind actually built for ``n_vectors`` vectors (trained kinds need data)."""
    if config.kind == "ivf" and n_vectors < MIN_POINTS_PER_CENTROID * 4:
        return "flat"
    if config.kind == "ivfpq" and n_vectors < PQ_MIN_VECTORS:
        return "flat"
    return config.kind


def build_index(config: IndexConfig, dim: int, vectors: np.ndarray, ids: np.ndarray):
    """Build an index of ``kind`` over ``vectors`` (n, dim) float32 with int64 ``ids`` (n,)."""
    faiss = _faiss()
    kind = effective_kind(config, len(vectors))
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efSearch = config.hnsw_ef_search
        index = faiss.IndexIDMap2(inner)
    elif kind in ("ivf", "ivfpq"):
        nlist = max(1, min(config.nlist, len(vectors) // MIN_POINTS_PER_CENTROID))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if dim % config.pq_m:
                raise ValueError(f"index.pq_m={config.pq_m} must divide the embedding dimension {dim}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, config.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(config.nprobe, nlist)
    else:  # pragma: no cover - guarded by the config's Literal
        raise ValueError(f"unknown index kind {kind!r}")
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def supports_remove(index) -> bool:
    """HNSW graphs cannot drop vectors; the collection rebuilds them instead."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return not isinstance(inner, faiss.IndexHNSW)


def index_kind(index) -> str:
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVFPQ):
        return "ivfpq"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "flat"


def to_gpu_if_requested(index, config: IndexConfig):
    """Move ``index`` to all GPUs when asked and available; otherwise return it unchanged."""
    if not config.use_gpu:
        return index
    faiss = _faiss()
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        logger.warning("index.use_gpu is set but faiss has no GPUs (install ragqa[gpu] on a GPU machine)")
        return index
    return faiss.index_cpu_to_all_gpus(index)


def write_index_atomic(index, path: Path) -> None:
    """Serialise ``index`` to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
    faiss = _faiss()
    if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("GpuIndex"):
        index = faiss.index_gpu_to_cpu(index)
    data = faiss.serialize_index(index)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(memoryview(data))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_index(path: Path):
    faiss = _faiss()
    data = np.fromfile(path, dtype=np.uint8)
    return faiss.deserialize_index(data)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
