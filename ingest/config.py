"""Validated configuration of the ingestion layer (built at the edge, passed down)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class EmbedderConfig(BaseModel):
    model: str = Field(
        "all-MiniLM-L6-v2",
        description="Bundled name, local sentence-transformers folder, or hub id (where a hub is reachable).",
    )
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description=(
            "Embedding backend; auto = torch fp16 on GPU, torch bf16 on CPUs with AMX, else onnx-int8 (cached ONNX; "
            "also on AVX512-BF16, where it embeds as fast as torch bf16)."
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights of the torch backend; auto = float16 on GPU, bfloat16 on CPUs with bf16 matmuls (AMX, "
        "AVX512-BF16), else float32.",
    )
    batch_size: int = Field(64, ge=1, le=4096)
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    max_seq_length: int | None = Field(None, ge=8, description="Override the embedder's token limit.")


class ChunkingConfig(BaseModel):
    chunk_tokens: int = Field(200, ge=16, description="Chunk size in the embedder's tokens.")
    overlap_tokens: int = Field(24, ge=0)

    @model_validator(mode="after")
    def _overlap_smaller(self) -> ChunkingConfig:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError("overlap_tokens must be smaller than chunk_tokens")
        return self


class IndexConfig(BaseModel):
    kind: Literal["flat", "ivf", "hnsw", "ivfpq"] = "flat"
    nlist: int = Field(256, ge=1, description="IVF lists (capped by the corpus size when trained).")
    nprobe: int = Field(16, ge=1)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(64, ge=1)
    pq_m: int = Field(16, ge=1, description="PQ sub-quantisers (must divide the dimension).")
    use_gpu: bool = Field(False, description="Move the index to a GPU when faiss was built with GPUs.")


class LoaderConfig(BaseModel):
    json_text_field: str = "text"
    json_title_field: str = "title"
    max_file_mb: float = Field(50.0, gt=0)
    max_unzipped_mb: float = Field(
        200.0, gt=0, description="Largest total uncompressed size of a zip-based file (.docx) before it is read (MB)."
    )
    max_zip_ratio: float = Field(
        200.0,
        gt=1,
        description="Highest compression ratio of a zip member larger than 1 MB (a zip bomb expands ~1000x).",
    )
    isolate: bool = Field(
        True,
        description="Read each file in a separate loader process with the time and memory limits below.",
    )
    timeout_s: float = Field(60.0, gt=0, description="Longest time one file may take to read (isolated loaders).")
    memory_mb: int = Field(
        2048, ge=256, description="Address-space limit of the loader process (MB; isolated loaders, Linux/macOS)."
    )
    ocr: bool = Field(
        True,
        description="Recognise text (rapidocr, offline) on PDF pages without a text layer and in image files.",
    )
    ocr_min_chars_per_page: int = Field(
        32,
        ge=0,
        description=(
            "A PDF page whose text layer has fewer non-space characters (per A4 page area) and that holds an "
            "image or drawing goes through OCR."
        ),
    )
    ocr_page_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Longest time OCR may take on one page or image (a dense A4 page: ~10-40 s on 2 cores); "
        "past it the file fails.",
    )
    ocr_dpi: int = Field(
        300, ge=72, le=600, description="Resolution PDF pages are rendered at for OCR (capped at 4000 px a side)."
    )
    pdf_tables: bool = Field(
        True, description="Find ruled tables on PDF pages (pdfplumber) and write them as Markdown tables."
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="Times the server may stop while reading one uploaded file before that file fails (poison pill).",
    )


class RayConfig(BaseModel):
    """Ingestion on a Ray cluster (``ragqa ingest --ray``; the ``ray`` extra): off unless ``address`` is set."""

    address: str | None = Field(
        None,
        description="Ray cluster that loads, chunks and embeds the files: 'auto' (the cluster `ray start` runs on "
        "this machine) or HOST:PORT of its head node; unset = ingest in this process. Every node must read the "
        "files at the same paths (a shared file system).",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="File workers, one embedder each; default one per CPU of the cluster, and a worker gets a "
        "GPU for each GPU in the cluster.",
    )
    files_in_flight: int = Field(2, ge=1, description="Files queued on each worker at once.")
    max_restarts: int = Field(
        2,
        ge=0,
        description="Times a worker that dies (kill -9, out of memory) is restarted and its file retried before "
        "that file fails.",
    )


class IngestConfig(BaseModel):
    cache_dir: Path | None = Field(
        None,
        description="Per-machine cache of prepared embedder files (the ONNX export and int8 model, ~15 s to "
        "build), shared by every workspace of the user; unset = $RAGQA_CACHE_DIR, else $XDG_CACHE_HOME/ragqa, "
        "else ~/.cache/ragqa. When it cannot be written, they are built in the workspace's models folder.",
    )
    embedder: EmbedderConfig = EmbedderConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    index: IndexConfig = IndexConfig()
    loader: LoaderConfig = LoaderConfig()
    ray: RayConfig = RayConfig()
