"""HTML loader: readable text and heading sections from a web page or a Sphinx build.

Parsed with lxml's etree HTML parser directly: BeautifulSoup over lxml takes over ten times
longer on the Python docs for the same text. Only the main content is read: the element with ``role="main"``,
else ``<main>``, else a single ``<article>``, else ``<body>``. Scripts, styles, navigation, page headers and
footers, hidden elements and Sphinx chrome (``div.related``, ``div.sphinxsidebar``,
``div.footer``, the ``¶`` header links) are dropped. Paragraphs are separated by blank lines,
list items by single newlines, a table with two or more columns becomes a Markdown pipe table
(:mod:`ingest.markdown_tables`; first row = header) and a one-column table one line per row,
``<pre>`` keeps its line breaks, and every heading starts a new section whose heading path is the
list of enclosing headings.
"""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import EmptyDocumentError, LoaderError
from ingest.loaders.text import decode_bytes, normalise_text
from ingest.markdown_tables import markdown_table, table_width

logger = logging.getLogger(__name__)

_SKIP_TAGS = frozenset(
    {
        "script", "style", "noscript", "template", "nav", "svg", "math", "iframe", "object",
        "embed", "canvas", "button", "input", "select", "textarea", "form", "head", "title",
        "meta", "link", "base", "img", "video", "audio", "map", "dialog",
    }
)  # fmt: skip
_PAGE_CHROME_TAGS = frozenset({"header", "footer"})
_SKIP_CLASSES = frozenset(
    {
        "headerlink", "related", "sphinxsidebar", "sphinxsidebarwrapper", "footer", "mobile-nav",
        "menu-wrapper", "inline-search", "searchbox", "clearer", "copybutton", "skip-link",
        "version_switcher_placeholder", "language_switcher_placeholder", "breadcrumbs",
        "wy-nav-side", "rst-footer-buttons", "navigation", "sidebar-drawer", "toc-drawer",
    }
)  # fmt: skip
_SKIP_ROLES = frozenset({"navigation", "search", "banner", "contentinfo", "complementary"})
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "section", "article", "main", "aside", "blockquote", "ul", "ol", "li", "dl",
        "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "caption", "figure", "figcaption",
        "address", "details", "summary", "hr", "center", "body", "html", "fieldset", "header",
        "footer", "hgroup",
    }
)  # fmt: skip
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_CELL_TAGS = frozenset({"td", "th"})
_MAX_COLSPAN = 64  # a hostile colspan="1000000" must not build a million empty cells
_MAX_ROWSPAN = 10_000

_SPACES = re.compile(r"[ \t\n\r\f\v\xa0]+")
_BR = "\x00"  # line-break marker inside a paragraph (control characters never survive decoding)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_DECL = re.compile(r"\A\s*<\?xml[^>]*\?>")


def _skipped(el, inside_article: bool) -> bool:
    tag = el.tag
    if tag in _SKIP_TAGS:
        return True
    if tag in _PAGE_CHROME_TAGS and not inside_article:
        return True
    attrib = el.attrib
    if not attrib:
        return False
    cls = attrib.get("class")
    if cls and not _SKIP_CLASSES.isdisjoint(cls.split()):
        return True
    role = attrib.get("role")
    if role and role in _SKIP_ROLES:
        return True
    if "hidden" in attrib or attrib.get("aria-hidden") == "true":
        return True
    style = attrib.get("style")
    return bool(style and "display:none" in style.replace(" ", "").lower())


def _collapse(text: str) -> str:
    text = _SPACES.sub(" ", text)
    if _BR in text:
        text = "\n".join(part.strip() for part in text.split(_BR))
    return text.strip()


