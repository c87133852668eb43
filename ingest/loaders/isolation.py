"""Load files in a separate process with a time limit and a memory limit per file.

A loader runs on untrusted bytes: a pathological file may spin (a quadratic corner in a parser), grow without
bound (a decompression bomb) or crash the interpreter. In-process, any of these stalls or kills the whole
server. :class:`LoaderPool` runs :func:`ingest.loaders.registry.load_file` in one child process that is
reused across the files of an ingest run:

- the child's address space is capped (``RLIMIT_AS`` = ``LoaderConfig.memory_mb``), so an allocation past the
  limit raises ``MemoryError`` in the child and fails that file;
- the parent waits at most ``LoaderConfig.timeout_s`` for each file, then kills the child (a fresh one is
  started for the next file) and fails that file with a message saying which setting to raise; each page
  that OCR starts restarts that clock, then at ``max(timeout_s, 2 * ocr_page_timeout_s)`` (a page has its
  own budget, enforced in the child), so a long scanned PDF is not taken for a hung file;
- a child that dies (a signal, the kernel's OOM killer) fails its file the same way.

The child is forked from a ``forkserver`` that has the loader libraries imported already (``spawn`` where
there is no forkserver), so a new child costs milliseconds, and the server's threads are never forked.
Requests and replies are JSON (no pickle of anything derived from user data); the child's log records are
re-emitted in the parent. The documents are identical to those :func:`load_file` returns in-process.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import multiprocessing
import sys
import threading
import types
from pathlib import Path
from typing import Any

from ingest.config import LoaderConfig
from ingest.documents import Document
from ingest.errors import EmptyDocumentError, LoaderError, UnsupportedFileError

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
DEFAULT_TARGET = "ingest.loaders.registry:load_file"
# Imported once in the fork server, so that every child starts with them loaded.
_PRELOAD = ["ingest.loaders.registry", "lxml.etree", "pypdf", "docx", "charset_normalizer"]
_ERRORS: dict[str, type[LoaderError]] = {
    "LoaderError": LoaderError,
    "EmptyDocumentError": EmptyDocumentError,
    "UnsupportedFileError": UnsupportedFileError,
}
_ALIVE = b"alive"  # sent by the child as each OCR page starts: the parent's per-file clock restarts
_context_lock = threading.Lock()
_context: Any = None


def _mp_context():
    global _context
    with _context_lock:
        if _context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(_PRELOAD)
            else:
                ctx = multiprocessing.get_context("spawn")
            _context = ctx
        return _context


@contextlib.contextmanager
def _without_main_module():
    """Hide ``__main__`` while a child starts, so that it does not re-run the parent's main script.

    ``multiprocessing`` re-imports the main module in every forkserver/spawn child: that would import the
    whole CLI or server (seconds per child), and fails outright for a script without a ``__main__`` guard.
    The loader process needs nothing from it.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a record that cannot be formatted is dropped, never the file
            self.records.append((record.name, record.levelno, record.getMessage()))


def _limit_memory(memory_mb: int) -> None:
    try:
        import resource
    except ImportError:  # Windows: no address-space limit; the time limit still holds
        return
    limit = memory_mb << 20
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _document_json(doc: Document) -> dict[str, Any]:
    return {
        "text": doc.text,
        "source": doc.source,
        "key": doc.key,
        "title": doc.title,
        "metadata": doc.metadata,
        "sections": doc.sections,
    }


def _document(d: dict[str, Any]) -> Document:
    sections = d["sections"]
    return Document(
        text=d["text"],
        source=d["source"],
        key=d["key"],
        title=d["title"],
        metadata=d["metadata"],
        sections=None if sections is None else [(list(p), t) for p, t in sections],
    )


def _load_reply(load, request: dict[str, Any], memory_mb: int) -> dict[str, Any]:
    path = request["path"]
    try:
        docs = load(Path(path), LoaderConfig(**request["config"]))
        return {"documents": [_document_json(d) for d in docs]}
    except LoaderError as exc:
        message = str(exc)
        if isinstance(exc.__cause__, MemoryError):
            message += f" (the loader's memory limit is {memory_mb} MB: ingest.loader.memory_mb)"
        name = type(exc).__name__ if type(exc).__name__ in _ERRORS else "LoaderError"
        return {"error": name, "message": message}
    except MemoryError:
        return {
            "error": "LoaderError",
            "message": f"{path}: needs more than the loader's memory limit of {memory_mb} MB to read; "
            "raise ingest.loader.memory_mb or split the file",
        }
    except Exception as exc:
        return {
            "error": "LoaderError",
            "message": f"{path}: unexpected error while loading ({type(exc).__name__}: {exc})",
        }


