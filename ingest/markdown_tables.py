"""Markdown (GFM pipe) tables: written by the loaders, read back by the chunker.

The PDF, DOCX and HTML loaders turn every table with two or more columns into a pipe table: the first row is
the header, then a separator row, then one line per row. Cells never hold a newline (it becomes a space) and
a ``|`` inside a cell is escaped as ``\\|``, so one line is one row. The chunker finds these tables again
with :func:`find_tables` (in any text, a user's Markdown files included) to keep rows whole and to repeat the
header in every piece of a table larger than a chunk.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_SPACES = re.compile(r"\s+")
_SEPARATOR_CELL = re.compile(r":?-+:?")


def _cell(text: str | None) -> str:
    if text is None:
        return ""
    return _SPACES.sub(" ", text).strip().replace("|", "\\|")


def markdown_table(rows: Sequence[Sequence[str | None]]) -> str:
    """Rows of cells (the first is the header) as a pipe table; ``""`` when no cell holds text.

    Rows are padded to the widest row; rows and columns without any text are dropped.
    """
    cleaned = [[_cell(c) for c in row] for row in rows]
    cleaned = [row for row in cleaned if any(row)]
    if not cleaned:
        return ""
    width = max(len(row) for row in cleaned)
    cleaned = [row + [""] * (width - len(row)) for row in cleaned]
    keep = [i for i in range(width) if any(row[i] for row in cleaned)]
    cleaned = [[row[i] for i in keep] for row in cleaned]
    lines = ["| " + " | ".join(cleaned[0]) + " |", "|" + "|".join(" --- " for _ in keep) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cleaned[1:]]
    return "\n".join(lines)


def table_width(rows: Sequence[Sequence[str | None]]) -> int:
    """Number of columns that hold text in at least one row."""
    width = max((len(r) for r in rows), default=0)
    return sum(1 for i in range(width) if any(i < len(r) and (r[i] or "").strip() for r in rows))


@dataclass(frozen=True)
class TableSpan:
    """Where a pipe table lies in a text: ``text[start:end]`` is the table without its final newline.

    ``header`` is the header and separator lines (``text[start:header_end]``); ``rows`` holds each body row
    as ``(offset, line)``.
    """

    start: int
    header_end: int
    end: int
    rows: tuple[tuple[int, str], ...]

    def header(self, text: str) -> str:
        return text[self.start : self.header_end]


def _is_row(line: str) -> bool:
    return "|" in line and bool(line.strip())


def _is_separator(line: str) -> bool:
    """A separator row: cells of dashes with optional alignment colons, e.g. ``| --- | :-: |`` or ``---|---``."""
    if "|" not in line or "-" not in line:
        return False
    cells = line.strip().removeprefix("|").removesuffix("|").split("|")
    return all(_SEPARATOR_CELL.fullmatch(c.strip()) for c in cells)


def find_tables(text: str) -> list[TableSpan]:
    """Every pipe table in ``text`` (a header row with ``|``, a separator row, then rows with ``|``). Linear."""
    if "|" not in text or "-" not in text:
        return []
    lines = text.splitlines(keepends=True)
    offsets: list[int] = []
    pos = 0
    for line in lines:
        offsets.append(pos)
        pos += len(line)
    spans: list[TableSpan] = []
    i = 0
    n = len(lines)
    while i < n - 1:
        head, sep = lines[i].rstrip("\r\n"), lines[i + 1].rstrip("\r\n")
        if not (_is_row(head) and _is_separator(sep)):
            i += 1
            continue
        header_end = offsets[i + 1] + len(sep)
        end = header_end
        rows: list[tuple[int, str]] = []
        j = i + 2
        while j < n:
            line = lines[j].rstrip("\r\n")
            if not _is_row(line):
                break
            rows.append((offsets[j], line))
            end = offsets[j] + len(line)
            j += 1
        spans.append(TableSpan(start=offsets[i], header_end=header_end, end=end, rows=tuple(rows)))
        i = j
    return spans