@dataclass
class _Walker:
    """Turns an lxml tree into blocks grouped by heading sections."""

    sections: list[tuple[list[str], list[tuple[str, str]]]] = field(default_factory=list)
    stack: list[tuple[int, str]] = field(default_factory=list)
    inline: list[str] = field(default_factory=list)
    prefix: str = ""
    first_h1: str = ""

    def __post_init__(self) -> None:
        self.sections.append(([], []))

    # -- output ------------------------------------------------------------------------------
    def emit(self, kind: str, text: str) -> None:
        if text.strip():
            self.sections[-1][1].append((kind, text))

    def flush(self, kind: str = "para") -> None:
        if not self.inline:
            return
        text = _collapse("".join(self.inline))
        self.inline.clear()
        if text:
            if self.prefix:
                text, kind, self.prefix = self.prefix + text, "item", ""
            self.emit(kind, text)

    def heading(self, level: int, text: str) -> None:
        self.flush()
        text = text.rstrip("¶ ")
        if not text:
            return
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, text))
        if level == 1 and not self.first_h1:
            self.first_h1 = text
        self.sections.append(([h for _, h in self.stack], [("heading", text)]))

    # -- traversal ---------------------------------------------------------------------------
    def inline_text(self, el, inside_article: bool) -> str:
        """All text under ``el`` on one line (skipped elements left out)."""
        parts: list[str] = []
        self._gather(el, parts, inside_article)
        return _collapse("".join(parts))

    def _gather(self, el, parts: list[str], inside_article: bool) -> None:
        if el.text:
            parts.append(el.text)
        for child in el:
            if isinstance(child.tag, str) and not _skipped(child, inside_article):
                if child.tag == "br":
                    parts.append(_BR)
                else:
                    self._gather(child, parts, inside_article)
                    parts.append(" " if child.tag in _BLOCK_TAGS or child.tag in _CELL_TAGS else "")
            if child.tail:
                parts.append(child.tail)

    def table(self, el, inside_article: bool) -> None:
        """A table with two or more columns as a Markdown table (first row = header), else one line per row."""
        self.flush()
        rows: list = []
        for child in el:
            if not isinstance(child.tag, str) or _skipped(child, inside_article):
                continue
            if child.tag == "caption":
                self.emit("para", self.inline_text(child, inside_article))
            elif child.tag == "tr":
                rows.append(child)
            elif child.tag in ("thead", "tbody", "tfoot"):
                rows += [tr for tr in child if tr.tag == "tr" and not _skipped(tr, inside_article)]
        grid = self.grid(rows, inside_article)
        if table_width(grid) >= 2:
            self.emit("table", markdown_table(grid))
        else:
            for cells in grid:
                self.emit("row", " | ".join(c for c in cells if c))

    def grid(self, rows: list, inside_article: bool) -> list[list[str]]:
        """Cells by grid column: a ``colspan``/``rowspan`` cell keeps its text in its first column only."""
        grid: list[list[str]] = []
        covered: dict[int, int] = {}  # column -> rows still covered by a rowspan from above
        for tr in rows:
            cells: list[str] = []
            for c in tr:
                if not isinstance(c.tag, str) or c.tag not in _CELL_TAGS or _skipped(c, inside_article):
                    continue
                while covered.get(len(cells), 0) > 0:
                    covered[len(cells)] -= 1
                    cells.append("")
                col = len(cells)
                cols, down = _span(c, "colspan", _MAX_COLSPAN), _span(c, "rowspan", _MAX_ROWSPAN)
                cells.append(self.inline_text(c, inside_article))
                cells += [""] * (cols - 1)
                if down > 1:
                    for k in range(col, col + cols):
                        covered[k] = down - 1
            for k, left in covered.items():
                if k >= len(cells) and left > 0:
                    covered[k] = left - 1
            grid.append(cells)
        return grid

    def walk(self, el, inside_article: bool = False, list_depth: int = 0) -> None:
        tag = el.tag
        if tag == "pre":
            self.flush()
            self.emit("pre", "".join(el.itertext()).strip("\n"))
            return
        level = _HEADINGS.get(tag)
        if level is not None:
            self.heading(level, self.inline_text(el, inside_article))
            return
        if tag == "table":
            self.table(el, inside_article)
            return
        if tag == "tr":
            self.flush()
            cells = [
                self.inline_text(c, inside_article)
                for c in el
                if isinstance(c.tag, str) and c.tag in _CELL_TAGS and not _skipped(c, inside_article)
            ]
            self.emit("row", " | ".join(c for c in cells if c))
            return
        if tag == "br":
            self.inline.append(_BR)
            return
        block = tag in _BLOCK_TAGS
        if block:
            self.flush()
        if tag == "article":
            inside_article = True
        elif tag in ("ul", "ol"):
            list_depth += 1
        if el.text:
            self.inline.append(el.text)
        number = _list_start(el) if tag == "ol" else 0
        for child in el:
            if isinstance(child.tag, str) and not _skipped(child, inside_article):
                if child.tag == "li" and tag in ("ul", "ol"):
                    self.flush()
                    number += 1
                    marker = f"{number}." if tag == "ol" else "-"
                    self.prefix = f"{'  ' * (list_depth - 1)}{marker} "
                self.walk(child, inside_article, list_depth)
            if child.tail:
                self.inline.append(child.tail)
        if block:
            self.flush("item" if tag == "li" else "para")
            if tag == "li":
                self.prefix = ""


