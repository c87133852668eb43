"""Suffix -> loader registry and :func:`load_file`, the one entry point for callers.

A loader is ``fn(path, data, config) -> list[Document]``: ``path`` is resolved, ``data`` the
file's bytes (read once here, after the size check). :func:`load_file` does what every file
type shares: existence, suffix, size limit, permission and emptiness checks, and dropping
documents without text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import EmptyDocumentError, LoaderError, UnsupportedFileError
from ingest.loaders.docx import load_docx
from ingest.loaders.html import load_html
from ingest.loaders.image import load_image
from ingest.loaders.jsonl import load_json, load_jsonl
from ingest.loaders.pdf import load_pdf
from ingest.loaders.text import load_markdown, load_text

logger = logging.getLogger(__name__)

Loader = Callable[[Path, bytes, LoaderConfig], list[Document]]

LOADERS: Mapping[str, Loader] = MappingProxyType(
    {
        ".txt": load_text,
        ".text": load_text,
        ".md": load_markdown,
        ".markdown": load_markdown,
        ".html": load_html,
        ".htm": load_html,
        ".xhtml": load_html,
        ".pdf": load_pdf,
        ".docx": load_docx,
        ".json": load_json,
        ".jsonl": load_jsonl,
        ".ndjson": load_jsonl,
        ".png": load_image,
        ".jpg": load_image,
        ".jpeg": load_image,
        ".tif": load_image,
        ".tiff": load_image,
    }
)

SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(LOADERS))


def is_supported(path: str | Path) -> bool:
    """True when a loader handles ``path``'s suffix (case-insensitive)."""
    return Path(path).suffix.lower() in LOADERS


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / (1 << 20):.3g}"


def load_file(path: str | Path, config: LoaderConfig | None = None) -> list[Document]:
    """Load one file into documents (one, or one per page/record/paragraph).

    Raises :class:`UnsupportedFileError`, :class:`EmptyDocumentError` or :class:`LoaderError`
    (missing, unreadable, too large, corrupt); every message names the file and what to do.
    """
    config = config if config is not None else LoaderConfig()
    path = Path(path).expanduser().resolve()
    suffix = path.suffix.lower()
    loader = LOADERS.get(suffix)
    if loader is None:
        raise UnsupportedFileError(
            f"{path}: unsupported file type {suffix or '(no suffix)'!r}; supported types are "
            f"{', '.join(SUPPORTED_SUFFIXES)} (convert the file or leave it out)"
        )
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise LoaderError(f"{path}: file not found; check the path") from exc
    except OSError as exc:
        raise LoaderError(f"{path}: cannot access the file ({exc.strerror}); check the path and permissions") from exc
    if not path.is_file():
        raise LoaderError(f"{path}: not a regular file; pass a file (folders are walked by the ingest command)")
    limit = int(config.max_file_mb * (1 << 20))
    if size > limit:
        raise LoaderError(
            f"{path}: file is {_mb(size)} MB, larger than the limit {config.max_file_mb:g} MB; "
            "raise ingest.loader.max_file_mb"
        )
    if size == 0:
        raise EmptyDocumentError(f"{path}: the file is empty; add content or leave it out")
    try:
        data = path.read_bytes()
    except PermissionError as exc:
        raise LoaderError(f"{path}: permission denied; make the file readable (e.g. `chmod a+r`)") from exc
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc

    try:
        loaded = loader(path, data, config)
    except LoaderError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise LoaderError(
            f"{path}: too deeply nested or too large to load ({type(exc).__name__}); split the file"
        ) from exc
    except Exception as exc:  # a loader bug or a library failure must not stop a batch
        logger.debug("%s: unexpected loader failure", path, exc_info=True)
        raise LoaderError(
            f"{path}: unexpected error while loading ({type(exc).__name__}: {exc}); "
            "skip the file and report the problem with the file attached"
        ) from exc
    docs = [d for d in loaded if d.text.strip()]
    if not docs:
        raise EmptyDocumentError(f"{path}: holds no text (only white space or markup); add content or leave it out")
    logger.debug("%s: %d document(s)", path, len(docs))
    return docs
