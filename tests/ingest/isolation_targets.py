"""Loader targets for tests/ingest/test_isolation.py, run inside the loader process (kept free of heavy imports).

Each behaves like ``load_file`` except on files whose name starts with ``evil``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ingest.config import LoaderConfig
from ingest.loaders import load_file


def slow_load(path: Path, config: LoaderConfig):
    if path.name.startswith("evil"):
        time.sleep(600)
    return load_file(path, config)


def greedy_load(path: Path, config: LoaderConfig):
    if path.name.startswith("evil"):
        hoard = []
        while True:  # grows until the address-space limit stops it
            hoard.append(bytearray(64 << 20))
    return load_file(path, config)


def crashing_load(path: Path, config: LoaderConfig):
    if path.name.startswith("evil"):
        os.kill(os.getpid(), signal.SIGKILL)
    return load_file(path, config)


def paged_load(path: Path, config: LoaderConfig):
    """Like a long scanned PDF: pages of 0.4 s, each reported as OCR does; ``evil`` files stall on one page."""
    from ingest.loaders import ocr

    for _ in range(1 if path.name.startswith("evil") else 6):
        if ocr.on_page is not None:
            ocr.on_page()
        time.sleep(0.4)
    if path.name.startswith("evil"):
        time.sleep(600)
    return load_file(path, config)
