"""Plain data types passed between loaders, the chunker and the store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def stable_hash(*parts: str, length: int = 16) -> str:
    """Deterministic hex digest of ``parts`` (used for document and chunk ids)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:length]


@dataclass
class Document:
    """One loaded document.

    ``source`` is the file it came from; ``key`` distinguishes several documents from one file
    (e.g. the paragraphs of a SQuAD article: ``"Normans/3"``). ``metadata`` carries loader facts
    such as ``title``, ``page`` (PDF) or ``headings``; it must be JSON-serialisable.
    """

    text: str
    source: str
    key: str = ""
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    # Optional structure: (heading_path, text) sections, in order. When given, the chunker
    # splits each section separately and carries its heading path into the chunk metadata.
    sections: list[tuple[list[str], str]] | None = None

    @property
    def doc_id(self) -> str:
        return stable_hash(self.source, self.key)


@dataclass
class Chunk:
    """A piece of a document small enough for the embedder."""

    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def faiss_id(self) -> int:
        """A non-negative int64 id derived from ``chunk_id`` (deterministic)."""
        return int(self.chunk_id[:15], 16)
