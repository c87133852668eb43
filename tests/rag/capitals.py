"""The three-document corpus (Paris, Rome, Oslo) the QA pipeline tests and the engine benchmark's tests ask about."""

from __future__ import annotations

from pathlib import Path

from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
from ingest.workspace import Workspace

DOCS = {
    "paris.txt": "Paris is the capital of France. The Eiffel Tower was finished in 1889.",
    "rome.txt": "Rome is the capital of Italy. The Colosseum held fifty thousand people.",
    "oslo.txt": "Oslo is the capital of Norway. It lies at the head of the Oslofjord.",
}


def capitals_workspace(root: Path, embedder_model: Path, collection: str = "c") -> Workspace:
    """A workspace under ``root/home`` with ``DOCS`` ingested into ``collection`` (64-token chunks)."""
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    ws = Workspace(
        root / "home",
        IngestConfig(
            embedder=EmbedderConfig(model=str(embedder_model)),
            chunking=ChunkingConfig(chunk_tokens=64, overlap_tokens=8),
        ),
    )
    assert ws.ingest([docs], collection).ok
    return ws
