"""PDF loader (pypdf): one document per page with text.

Each page becomes a :class:`Document` with ``key = "page-N"`` and ``metadata["page"] = N``
(1-based), so an answer can cite its page. Pages without extractable text (scanned images)
are skipped with a warning; a PDF with no text at all raises :class:`EmptyDocumentError`.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import EmptyDocumentError, LoaderError
from ingest.loaders.text import normalise_text

logger = logging.getLogger(__name__)

_BLANK_LINES = re.compile(r"\n{3,}")


def _open(path: Path, data: bytes):
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError

    if not data.lstrip().startswith(b"%PDF"):
        raise LoaderError(f"{path}: not a PDF file (no %PDF header); check the file or its extension")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except (DependencyError, NotImplementedError) as exc:
                raise LoaderError(
                    f"{path}: the PDF is encrypted with a cipher this install cannot read ({exc}); "
                    "decrypt it first (e.g. `qpdf --decrypt in.pdf out.pdf`)"
                ) from exc
            if not ok:
                raise LoaderError(
                    f"{path}: the PDF is encrypted with a password; decrypt it first "
                    "(e.g. `qpdf --password=... --decrypt in.pdf out.pdf`) and ingest the decrypted copy"
                )
        n_pages = len(reader.pages)
    except LoaderError:
        raise
    except FileNotDecryptedError as exc:
        raise LoaderError(f"{path}: the PDF is encrypted; decrypt it first and ingest the decrypted copy") from exc
    except Exception as exc:  # pypdf raises many types on damaged files (PdfReadError, ValueError, ...)
        raise LoaderError(
            f"{path}: cannot read the PDF, it looks corrupt or truncated ({type(exc).__name__}: {exc}); "
            "re-export or repair it (e.g. `qpdf in.pdf repaired.pdf`)"
        ) from exc
    return reader, n_pages


def _title(reader, path: Path) -> str:
    try:
        meta = reader.metadata
        title = (meta.title or "").strip() if meta else ""
    except Exception as exc:  # a damaged info dictionary should not lose the pages
        logger.debug("%s: unreadable PDF metadata: %s", path, exc)
        title = ""
    return title or path.stem


def load_pdf(path: Path, data: bytes, config: LoaderConfig) -> list[Document]:
    """One document per page that has text."""
    reader, n_pages = _open(path, data)
    title = _title(reader, path)
    docs: list[Document] = []
    empty: list[int] = []
    for number in range(1, n_pages + 1):
        try:
            raw = reader.pages[number - 1].extract_text() or ""
        except Exception as exc:  # one broken page should not lose the others
            logger.warning("%s: skipping page %d, its text cannot be extracted: %s", path, number, exc)
            continue
        text = _BLANK_LINES.sub("\n\n", normalise_text(raw))
        if not text.strip():
            empty.append(number)
            continue
        docs.append(
            Document(
                text=text,
                source=str(path),
                key=f"page-{number}",
                title=title,
                metadata={"format": "pdf", "title": title, "page": number, "pages": n_pages},
            )
        )
    if not docs:
        raise EmptyDocumentError(
            f"{path}: none of its {n_pages} page(s) has extractable text (a scanned PDF?); "
            "run OCR on it first (e.g. `ocrmypdf in.pdf out.pdf`)"
        )
    if empty:
        logger.warning("%s: %d page(s) without text skipped: %s", path, len(empty), empty[:20])
    return docs