def _serve(conn, memory_mb: int, target: str) -> None:
    """The child: answer one JSON request per file until the parent closes the pipe."""
    _limit_memory(memory_mb)
    load = _resolve(target)
    from ingest.loaders import ocr

    ocr.on_page = lambda: conn.send_bytes(_ALIVE)  # a long scanned PDF is not a hung file
    collect = _Collect()
    root = logging.getLogger()
    root.handlers[:] = [collect]
    root.setLevel(logging.INFO)
    conn.send_bytes(b"ready")  # set up: the per-file clock starts with the first request, not here
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        collect.records = []
        reply = _load_reply(load, request, memory_mb)
        try:
            reply["logs"] = collect.records
            payload = json.dumps(reply).encode("utf-8")
        except MemoryError:
            payload = json.dumps(
                {
                    "error": "LoaderError",
                    "message": f"{request['path']}: its text is too large to return within the loader's memory "
                    f"limit of {memory_mb} MB; raise ingest.loader.memory_mb or split the file",
                    "logs": [],
                }
            ).encode("utf-8")
        conn.send_bytes(payload)


class LoaderPool:
    """A loader process reused across files; ``load(path)`` is :func:`load_file` under limits.

    Thread-safe (one file at a time). Use as a context manager, or call :meth:`close`.
    ``target`` (``"module:function"``, same signature as ``load_file``) is for tests.
    """

    def __init__(self, config: LoaderConfig, target: str = DEFAULT_TARGET) -> None:
        self.config = config
        self.target = target
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()
        self.started = 0  # child processes started (a killed child is replaced on the next file)

    def __enter__(self) -> LoaderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        self._stop()
        ctx = _mp_context()
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_serve, args=(child, self.config.memory_mb, self.target), name="ragqa-loader", daemon=True
        )
        with _context_lock, _without_main_module():
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.started += 1
        try:
            ready = parent.poll(START_TIMEOUT_S) and parent.recv_bytes() == b"ready"
        except (OSError, EOFError):
            ready = False
        if not ready:
            code = self._stop(kill=True)
            raise LoaderError(
                f"the loader process did not start within {START_TIMEOUT_S:g} s (exit code {code}); "
                "check the server log, or set ingest.loader.isolate to false"
            )

    def _stop(self, kill: bool = False) -> int | None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()  # the child's recv ends: it exits
        if proc is None:
            return None
        if kill:
            proc.kill()
        proc.join(5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
        return proc.exitcode

    def close(self) -> None:
        with self._lock:
            self._stop()

    def load(self, path: str | Path, config: LoaderConfig | None = None) -> list[Document]:
        """Load ``path`` in the child; raises :class:`LoaderError` (and subclasses) like ``load_file``."""
        config = config if config is not None else self.config
        path = Path(path).expanduser().resolve()
        request = json.dumps({"path": str(path), "config": config.model_dump()}).encode("utf-8")
        with self._lock:
            self._ensure()
            try:
                self._conn.send_bytes(request)
                wait, raw = self.config.timeout_s, _ALIVE
                while raw == _ALIVE:
                    if not self._conn.poll(wait):
                        self._stop(kill=True)
                        logger.warning("%s: loader killed after %g s", path, wait)
                        raise LoaderError(
                            f"{path}: took longer than {wait:g} s to read; raise ingest.loader.timeout_s "
                            "(ocr_page_timeout_s for a page of a scan) or split the file"
                        )
                    raw = self._conn.recv_bytes()
                    # an OCR page started: it has its own budget, enforced in the child; twice that here
                    wait = max(self.config.timeout_s, 2 * config.ocr_page_timeout_s)
            except (OSError, EOFError):
                code = self._stop(kill=True)
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                raise LoaderError(
                    f"{path}: the loader process died while reading the file ({how}); it may need more memory "
                    f"than the limit of {self.config.memory_mb} MB: raise ingest.loader.memory_mb or split the file"
                ) from None
        reply = json.loads(raw)
        for name, level, message in reply.get("logs", []):
            logging.getLogger(name).log(level, "%s", message)
        if "error" in reply:
            raise _ERRORS.get(reply["error"], LoaderError)(reply["message"])
        return [_document(d) for d in reply["documents"]]
