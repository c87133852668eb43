"""Plain text (``.txt``) and Markdown (``.md``) loaders, and the byte decoding they share.

Decoding order: a byte-order mark decides (UTF-8/16/32); else strict UTF-8; else
charset-normalizer's best guess (latin-1, cp1252, GB18030, Shift-JIS, ...). Newlines are
normalised to ``\\n`` and a leading BOM is dropped.
"""

from __future__ import annotations

import codecs
import logging
import re
from pathlib import Path

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import LoaderError

logger = logging.getLogger(__name__)

# Longest BOM first: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

_NEWLINES = re.compile(r"\r\n?|\u2028|\u2029|\x85")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def decode_bytes(data: bytes, path: Path) -> tuple[str, str]:
    """Decode ``data`` to text; return ``(text, encoding)``.

    Raises :class:`LoaderError` when the bytes are not text in any encoding we can detect.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding), encoding
            except UnicodeDecodeError as exc:
                raise LoaderError(
                    f"{path}: starts with a {encoding} byte-order mark but is not valid {encoding} "
                    f"({exc.reason} at byte {exc.start}); re-save the file as UTF-8"
                ) from exc
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    return _detect(data, path)


# When charset-normalizer finds several encodings equally plausible (common for short texts:
# cp1250, cp1252 and cp1257 decode most Western text with the same score), prefer the most
# widely used one.
_PREFERRED = (
    "cp1252", "gb18030", "cp932", "shift_jis", "euc_jp", "big5", "cp949", "euc_kr", "cp1251",
    "koi8_r", "cp1250", "iso8859_15", "latin_1",
)  # fmt: skip
_TIE = 0.01


def _detect(data: bytes, path: Path) -> tuple[str, str]:
    from charset_normalizer import from_bytes

    results = from_bytes(data)
    best = results.best()
    if best is None:
        raise LoaderError(
            f"{path}: not UTF-8 and no other text encoding fits (is it a binary file?); convert it to UTF-8 text"
        )
    tied = {
        codecs.lookup(name).name
        for match in results
        if match.chaos <= best.chaos + _TIE and match.coherence >= best.coherence - _TIE
        for name in match.could_be_from_charset
    }
    encoding = next((e for e in _PREFERRED if codecs.lookup(e).name in tied), best.encoding)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        encoding, text = best.encoding, str(best)
    logger.debug("%s: not UTF-8, decoded as %s", path, encoding)
    return text, encoding


def normalise_text(text: str) -> str:
    """Unify newlines, drop a leading BOM and control characters, trim trailing spaces."""
    text = _NEWLINES.sub("\n", text.lstrip("\ufeff"))
    text = _CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def read_text(path: Path, data: bytes) -> tuple[str, str]:
    """Decode and normalise a text file's bytes; return ``(text, encoding)``."""
    text, encoding = decode_bytes(data, path)
    return normalise_text(text), encoding


def load_text(path: Path, data: bytes, config: LoaderConfig) -> list[Document]:
    """One document per file; the title is the file stem."""
    text, encoding = read_text(path, data)
    return [
        Document(
            text=text,
            source=str(path),
            title=path.stem,
            metadata={"format": "text", "title": path.stem, "encoding": encoding},
        )
    ]


# --- Markdown ------------------------------------------------------------------------------

# Every pattern here runs on untrusted lines, so each one is linear: anchored, with no two adjacent
# quantifiers that can match the same characters. Headings and the front-matter title are parsed by hand
# (a regex for them, e.g. ``[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$``, backtracks quadratically on a run of spaces).
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n(?:---|\.\.\.)(?:\n|\Z)", re.S)
_FRONT_TITLE_KEY = re.compile(r"^title:", re.M)
_QUOTES = "\"'"


def _atx_heading(line: str) -> tuple[int, str] | None:
    """``(level, text)`` of an ATX heading line (``## Text ##``), else None; linear in the line."""
    body = line.lstrip(" ")
    if len(line) - len(body) > 3 or not body.startswith("#"):
        return None
    rest = body.lstrip("#")
    level = len(body) - len(rest)
    if level > 6 or (rest and rest[0] not in " \t"):
        return None
    text = rest.strip(" \t")
    closed = text.rstrip("#")
    if closed and closed[-1] in " \t" and len(closed) < len(text):
        text = closed  # an optional closing sequence after the text: ``# Title ##`` (``# #`` is the text "#")
    return level, text.strip()


def _front_matter_title(front: str) -> str:
    """The ``title:`` value of YAML front matter (one optional pair of quotes removed), else ``""``."""
    m = _FRONT_TITLE_KEY.search(front)
    if m is None:
        return ""
    value = front[m.end() :].lstrip()
    if value[:1] and value[0] in _QUOTES:
        value = value[1:]
    value = value.split("\n", 1)[0].rstrip()
    if value[-1:] and value[-1] in _QUOTES:
        value = value[:-1]
    return value.strip()


def _markdown_headings(lines: list[str]) -> list[tuple[int, int, int, str]]:
    """Find headings outside fenced code: ``(first_line, last_line, level, text)``."""
    found: list[tuple[int, int, int, str]] = []
    fence: str | None = None
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if m:
            marker = m.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence) and not line.strip()[len(marker) :].strip():
                fence = None
            continue
        if fence is not None:
            continue
        atx = _atx_heading(line)
        if atx is not None:
            found.append((i, i, atx[0], atx[1]))
            continue
        m = _SETEXT.match(line)
        prev = lines[i - 1] if i > 0 else ""
        if (
            m
            and prev.strip()
            and not (found and found[-1][1] == i - 1)
            and not _FENCE.match(prev)
            and not prev.lstrip().startswith((">", "- ", "* ", "+ ", "|"))
            and (i < 2 or not lines[i - 2].strip() or (found and found[-1][1] == i - 2))
        ):
            found.append((i - 1, i, 1 if m.group(1)[0] == "=" else 2, prev.strip()))
    return found


def split_markdown(text: str) -> list[tuple[list[str], str]]:
    """Split Markdown into ``(heading_path, text)`` sections; each section starts with its heading line(s)."""
    lines = text.split("\n")
    sections: list[tuple[list[str], str]] = []
    stack: list[tuple[int, str]] = []
    start = 0
    path: list[str] = []
    for first, _last, level, heading in _markdown_headings(lines):
        body = "\n".join(lines[start:first]).strip("\n")
        if body.strip():
            sections.append((path, body))
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading))
        path = [h for _, h in stack if h]
        start = first
    body = "\n".join(lines[start:]).strip("\n")
    if body.strip():
        sections.append((path, body))
    return sections


def load_markdown(path: Path, data: bytes, config: LoaderConfig) -> list[Document]:
    """One document per file with heading sections; title = front-matter title, first ``#`` heading or stem."""
    text, encoding = read_text(path, data)
    title = ""
    front = _FRONT_MATTER.match(text)
    if front:
        title = _front_matter_title(front.group(1))
        text = text[front.end() :].strip("\n")
    lines = text.split("\n")
    headings = _markdown_headings(lines)
    if not title:
        title = next((h for _, _, level, h in headings if level == 1 and h), "")
    if not title:
        title = next((h for _, _, _, h in headings if h), path.stem)
    return [
        Document(
            text=text,
            source=str(path),
            title=title,
            metadata={"format": "markdown", "title": title, "encoding": encoding},
            sections=split_markdown(text),
        )
    ]
