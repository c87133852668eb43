"""Split documents into chunks sized in the embedder's own tokens.

Recursive splitting comes from langchain-text-splitters; this module adds what it lacks for
ragqa: sentence boundaries that include CJK punctuation, heading paths carried into each
chunk's metadata, deterministic chunk ids, and pipe tables cut only between rows, with the header
repeated in every piece of a table larger than a chunk.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ingest.config import ChunkingConfig
from ingest.documents import Chunk, Document, stable_hash
from ingest.markdown_tables import TableSpan, find_tables

logger = logging.getLogger(__name__)

# Tried in order: paragraphs, lines, sentence ends (Latin and CJK), clauses, words, characters.
SEPARATORS: list[str] = [
    r"\n\n+",
    r"\n",
    r"(?<=[。！？])",
    r"(?<=[.!?])\s+",
    r"(?<=[；;：:])\s*",
    r"(?<=[，、,])\s*",
    r"\s+",
    r"",
]


class Chunker:
    """Split :class:`Document` objects into :class:`Chunk` objects.

    ``count_tokens`` measures a piece of text in the embedder's tokens (special tokens
    excluded); ``max_tokens`` is what the embedder reads including its special tokens, so a
    chunk never exceeds ``min(config.chunk_tokens, max_tokens - special_tokens)``.
    """

    def __init__(
        self,
        config: ChunkingConfig,
        count_tokens: Callable[[str], int],
        max_tokens: int | None = None,
        special_tokens: int = 2,
    ) -> None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        limit = config.chunk_tokens
        if max_tokens is not None:
            limit = min(limit, max_tokens - special_tokens)
        if limit <= config.overlap_tokens:
            raise ValueError(
                f"chunk size {limit} tokens is not larger than the overlap {config.overlap_tokens}; "
                "lower ingest.chunking.overlap_tokens"
            )
        self.config = config
        self.limit = limit
        self.count_tokens = count_tokens
        self._splitter = RecursiveCharacterTextSplitter(
            separators=SEPARATORS,
            is_separator_regex=True,
            keep_separator="end",
            chunk_size=limit,
            chunk_overlap=config.overlap_tokens,
            length_function=count_tokens,
            strip_whitespace=True,
        )

    @classmethod
    def for_tokenizer(cls, config: ChunkingConfig, tokenizer: Any, max_tokens: int | None = None) -> Chunker:
        """A chunker that counts tokens with a Hugging Face tokenizer, or with an engine's own counter
        (an object with ``count_tokens`` and ``special_tokens``, such as :class:`ingest.embedder.E5TokenCounter`)."""

        counter = getattr(tokenizer, "count_tokens", None)
        if callable(counter):
            return cls(config, _memo_short(counter), max_tokens=max_tokens, special_tokens=tokenizer.special_tokens)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # the Rust tokenizer directly: no Python wrapper per piece, no length limit (a piece longer
            # than the embedder reads is counted in full, then split further)
            from tokenizers import Tokenizer

            fast = Tokenizer.from_str(backend.to_str())
            fast.no_truncation()
            fast.no_padding()

            def encode_count(text: str) -> int:
                return len(fast.encode(text, add_special_tokens=False).ids)

            count = _memo_short(encode_count)
        else:

            def count(text: str) -> int:
                return len(tokenizer.encode(text, add_special_tokens=False))

        special = len(tokenizer.encode("", add_special_tokens=True))
        return cls(config, count, max_tokens=max_tokens, special_tokens=special)

    def split_text(self, text: str) -> list[tuple[int, str]]:
        """Split ``text`` into ``(start_offset, chunk_text)`` pairs, in order.

        Pipe tables (:mod:`ingest.markdown_tables`) are never cut inside a row: a table that fits in a chunk is
        one paragraph for the splitter, and one larger than a chunk is cut between rows here, each piece
        starting with the table's header and separator rows.
        """
        big = [t for t in find_tables(text) if self.count_tokens(text[t.start : t.end]) > self.limit]
        if not big:
            return self._split_plain(text, 0)
        out: list[tuple[int, str]] = []
        cursor = 0
        for table in big:
            out += self._split_plain(text[cursor : table.start], cursor)
            out += self._split_table(text, table)
            cursor = table.end
        out += self._split_plain(text[cursor:], cursor)
        return out

    def _split_plain(self, text: str, base: int) -> list[tuple[int, str]]:
        if base and not text.strip():
            return []
        pieces = self._splitter.split_text(text)
        out: list[tuple[int, str]] = []
        cursor = 0
        for piece in pieces:
            start = text.find(piece, cursor)
            if start < 0:  # whitespace normalisation moved it: fall back to a global search
                start = max(text.find(piece), 0)
            out.append((base + start, piece))
            cursor = start + 1
        return out

    def _split_table(self, text: str, table: TableSpan) -> list[tuple[int, str]]:
        """Rows grouped into pieces of at most ``limit`` tokens, each led by the header and separator rows.

        A header that takes more than half a chunk is not repeated (the first piece still starts with it);
        a single row larger than a chunk is split like plain text, the one case where a row is cut.
        """
        header = table.header(text)
        header_tokens = self.count_tokens(header)
        repeat = header_tokens + 1 <= self.limit // 2
        out: list[tuple[int, str]] = []
        rows: list[tuple[int, str]] = []
        used = 0

        def flush() -> None:
            nonlocal rows, used
            if not rows:
                return
            first = not out
            body = "\n".join(line for _, line in rows)
            if first:
                out.append((table.start, header + "\n" + body))
            elif repeat:
                out.append((rows[0][0], header + "\n" + body))
            else:
                out.append((rows[0][0], body))
            rows, used = [], 0

        for offset, line in table.rows:
            cost = self.count_tokens(line) + 1
            lead = header_tokens + 1 if (repeat or not out) else 0
            if lead + cost > self.limit:  # one row larger than a chunk: cut it like plain text
                flush()
                if not out:
                    out.append((table.start, header))
                out += self._split_plain(line, offset)
                continue
            if rows and lead + used + cost > self.limit:
                flush()
            rows.append((offset, line))
            used += cost
        flush()
        if not out:
            out.append((table.start, header))
        return out

    def chunk(self, doc: Document) -> list[Chunk]:
        """Chunk one document; each chunk's metadata carries the title and heading path."""
        if doc.sections:
            text, starts, paths = _join_sections(doc.sections)
        else:
            text, starts, paths = doc.text, [0], [[]]
        chunks: list[Chunk] = []
        doc_id = doc.doc_id
        for ordinal, (start, piece) in enumerate(self.split_text(text)):
            headings = paths[max(bisect.bisect_right(starts, start) - 1, 0)]
            meta: dict[str, Any] = {k: v for k, v in doc.metadata.items() if k != "sections"}
            meta.update({"title": doc.title, "source": doc.source, "start": start})
            if headings:
                meta["headings"] = list(headings)
            chunk_id = stable_hash(doc_id, str(ordinal), piece)
            chunks.append(Chunk(chunk_id=chunk_id, doc_id=doc_id, ordinal=ordinal, text=piece, metadata=meta))
        return chunks

    def chunk_all(self, docs: Iterable[Document]) -> list[Chunk]:
        return [c for d in docs for c in self.chunk(d)]


# The splitter's last resort cuts a run without separators into single characters and measures each one (three
# calls per character): memoising short pieces makes a long unbroken run (a base64 blob, a hostile file) ~4x
# cheaper, with identical counts.
_MEMO_CHARS = 8
_MEMO_ENTRIES = 1 << 16


def _memo_short(count: Callable[[str], int]) -> Callable[[str], int]:
    memo: dict[str, int] = {}

    def counted(text: str) -> int:
        if len(text) > _MEMO_CHARS:
            return count(text)
        n = memo.get(text)
        if n is None:
            n = count(text)
            if len(memo) < _MEMO_ENTRIES:
                memo[text] = n
        return n

    return counted


def _join_sections(sections: list[tuple[list[str], str]]) -> tuple[str, list[int], list[list[str]]]:
    """Join sections with blank lines; return the text, each section's start offset and path."""
    parts: list[str] = []
    starts: list[int] = []
    paths: list[list[str]] = []
    offset = 0
    for path, body in sections:
        body = body.strip()
        if not body:
            continue
        if parts:
            offset += 2
        starts.append(offset)
        paths.append(list(path))
        parts.append(body)
        offset += len(body)
    return "\n\n".join(parts), starts or [0], paths or [[]]
