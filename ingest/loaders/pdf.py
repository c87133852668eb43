"""PDF loader: one document per page with text, tables as Markdown, OCR for scanned pages.

Each page becomes a :class:`Document` with ``key = "page-N"`` and ``metadata["page"] = N``
(1-based), so an answer can cite its page.

- Text comes from the text layer (pypdf).
- Pages whose content stream draws enough lines or rectangles for a ruled table are read again with
  pdfplumber (``LoaderConfig.pdf_tables``): each table it finds becomes a Markdown pipe table
  (:mod:`ingest.markdown_tables`) in place, the text around it in reading order.
- A page whose text layer holds fewer than ``ocr_min_chars_per_page`` non-space characters (scaled to the
  page's area against A4) and that shows an image or a vector drawing is rendered (pypdfium2) and recognised
  offline (:mod:`ingest.loaders.ocr`); the OCR text replaces the text layer when it is longer.
  ``metadata["ocr"]`` says for every page whether its text came from OCR, and ``metadata["ocr_confidence"]``
  holds the mean recognition score of an OCR page.

Pages with no text left are skipped with a warning; a PDF with no text at all raises
:class:`EmptyDocumentError`.
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import EmptyDocumentError, LoaderError
from ingest.loaders.text import normalise_text
from ingest.markdown_tables import markdown_table, table_width

logger = logging.getLogger(__name__)

_BLANK_LINES = re.compile(r"\n{3,}")
_A4_AREA = 595.0 * 842.0  # points
# Path operators in a content stream: line-to and rectangle (a ruled table), curves (text drawn as outlines).
_LINE_OPS = re.compile(rb"(?<![^\s\d.])(?:l|re)(?=\s)")
_CURVE_OPS = re.compile(rb"(?<![^\s\d.])[cvy](?=\s)")
_MIN_TABLE_OPS = 6  # a 2 x 2 table needs at least 4 rectangles or 6 lines
_MIN_DRAWN_TEXT_OPS = 200  # curves of a few words drawn as outlines
_MAX_RENDER_SIDE = 4000  # px: A4 at 300 dpi is 3508 px high


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


def _page_text(raw: str) -> str:
    return _BLANK_LINES.sub("\n\n", normalise_text(raw)).strip()


def _content(page, path: Path, number: int) -> bytes:
    try:
        contents = page.get_contents()
        return contents.get_data() if contents is not None else b""
    except Exception as exc:  # a damaged stream: no tables or drawings known, the text is still kept
        logger.debug("%s: page %d content stream unreadable: %s", path, number, exc)
        return b""


def _has_image(page, content: bytes) -> bool:
    """An image XObject on the page (or one form level down), or an inline image."""
    if b"BI" in content and b"ID" in content:
        return True
    try:
        stack: list[tuple[Any, int]] = [(page.get("/Resources"), 0)]
        while stack:
            ref, depth = stack.pop()
            resources: Any = ref.get_object() if ref is not None else None
            found: Any = resources.get("/XObject") if hasattr(resources, "get") else None
            xobjects: Any = found.get_object() if found is not None else None
            if not hasattr(xobjects, "values"):
                continue
            for item in xobjects.values():
                obj = item.get_object()
                subtype = obj.get("/Subtype")
                if subtype == "/Image":
                    return True
                if subtype == "/Form" and depth < 2:
                    stack.append((obj.get("/Resources"), depth + 1))
    except Exception as exc:
        logger.debug("page resources unreadable: %s", exc)
    return False


def _area_factor(page) -> float:
    try:
        box = page.mediabox
        area = abs(float(box.width) * float(box.height))
    except Exception:
        return 1.0
    return min(max(area / _A4_AREA, 0.25), 4.0) if area > 0 else 1.0


def _needs_ocr(page, text: str, content: bytes, config: LoaderConfig) -> bool:
    chars = sum(1 for ch in text if not ch.isspace())
    if chars >= math.ceil(config.ocr_min_chars_per_page * _area_factor(page)):
        return False
    return _has_image(page, content) or len(_CURVE_OPS.findall(content)) >= _MIN_DRAWN_TEXT_OPS


def load_pdf(path: Path, data: bytes, config: LoaderConfig) -> list[Document]:
    """One document per page that has text (from the text layer, its tables, or OCR)."""
    reader, n_pages = _open(path, data)
    title = _title(reader, path)
    texts: dict[int, str] = {}
    table_pages: list[int] = []
    ocr_pages: list[int] = []
    for number in range(1, n_pages + 1):
        try:
            page = reader.pages[number - 1]
            text = _page_text(page.extract_text() or "")
        except Exception as exc:  # one broken page should not lose the others
            logger.warning("%s: skipping page %d, its text cannot be extracted: %s", path, number, exc)
            continue
        texts[number] = text
        if not (config.pdf_tables or config.ocr):
            continue
        content = _content(page, path, number)
        if config.ocr and _needs_ocr(page, text, content, config):
            ocr_pages.append(number)
        elif config.pdf_tables and text and len(_LINE_OPS.findall(content)) >= _MIN_TABLE_OPS:
            table_pages.append(number)

    if table_pages:
        texts.update(_with_tables(path, data, table_pages))
    found = _ocr_pages(path, data, ocr_pages, config) if ocr_pages else {}
    ocr_ran = config.ocr and found is not None
    recognised = found or {}

    docs: list[Document] = []
    empty: list[int] = []
    for number, text in texts.items():
        metadata: dict[str, Any] = {"format": "pdf", "title": title, "page": number, "pages": n_pages, "ocr": False}
        result = recognised.get(number)
        if result is not None and len(result.text) > len(text):
            text = _page_text(result.text)
            metadata.update(ocr=True, ocr_confidence=result.confidence)
        if not text:
            empty.append(number)
            continue
        docs.append(Document(text=text, source=str(path), key=f"page-{number}", title=title, metadata=metadata))
    if not docs:
        if ocr_ran:
            raise EmptyDocumentError(
                f"{path}: none of its {n_pages} page(s) has text, neither in a text layer nor by OCR of its "
                "images (blank pages, or drawings without words); leave the file out"
            )
        raise EmptyDocumentError(
            f"{path}: none of its {n_pages} page(s) has extractable text (a scanned PDF?); "
            "turn OCR on (ingest.loader.ocr = true, rapidocr-onnxruntime installed) "
            "or run OCR on it first (e.g. `ocrmypdf in.pdf out.pdf`)"
        )
    if empty:
        logger.warning("%s: %d page(s) without text skipped: %s", path, len(empty), empty[:20])
    if recognised:
        logger.info("%s: OCR on %d page(s): %s", path, len(recognised), sorted(recognised)[:20])
    return docs


# --- OCR ------------------------------------------------------------------------------------


def _ocr_pages(path: Path, data: bytes, numbers: list[int], config: LoaderConfig) -> dict[int, Any] | None:
    """Render the pages (pypdfium2) and recognise them: ``{page: OcrText}``, ``None`` without an OCR engine.

    Raises :class:`~ingest.loaders.ocr.OcrTimeoutError` when a page takes longer than its budget.
    """
    import pypdfium2 as pdfium

    from ingest.loaders.ocr import get_engine

    try:
        engine = get_engine()
    except LoaderError as exc:  # not installed: the text layer is still worth having
        logger.warning("%s: %d page(s) without a text layer not recognised: %s", path, len(numbers), exc)
        return None
    out: dict[int, Any] = {}
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        logger.warning("%s: cannot render pages for OCR (%s); pages without a text layer are skipped", path, exc)
        return out
    try:
        for number in numbers:
            started = time.monotonic()
            page = pdf[number - 1]
            try:
                width, height = page.get_size()
                scale = min(config.ocr_dpi / 72.0, _MAX_RENDER_SIDE / max(width, height, 1.0))
                image = page.render(scale=scale).to_pil()
            except Exception as exc:  # a page pdfium cannot draw: skip it, keep the others
                logger.warning("%s: page %d cannot be rendered for OCR: %s", path, number, exc)
                continue
            finally:
                page.close()
            result = engine.recognise(
                image, f"{path} page {number}", budget_s=config.ocr_page_timeout_s, started=started
            )
            logger.debug("%s: page %d OCR in %.2f s (%d lines)", path, number, result.seconds, result.lines)
            out[number] = result
    finally:
        pdf.close()
    return out


# --- tables ---------------------------------------------------------------------------------


def _with_tables(path: Path, data: bytes, numbers: list[int]) -> dict[int, str]:
    """Page text with its ruled tables as Markdown, for the pages where pdfplumber finds a table."""
    import pdfplumber

    out: dict[int, str] = {}
    try:
        with pdfplumber.open(io.BytesIO(data)) as pdf:
            for number in numbers:
                page = pdf.pages[number - 1]
                try:
                    text = _page_with_tables(page)
                except Exception as exc:  # a table the parser cannot read: keep the plain text layer
                    logger.warning("%s: page %d tables unreadable, plain text kept: %s", path, number, exc)
                    text = None
                finally:
                    page.close()
                if text:
                    out[number] = text
    except Exception as exc:
        logger.warning("%s: tables not read (%s: %s); plain text kept", path, type(exc).__name__, exc)
    return out


def _page_with_tables(page) -> str | None:
    tables: list[tuple[tuple[float, float, float, float], str]] = []
    for table in page.find_tables():
        rows = table.extract()
        if len(rows) >= 2 and table_width(rows) >= 2:
            tables.append((table.bbox, markdown_table(rows)))
    if not tables:
        return None
    x0, top, x1, bottom = page.bbox
    inside = [bbox for bbox, _ in tables]

    def outside_tables(obj: dict[str, Any]) -> bool:
        if obj.get("object_type") != "char":
            return True
        cx, cy = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
        return not any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in inside)

    rest = page.filter(outside_tables)
    blocks: list[str] = []

    def text_between(upper: float, lower: float) -> None:
        text = _page_text(rest.within_bbox((x0, upper, x1, lower)).extract_text())
        if text:
            blocks.append(text)

    cursor = top
    for bbox, markdown in sorted(tables, key=lambda t: t[0][1]):
        t_top = min(max(bbox[1], cursor), bottom)
        if t_top > cursor:
            text_between(cursor, t_top)
        blocks.append(markdown)
        cursor = t_top  # text beside a table lands after it (its cells are filtered out)
    if cursor < bottom:
        text_between(cursor, bottom)
    return "\n\n".join(blocks)
