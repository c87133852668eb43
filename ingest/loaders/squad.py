"""SQuAD-format JSON: one document per paragraph ``context``.

Format: ``{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [...]}]}]}``, read by
:mod:`ingest.squad`. ``key`` is ``"<title>/<i>"`` (``i`` = paragraph index in its article, 0-based);
metadata holds ``title`` and ``paragraph``. The context text is kept verbatim so that the answers'
``answer_start`` offsets still point into it. Questions and answers are not copied into the documents: they are
evaluation data, not corpus text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ingest.documents import Document
from ingest.squad import looks_like_squad, parse_squad

logger = logging.getLogger(__name__)


def is_squad(obj: Any) -> bool:
    """True when ``obj`` has the SQuAD shape (checked on the first article and paragraph)."""
    return looks_like_squad(obj)


def squad_documents(obj: dict[str, Any], path: Path) -> list[Document]:
    """One document per non-empty paragraph of every article."""
    docs: list[Document] = []
    seen_titles: dict[str, int] = {}
    for article in parse_squad(obj, path):
        title = article.title or f"article-{article.index}"
        # Two articles with one title would give equal keys (and equal document ids).
        repeat = seen_titles.get(title, 0)
        seen_titles[title] = repeat + 1
        key_title = title if repeat == 0 else f"{title}#{repeat + 1}"
        for paragraph in article.paragraphs:
            if not paragraph.context.strip():
                logger.warning("%s: %s paragraph %d has no context text; skipped", path, title, paragraph.index)
                continue
            docs.append(
                Document(
                    text=paragraph.context,  # verbatim: answer_start offsets index into it
                    source=str(path),
                    key=f"{key_title}/{paragraph.index}",
                    title=title,
                    metadata={"format": "squad", "title": title, "paragraph": paragraph.index},
                )
            )
    return docs
