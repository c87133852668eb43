"""Property-based tests (hypothesis): arbitrary bytes given any supported file name never crash a loader.

Every outcome is either documents or one of the loader's own errors (:class:`ingest.errors.LoaderError` and its
subclasses: a message naming the file and what to do), within the per-file time limit. Issue 18, "Keep it from
coming back": a hostile upload fails *its* entry, never the worker.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.config import LoaderConfig
from ingest.errors import LoaderError
from ingest.loaders.isolation import LoaderPool
from ingest.loaders.registry import SUPPORTED_SUFFIXES, load_file

#: what a file of each kind starts with, so that the bytes after it reach the format's parser
MAGIC = {
    ".pdf": b"%PDF-1.7\n",
    ".docx": b"PK\x03\x04",
    ".html": b"<!DOCTYPE html><html><body>",
    ".htm": b"<html>",
    ".xhtml": b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml">',
    ".json": b'{"text": ',
    ".jsonl": b'{"text": "a"}\n',
    ".md": b"# ",
    ".png": b"\x89PNG\r\n\x1a\n",
    ".jpg": b"\xff\xd8\xff\xe0",
    ".tiff": b"II*\x00",
}
#: the limit an in-process load must stay within (the isolated loader enforces LoaderConfig.timeout_s)
IN_PROCESS_LIMIT_S = 10.0

suffixes = st.sampled_from(SUPPORTED_SUFFIXES)
payloads = st.one_of(
    st.binary(max_size=4096),
    st.text(max_size=2048).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(max_size=1024).map(lambda t: t.encode("utf-32")),
)


def _write(tmp_path_factory, suffix: str, data: bytes, with_magic: bool):
    folder = tmp_path_factory.mktemp("hostile")
    path = folder / f"input{suffix}"
    path.write_bytes((MAGIC.get(suffix, b"") if with_magic else b"") + data)
    return path


@pytest.mark.unit
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=suffixes, data=payloads, with_magic=st.booleans())
def test_arbitrary_bytes_give_documents_or_a_loader_error(tmp_path_factory, suffix, data, with_magic):
    path = _write(tmp_path_factory, suffix, data, with_magic)
    config = LoaderConfig(ocr=False)  # OCR of random images is covered by tests/ingest/test_ocr.py's budget test
    t0 = time.perf_counter()
    try:
        docs = load_file(path, config)
    except LoaderError as exc:
        assert str(path.name) in str(exc), "the error names the file"
    else:
        assert isinstance(docs, list)
        assert all(doc.text.strip() for doc in docs), "no empty documents"
    assert time.perf_counter() - t0 < IN_PROCESS_LIMIT_S


@pytest.mark.integration
def test_the_isolated_loader_survives_a_stream_of_hostile_files(tmp_path_factory):
    """Many hostile files through one loader process: each fails or loads alone, the pool keeps serving, and a
    good file read after them is intact."""
    config = LoaderConfig(timeout_s=30.0)
    seen: list[str] = []

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(suffix=suffixes.filter(lambda s: s not in (".png", ".jpg", ".jpeg", ".tif", ".tiff")), data=payloads)
    def run(pool, suffix, data):
        path = _write(tmp_path_factory, suffix, data, True)
        try:
            pool.load(path, config)
            seen.append("loaded")
        except LoaderError:
            seen.append("failed")

    with LoaderPool(config) as pool:
        run(pool)
        good = tmp_path_factory.mktemp("good") / "good.txt"
        good.write_text("A good file after the hostile ones.\n")
        docs = pool.load(good, config)
    assert "failed" in seen
    assert docs and "good file" in docs[0].text
