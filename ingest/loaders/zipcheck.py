"""Zip-bomb checks for zip-based formats (``.docx``), made on the central directory before any member is read.

Python's :mod:`zipfile` never returns more bytes than a member's declared ``file_size`` (and fails on a CRC
mismatch), so the declared sizes bound what reading can cost.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from ingest.config import LoaderConfig
from ingest.errors import LoaderError

MB = 1 << 20
# Small members (styles, relationships) legitimately compress far more than the ratio; they cannot cost much.
RATIO_MIN_BYTES = MB


def check_zip(path: Path, data: bytes, config: LoaderConfig, kind: str) -> None:
    """Raise :class:`LoaderError` when the archive unpacks to too much, or one member expands too far.

    Raises :class:`zipfile.BadZipFile` when ``data`` is not a zip archive (the caller words that error).
    """
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    total = sum(info.file_size for info in infos)
    if total > config.max_unzipped_mb * MB:
        raise LoaderError(
            f"{path}: the {kind} unpacks to {total / MB:,.0f} MB, more than the limit of "
            f"{config.max_unzipped_mb:g} MB (ingest.loader.max_unzipped_mb); it may be a zip bomb. "
            "Split the document, or raise the limit if the file is trusted"
        )
    for info in infos:
        if info.file_size > RATIO_MIN_BYTES and info.file_size > config.max_zip_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise LoaderError(
                f"{path}: the {kind} part {info.filename!r} expands {ratio:,.0f}x when unpacked, more than the "
                f"limit of {config.max_zip_ratio:g}x (ingest.loader.max_zip_ratio); it may be a zip bomb. "
                "Re-save the document, or raise the limit if the file is trusted"
            )