def _span(cell, attr: str, cap: int) -> int:
    try:
        return min(max(int(cell.get(attr, "1")), 1), cap)
    except ValueError:
        return 1


def _list_start(el) -> int:
    try:
        return int(el.get("start", "1")) - 1
    except ValueError:
        return 0


def _join_blocks(blocks: list[tuple[str, str]]) -> str:
    out: list[str] = []
    prev = ""
    for kind, text in blocks:
        if out:
            out.append("\n" if kind == prev and kind in ("item", "row") else "\n\n")
        out.append(text)
        prev = kind
    return "".join(out)


def _decode_html(data: bytes, path: Path) -> tuple[str, str]:
    """Decode with the page's declared charset when it works, else like a text file."""
    m = _META_CHARSET.search(data[:4096])
    if m and not data.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        declared = m.group(1).decode("ascii").lower()
        try:
            codecs.lookup(declared)
            return data.decode(declared), declared
        except (LookupError, UnicodeDecodeError):
            logger.debug("%s: declared charset %r does not fit; detecting", path, declared)
    return decode_bytes(data, path)


def _content_root(doc):
    for query in ('.//*[@role="main"]', ".//main"):
        found = doc.find(query)  # ElementPath stops at the first match
        if found is not None:
            return found
    articles = doc.findall(".//article")
    if len(articles) == 1:
        return articles[0]
    body = doc.find("body")
    return body if body is not None else doc


def load_html(path: Path, data: bytes, config: LoaderConfig) -> list[Document]:
    """One document per page; title = first ``<h1>`` of the content, else ``<title>``, else stem."""
    from lxml import etree

    text, encoding = _decode_html(data, path)
    text = _XML_DECL.sub("", text, count=1)
    # The plain etree parser: lxml.html's element classes cost a lookup per element.
    parser = etree.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)
    try:
        doc = etree.fromstring(text, parser)
    except (etree.LxmlError, ValueError) as exc:
        raise LoaderError(f"{path}: cannot parse the HTML ({exc}); check that the file is HTML") from exc
    if doc is None:
        raise EmptyDocumentError(f"{path}: the HTML page holds no text; add content or leave it out")

    walker = _Walker()
    root = _content_root(doc)
    walker.walk(root, inside_article=root.tag == "article")
    walker.flush()

    sections = [(path_, normalise_text(_join_blocks(blocks))) for path_, blocks in walker.sections if blocks]
    sections = [(p, t) for p, t in sections if t.strip()]
    html_title = doc.findtext(".//title") or ""
    html_title = _collapse(html_title)
    title = walker.first_h1 or html_title or path.stem
    metadata = {"format": "html", "title": title, "encoding": encoding}
    if html_title and html_title != title:
        metadata["html_title"] = html_title
    return [
        Document(
            text="\n\n".join(t for _, t in sections),
            source=str(path),
            title=title,
            metadata=metadata,
            sections=sections,
        )
    ]
