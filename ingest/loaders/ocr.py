"""Offline OCR of page images with ``rapidocr-onnxruntime`` (PP-OCRv4 ONNX models shipped in its wheel).

Used by the PDF loader for pages without a text layer and by the image loader. Nothing is downloaded: the
detection, orientation and recognition models lie in the installed package, and run on onnxruntime's CPU
provider. The engine is imported and built on first use (about a second), once per process, so a run that
meets no scanned page pays nothing.

Each call has a time budget (``LoaderConfig.ocr_page_timeout_s``): a timer sets onnxruntime's ``terminate``
flag on the run options of every model session, which stops the model running at that moment, and the page
fails with :class:`OcrTimeoutError` naming the setting to raise.

rapidocr-onnxruntime asks for the GUI build of OpenCV (``opencv-python``, which needs ``libGL``); ragqa depends
on ``opencv-python-headless`` and the rest of rapidocr's dependencies itself and installs rapidocr with
``--no-deps`` (see the Makefile).
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ingest.errors import LoaderError

logger = logging.getLogger(__name__)

RAPIDOCR_REQUIREMENT = "rapidocr-onnxruntime==1.4.4"
MAX_THREADS = 4
DETECT_MAX_SIDE = 2000  # px; line detection runs on a copy this size (rapidocr's default), reading on the full image
INSTALL_HINT = (
    f"pip install --no-deps {RAPIDOCR_REQUIREMENT} (its other dependencies come with ragqa), "
    "or set ingest.loader.ocr to false"
)


# Called as each page's OCR starts; the isolated loader process sets it to tell its parent that a page (with
# its own budget, ocr_page_timeout_s) is under way, so that a long scan is not taken for a hung file.
on_page: Callable[[], None] | None = None


class OcrTimeoutError(LoaderError):
    """OCR of one page or image took longer than ``LoaderConfig.ocr_page_timeout_s``."""


@dataclass(frozen=True)
class OcrText:
    """Text recognised on one image: lines top to bottom, a blank line where a paragraph gap is.

    ``confidence`` is the mean recognition score of the text lines (0..1), ``None`` when none was found.
    """

    text: str
    confidence: float | None
    lines: int
    seconds: float


class _Interruptible:
    """An onnxruntime session whose ``run`` uses the engine's current run options (for the time budget)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.options: Any = None

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, run_options or self.options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class OcrEngine:
    """rapidocr's text detector and recogniser, with a time budget per image."""

    def __init__(self) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
            from rapidocr_onnxruntime.utils import OrtInferSession
        except ImportError as exc:
            raise LoaderError(f"OCR needs {RAPIDOCR_REQUIREMENT}, which is not installed: {INSTALL_HINT}") from exc
        start = time.perf_counter()
        # A few threads per model: OCR gains little past four, and each idle thread's stack still counts
        # against the loader process's address-space limit (LoaderConfig.memory_mb) on a many-core machine.
        threads = min(MAX_THREADS, os.cpu_count() or 1)
        # No orientation classifier: pages are upright, and on small print it turned correct lines upside down
        # (half the lines of a dense test page were lost).
        self._ocr = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1, use_cls=False)
        self._sessions: list[_Interruptible] = []
        self._lock = threading.Lock()  # one image at a time: the run options are shared by the sessions
        for part in (self._ocr.text_det, self._ocr.text_cls, self._ocr.text_rec):
            for value in vars(part).values():
                if isinstance(value, OrtInferSession):
                    wrapped = _Interruptible(value.session)
                    value.session = wrapped
                    self._sessions.append(wrapped)
        if len(self._sessions) != 3:  # another rapidocr layout: the budget could not be enforced
            raise LoaderError(
                f"unexpected rapidocr-onnxruntime layout ({len(self._sessions)} model sessions found); "
                f"install {RAPIDOCR_REQUIREMENT}"
            )
        logger.debug("OCR engine ready in %.2f s", time.perf_counter() - start)

    def recognise(self, image: Any, what: str, budget_s: float, started: float | None = None) -> OcrText:
        """Recognise the text of a PIL image.

        ``what`` names the page in error messages; ``budget_s`` counts from ``started`` (``time.monotonic()``,
        default now), so that the caller's rendering time counts too. Raises :class:`OcrTimeoutError`.
        """
        started = time.monotonic() if started is None else started
        if on_page is not None:
            on_page()
        with self._lock:
            result = self._run(image, what, budget_s, started + budget_s)
        text, scores, lines = _layout(result or [])
        confidence = round(statistics.fmean(scores), 4) if scores else None
        return OcrText(text=text, confidence=confidence, lines=lines, seconds=time.monotonic() - started)

    def _run(self, image: Any, what: str, budget_s: float, deadline: float) -> Any:
        from onnxruntime import RunOptions

        options = RunOptions()
        for session in self._sessions:
            session.options = options
        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _terminate, args=(options,))
        timer.daemon = True
        timer.start()
        try:
            result = self._read(image)
        except Exception as exc:
            if options.terminate or time.monotonic() >= deadline:
                raise self._timeout(what, budget_s) from None
            raise LoaderError(f"{what}: OCR failed ({type(exc).__name__}: {exc})") from exc
        finally:
            timer.cancel()
            for session in self._sessions:
                session.options = None
        if options.terminate or time.monotonic() > deadline:
            raise self._timeout(what, budget_s)
        return result

    def _read(self, image: Any) -> list[Any]:
        """Detect lines on a copy at most ``DETECT_MAX_SIDE`` px a side, read them from the full image.

        rapidocr's own call crops the lines from the reduced copy: small print then reaches the recogniser
        blurred, and it drops the spaces between words. Cropping from the full render keeps them.
        """
        import cv2
        import numpy as np

        full = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
        height, width = full.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        small = full if scale == 1.0 else cv2.resize(full, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes, _ = self._ocr.text_det(small)
        if boxes is None or len(boxes) == 0:
            return []
        boxes = [np.asarray(b, dtype=np.float32) / scale for b in self._ocr.sorted_boxes(boxes)]
        lines, _ = self._ocr.text_rec(self._ocr.get_crop_img_list(full, boxes))
        return [[box, line[0], line[1]] for box, line in zip(boxes, lines) if float(line[1]) >= self._ocr.text_score]

    @staticmethod
    def _timeout(what: str, budget_s: float) -> OcrTimeoutError:
        return OcrTimeoutError(
            f"{what}: OCR took longer than {budget_s:g} s; raise ingest.loader.ocr_page_timeout_s, lower "
            "ingest.loader.ocr_dpi, or set ingest.loader.ocr to false to skip pages without a text layer"
        )


def _terminate(options: Any) -> None:
    options.terminate = True


def _layout(result: list[Any]) -> tuple[str, list[float], int]:
    """rapidocr's ``[box, text, score]`` items as lines (boxes on one line joined left to right)."""
    boxes: list[tuple[float, float, float, str, float]] = []  # top, bottom, left, text, score
    for box, text, score in result:
        text = str(text).strip()
        if not text:
            continue
        ys = [float(p[1]) for p in box]
        xs = [float(p[0]) for p in box]
        boxes.append((min(ys), max(ys), min(xs), text, float(score)))
    if not boxes:
        return "", [], 0
    boxes.sort(key=lambda b: (b[0] + b[1]) / 2)
    lines: list[list[tuple[float, float, float, str, float]]] = []
    for b in boxes:
        if lines:
            last = lines[-1]
            top, bottom = min(x[0] for x in last), max(x[1] for x in last)
            centre = (b[0] + b[1]) / 2
            if top <= centre <= bottom:  # the box's middle lies within the current line's band
                last.append(b)
                continue
        lines.append([b])
    heights = sorted(b[1] - b[0] for b in boxes)
    line_height = heights[len(heights) // 2] or 1.0
    out: list[str] = []
    prev_bottom: float | None = None
    for line in lines:
        top = min(b[0] for b in line)
        if prev_bottom is not None:
            out.append("\n\n" if top - prev_bottom > line_height else "\n")
        out.append(" ".join(b[3] for b in sorted(line, key=lambda b: b[2])))
        prev_bottom = max(b[1] for b in line)
    return "".join(out), [b[4] for b in boxes], len(lines)


_engine: OcrEngine | None = None
_engine_lock = threading.Lock()


def get_engine() -> OcrEngine:
    """The process's OCR engine, built on first use."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = OcrEngine()
        return _engine
