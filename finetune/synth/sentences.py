"""Prose sentences of a chunk: paragraphs and list items without headings, code and tables, split into
sentences that end with ``.``, ``!`` or ``?`` (abbreviations kept whole)."""

from __future__ import annotations

import re

_BULLET = re.compile(r"^[ \t]*(?:[-*•+]|\d{1,2}[.)])[ \t]+")
_MD_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]")
_SENT_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s|$)")
TERMINAL = re.compile(r"[.!?][\"'”’)\]]*$")
_ABBREVIATIONS = {
    "e.g",
    "i.e",
    "al",
    "etc",
    "vs",
    "cf",
    "dr",
    "mr",
    "mrs",
    "ms",
    "prof",
    "st",
    "fig",
    "approx",
    "jr",
    "sr",
}
_BAD_SENTENCE = re.compile(r"`|https?://|www\.|[{}<>=\\]|\|")


def _is_heading_line(stripped: str, next_line: str | None) -> bool:
    """A short line (up to six words) without closing punctuation, followed by more text."""
    if not next_line or not next_line.strip() or len(stripped.split()) > 6:
        return False
    return stripped[-1] not in '.!?:;,"”’)'


def _segments(text: str) -> list[tuple[int, int]]:
    """Runs of prose in ``text`` as ``(start, end)`` offsets: paragraphs and list items, without
    headings, code fences and table rows."""
    out: list[tuple[int, int]] = []
    lines = text.splitlines(keepends=True)
    cur: list[int] | None = None
    in_fence = False
    pos = 0

    def flush() -> None:
        nonlocal cur
        if cur is not None and cur[1] > cur[0]:
            out.append((cur[0], cur[1]))
        cur = None

    for i, line in enumerate(lines):
        start = pos
        pos += len(line)
        body = line.rstrip("\r\n")
        stripped = body.strip()
        end = start + len(body.rstrip())
        if stripped.startswith("```"):
            in_fence = not in_fence
            flush()
            continue
        next_line = lines[i + 1] if i + 1 < len(lines) else None
        if (
            in_fence
            or not stripped
            or _MD_HEADING.match(body)
            or stripped.startswith("|")
            or (cur is None and _is_heading_line(stripped, next_line))
        ):
            flush()
            continue
        bullet = _BULLET.match(body)
        if bullet:
            flush()
            cur = [start + bullet.end(), end]
            continue
        if cur is None:
            cur = [start + len(body) - len(body.lstrip()), end]
        else:
            cur[1] = end
    flush()
    return out


def sentence_spans(text: str, *, min_words: int = 5, max_words: int = 60) -> list[tuple[int, int]]:
    """Prose sentences of ``text`` as ``(start, end)`` offsets, ending with ``.``, ``!`` or ``?``.

    A paragraph's first sentence must start with a capital or a digit (a chunk may begin mid-sentence);
    later ones may start lower-case ("ragqa stores ..."). Headings, code, tables, URLs and fragments are
    left out.
    """
    found: list[tuple[int, int, bool]] = []  # (start, end, starts a paragraph)
    for seg_start, seg_end in _segments(text):
        seg = text[seg_start:seg_end]
        begin = 0
        for m in _SENT_END.finditer(seg):
            if m.group()[0] == ".":
                before = re.search(r"([A-Za-z][A-Za-z.]*)$", seg[begin : m.start()])
                word = before.group(1).lower() if before else ""
                if word in _ABBREVIATIONS or (before and len(before.group(1)) == 1 and before.group(1).isupper()):
                    continue
            found.append((seg_start + begin, seg_start + m.end(), begin == 0))
            begin = m.end()
        if begin < len(seg):
            found.append((seg_start + begin, seg_end, begin == 0))
    out = []
    for s, e, first in found:
        raw = text[s:e]
        s += len(raw) - len(raw.lstrip())
        raw = raw.strip()
        e = s + len(raw)
        if (
            not raw
            or not TERMINAL.search(raw)
            or not (raw[0].isalnum() and (raw[0].isupper() or raw[0].isdigit() or not first))
        ):
            continue
        n_words = len(raw.split())
        letters = sum(ch.isalpha() or ch.isspace() for ch in raw)
        if not (min_words <= n_words <= max_words) or letters < 0.8 * len(raw) or _BAD_SENTENCE.search(raw):
            continue
        out.append((s, e))
    return out
