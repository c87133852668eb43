"""Image loader (``.png .jpg .jpeg .tif .tiff``): the text recognised by offline OCR.

A photo or a scan of a page becomes one :class:`Document`; a multi-page TIFF one per frame (``key = "page-N"``,
``metadata["page"] = N``). Every document records ``metadata["ocr"] = True`` and the mean recognition score
in ``metadata["ocr_confidence"]``. OCR is :mod:`ingest.loaders.ocr` with the same per-page time budget as
scanned PDF pages (``LoaderConfig.ocr_page_timeout_s``).
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import EmptyDocumentError, LoaderError
from ingest.loaders.text import normalise_text

logger = logging.getLogger(__name__)

MAX_FRAMES = 500  # a TIFF claiming more pages than this is read up to here, with a warning
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}


def _open(path: Path, data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as exc:
        raise LoaderError(f"{path}: the image is too large to read safely ({exc}); scale it down first") from exc
    except UnidentifiedImageError as exc:
        raise LoaderError(f"{path}: not a readable image; check the file or its extension") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data
        raise LoaderError(
            f"{path}: cannot read the image, it looks corrupt or truncated ({type(exc).__name__}: {exc}); re-export it"
        ) from exc
    if image.format not in _FORMATS:
        raise LoaderError(
            f"{path}: holds a {image.format or 'unknown'} image, not PNG, JPEG or TIFF; convert it or fix its extension"
        )
    return image


def load_image(path: Path, data: bytes, config: LoaderConfig) -> list[Document]:
    """One document per image (per frame of a multi-page TIFF) with its recognised text."""
    if not config.ocr:
        raise LoaderError(
            f"{path}: an image holds no text layer and OCR is off; set ingest.loader.ocr to true to read it"
        )
    from PIL import ImageSequence

    from ingest.loaders.ocr import get_engine

    image = _open(path, data)
    engine = get_engine()
    n_frames = int(getattr(image, "n_frames", 1))
    if n_frames > MAX_FRAMES:
        logger.warning("%s: %d frames, only the first %d are read", path, n_frames, MAX_FRAMES)
    many = n_frames > 1
    docs: list[Document] = []
    for index, frame in enumerate(ImageSequence.Iterator(image), start=1):
        if index > MAX_FRAMES:
            break
        started = time.monotonic()
        what = f"{path} page {index}" if many else str(path)
        try:
            rgb = frame.convert("RGB")
        except (OSError, ValueError) as exc:
            raise LoaderError(f"{what}: cannot decode the image ({exc}); re-export it") from exc
        result = engine.recognise(rgb, what, budget_s=config.ocr_page_timeout_s, started=started)
        text = normalise_text(result.text)
        if not text.strip():
            continue
        metadata: dict[str, Any] = {
            "format": _FORMATS[str(image.format)],
            "title": path.stem,
            "ocr": True,
            "ocr_confidence": result.confidence,
            "width": rgb.width,
            "height": rgb.height,
        }
        if many:
            metadata.update(page=index, pages=n_frames)
        docs.append(
            Document(
                text=text,
                source=str(path),
                key=f"page-{index}" if many else "",
                title=path.stem,
                metadata=metadata,
            )
        )
    if not docs:
        raise EmptyDocumentError(f"{path}: OCR found no text in the image; leave it out")
    return docs
