"""JSON (``.json``) and JSON Lines (``.jsonl``) loaders: one document per record.

A record is an object whose text is in ``config.json_text_field`` (a dotted path such as
``"body.text"`` reaches into nested objects; a list of strings is joined by blank lines) and
whose title is in ``config.json_title_field``; a bare string is a record too. ``key`` is the
record's index (for ``.jsonl`` the 0-based line index, so keys stay stable when a line is
skipped). A ``.json`` file may hold a list of records, one record, an object with one list of
records (``{"data": [...]}``), or SQuAD (handed to :mod:`ingest.loaders.squad`).

In ``.jsonl``, malformed lines are skipped with a warning naming them as long as one line is
good; a file with no good line raises :class:`LoaderError`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import EmptyDocumentError, LoaderError
from ingest.loaders.squad import is_squad, squad_documents
from ingest.loaders.text import decode_bytes, normalise_text

logger = logging.getLogger(__name__)

_MAX_FIELDS = 20
_MAX_FIELD_CHARS = 200


def _decode_json_text(path: Path, data: bytes) -> str:
    # No normalise_text here: it would rewrite characters inside JSON strings.
    text, _ = decode_bytes(data, path)
    return text.lstrip("\ufeff")


def _get(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return record.get(dotted)  # a flat key that contains dots
        value = value[part]
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    return ""


def _extra_fields(record: dict[str, Any], config: LoaderConfig) -> dict[str, Any]:
    """Small scalar fields (ids, urls, dates) kept as metadata; they travel into every chunk."""
    skip = {config.json_text_field, config.json_title_field}
    out: dict[str, Any] = {}
    for name, value in record.items():
        if name in skip or len(out) >= _MAX_FIELDS:
            continue
        if (
            isinstance(value, (int, float, bool))
            or value is None
            or isinstance(value, str)
            and len(value) <= _MAX_FIELD_CHARS
        ):
            out[name] = value
    return out


def _record_document(
    record: Any, index: int, path: Path, config: LoaderConfig, fmt: str, line: int | None = None
) -> Document | None:
    if isinstance(record, str):
        text, title, fields = record, "", {}
    elif isinstance(record, dict):
        text = _as_text(_get(record, config.json_text_field))
        raw_title = _get(record, config.json_title_field)
        title = str(raw_title).strip() if isinstance(raw_title, (str, int, float)) else ""
        fields = _extra_fields(record, config)
    else:
        return None
    text = normalise_text(text)
    if not text.strip():
        return None
    title = title or path.stem
    metadata: dict[str, Any] = {"format": fmt, "title": title, "record": index}
    if line is not None:
        metadata["line"] = line
    if fields:
        metadata["fields"] = fields
    return Document(text=text, source=str(path), key=str(index), title=title, metadata=metadata)


def _no_text_error(path: Path, records: list[Any], config: LoaderConfig) -> LoaderError:
    if not records:
        return EmptyDocumentError(f"{path}: holds no records; remove it or add records")
    seen = sorted({k for r in records[:100] if isinstance(r, dict) for k in r})
    return LoaderError(
        f"{path}: no record has text in the field {config.json_text_field!r} "
        f"(fields seen: {', '.join(seen) or 'none'}); set ingest.loader.json_text_field to the field "
        "that holds the text"
    )


def _records_of(obj: Any, config: LoaderConfig, path: Path) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        if _as_text(_get(obj, config.json_text_field)):
            return [obj]
        lists = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        if len(lists) == 1:
            logger.debug("%s: reading the records of the one list in the top-level object", path)
            return lists[0]
        return [obj]
    return [obj]


def load_json(path: Path, data: bytes, config: LoaderConfig) -> list[Document]:
    """Records of a ``.json`` file, or SQuAD paragraphs when the file is SQuAD."""
    text = _decode_json_text(path, data)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several values: JSON Lines saved as .json
            logger.info("%s: holds several JSON values; reading it as JSON Lines", path)
            return _jsonl_documents(path, text, config)
        raise LoaderError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; fix the file "
            "(e.g. check it with `python -m json.tool`)"
        ) from exc
    if is_squad(obj):
        docs = squad_documents(obj, path)
        if not docs:
            raise EmptyDocumentError(f"{path}: SQuAD file without any paragraph text")
        return docs
    records = _records_of(obj, config, path)
    docs = [d for i, r in enumerate(records) if (d := _record_document(r, i, path, config, "json")) is not None]
    if not docs:
        raise _no_text_error(path, records, config)
    if len(docs) < len(records):
        logger.warning(
            "%s: %d of %d records have no text in %r; skipped",
            path, len(records) - len(docs), len(records), config.json_text_field,
        )  # fmt: skip
    return docs


def _jsonl_documents(path: Path, text: str, config: LoaderConfig) -> list[Document]:
    docs: list[Document] = []
    records: list[Any] = []
    bad: list[str] = []
    no_text: list[int] = []
    for index, line in enumerate(text.replace("\r\n", "\n").split("\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(f"line {index + 1} column {exc.colno}: {exc.msg}")
            continue
        records.append(record)
        doc = _record_document(record, index, path, config, "jsonl", line=index + 1)
        if doc is None:
            no_text.append(index + 1)
        else:
            docs.append(doc)
    if not docs:
        if bad:
            shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise LoaderError(f"{path}: no valid JSON line ({shown}); write one JSON object per line")
        raise _no_text_error(path, records, config)
    if bad:
        logger.warning("%s: skipped %d malformed line(s): %s", path, len(bad), "; ".join(bad[:10]))
    if no_text:
        logger.warning(
            "%s: skipped %d line(s) without text in %r: %s",
            path, len(no_text), config.json_text_field, no_text[:20],
        )  # fmt: skip
    return docs


def load_jsonl(path: Path, data: bytes, config: LoaderConfig) -> list[Document]:
    """One document per line of a ``.jsonl`` file."""
    return _jsonl_documents(path, _decode_json_text(path, data), config)
