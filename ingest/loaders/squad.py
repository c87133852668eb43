"""SQuAD-format JSON: one document per paragraph ``context``.

Format: ``{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [...]}]}]}``.
``key`` is ``"<title>/<i>"`` (``i`` = paragraph index in its article, 0-based); metadata holds
``title`` and ``paragraph``. The context text is kept verbatim so that the answers'
``answer_start`` offsets still point into it. Questions and answers are not copied into the documents: they are
evaluation data, not corpus text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ingest.documents import Document

logger = logging.getLogger(__name__)


def is_squad(obj: Any) -> bool:
    """True when ``obj`` has the SQuAD shape (checked on the first article and paragraph)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list) or not obj["data"]:
        return False
    article = obj["data"][0]
    if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
        return False
    paragraphs = article["paragraphs"]
    return bool(paragraphs) and isinstance(paragraphs[0], dict) and isinstance(paragraphs[0].get("context"), str)


def squad_documents(obj: dict[str, Any], path: Path) -> list[Document]:
    """One document per non-empty paragraph of every article."""
    docs: list[Document] = []
    seen_titles: dict[str, int] = {}
    for a, article in enumerate(obj["data"]):
        if not isinstance(article, dict):
            logger.warning("%s: data[%d] is not an article object; skipped", path, a)
            continue
        title = str(article.get("title") or f"article-{a}")
        # Two articles with one title would give equal keys (and equal document ids).
        repeat = seen_titles.get(title, 0)
        seen_titles[title] = repeat + 1
        key_title = title if repeat == 0 else f"{title}#{repeat + 1}"
        for i, paragraph in enumerate(article.get("paragraphs") or []):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context.strip():
                logger.warning("%s: %s paragraph %d has no context text; skipped", path, title, i)
                continue
            docs.append(
                Document(
                    text=context,  # verbatim: answer_start offsets index into it
                    source=str(path),
                    key=f"{key_title}/{i}",
                    title=title,
                    metadata={"format": "squad", "title": title, "paragraph": i},
                )
            )
    return docs
