"""Document loaders: turn files into :class:`~ingest.documents.Document` objects.

Usage::

    from ingest.loaders import load_file, is_supported, SUPPORTED_SUFFIXES
    docs = load_file(path, config.loader)  # raises LoaderError subclasses

One module per file type (``text``, ``html``, ``pdf``, ``docx``, ``jsonl``, ``squad``); the
suffix registry lives in :mod:`ingest.loaders.registry`.
"""

from ingest.loaders.registry import LOADERS, SUPPORTED_SUFFIXES, Loader, is_supported, load_file

__all__ = ["LOADERS", "SUPPORTED_SUFFIXES", "Loader", "is_supported", "load_file"]
