"""Word ``.docx`` loader (python-docx): paragraphs and tables in order, headings as sections.

Paragraphs styled ``Heading N`` open a section at level N (``Title`` at level 0); a table with
two or more columns becomes a Markdown pipe table (:mod:`ingest.markdown_tables`, first row =
header). Title: the core-properties title, else the first ``Title``/heading paragraph, else the
file stem.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from pathlib import Path

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import LoaderError
from ingest.loaders.text import normalise_text
from ingest.loaders.zipcheck import check_zip
from ingest.markdown_tables import markdown_table, table_width

logger = logging.getLogger(__name__)

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.I)
_LIST_STYLE = re.compile(r"^list\s*(bullet|number|paragraph)", re.I)


def _heading_level(style_name: str) -> int | None:
    if style_name.lower() == "title":
        return 0
    m = _HEADING_STYLE.match(style_name.strip())
    return int(m.group(1)) if m else None


def _style_name(paragraph) -> str:
    try:
        style = paragraph.style
        return style.name if style is not None and style.name else ""
    except (KeyError, ValueError):  # a style id missing from styles.xml
        return ""


def _cell_text(cell) -> str:
    """A cell's paragraphs on one line; a nested table's rows follow, separated by ``;``."""
    text = " ".join(p.text.strip() for p in cell.paragraphs if p.text.strip())
    nested = ["; ".join(" ".join(c for c in row if c) for row in _table_grid(t)) for t in cell.tables]
    return " ".join([text, *nested]).strip()


def _table_grid(table) -> list[list[str]]:
    """One list per row, one cell per grid column; a merged cell's text is kept in its first column."""
    grid: list[list[str]] = []
    for row in table.rows:
        cells: list[str] = []
        last = None
        for cell in row.cells:
            if cell._tc is last:  # a merged cell is returned once per grid column
                cells.append("")
                continue
            last = cell._tc
            cells.append(_cell_text(cell))
        if any(cells):
            grid.append(cells)
    return grid


def _table_block(table) -> str:
    """A Markdown table (header = first row); a one-column table stays one line per row."""
    grid = _table_grid(table)
    if table_width(grid) >= 2:
        return markdown_table(grid)
    return "\n".join(" ".join(c for c in row if c) for row in grid)


def _join_blocks(blocks: list[tuple[str, str]]) -> str:
    """Blank lines between blocks; consecutive list items on consecutive lines."""
    out: list[str] = []
    prev = ""
    for kind, text in blocks:
        if out:
            out.append("\n" if kind == prev == "item" else "\n\n")
        out.append(text)
        prev = kind
    return "".join(out)


def _open(path: Path, data: bytes, config: LoaderConfig):
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        check_zip(path, data, config, ".docx")  # before python-docx unpacks anything
        return docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile) as exc:
        raise LoaderError(
            f"{path}: not a valid .docx file (not a Word zip package: {exc}); "
            "re-save it from Word/LibreOffice as .docx (old .doc files must be converted)"
        ) from exc
    except LoaderError:
        raise
    except Exception as exc:  # damaged XML parts, missing relationships, ...
        raise LoaderError(
            f"{path}: cannot read the .docx, it looks corrupt ({type(exc).__name__}: {exc}); "
            "re-save it from Word/LibreOffice"
        ) from exc


def load_docx(path: Path, data: bytes, config: LoaderConfig) -> list[Document]:
    """One document per file with heading sections."""
    from docx.table import Table

    document = _open(path, data, config)
    # Each section: its heading path and its blocks as (kind, text); kind "item" for list items.
    sections: list[tuple[list[str], list[tuple[str, str]]]] = [([], [])]
    stack: list[tuple[int, str]] = []
    first_heading = ""
    try:
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                rendered = _table_block(block)
                if rendered:
                    sections[-1][1].append(("table", rendered))
                continue
            text = block.text.strip()
            if not text:
                continue
            style = _style_name(block)
            level = _heading_level(style)
            if level is None:
                if _LIST_STYLE.match(style):
                    sections[-1][1].append(("item", f"- {text}"))
                else:
                    sections[-1][1].append(("para", text))
                continue
            first_heading = first_heading or text
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, text))
            sections.append(([h for _, h in stack], [("heading", text)]))
    except Exception as exc:
        raise LoaderError(f"{path}: cannot read the .docx body ({type(exc).__name__}: {exc}); re-save it") from exc

    joined = [(p, normalise_text(_join_blocks(blocks))) for p, blocks in sections if blocks]
    joined = [(p, t) for p, t in joined if t.strip()]
    core_title = (document.core_properties.title or "").strip()
    title = core_title or first_heading or path.stem
    return [
        Document(
            text="\n\n".join(t for _, t in joined),
            source=str(path),
            title=title,
            metadata={"format": "docx", "title": title},
            sections=joined,
        )
    ]
