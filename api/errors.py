"""HTTP errors of the REST API, and the handlers that give every error one JSON shape.

Every error body is ``{"error": {"code": "<machine_code>", "message": "<what to do>"}}``
(validation errors add ``"details"``). Core exceptions (``ingest``/``rag``/``finetune``) are mapped
to HTTP by their TYPE in one table, :data:`CORE_ERRORS`, so the core packages never see HTTP: the
most specific class of the exception's MRO found in the table decides the status and code.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from finetune import errors as finetune_errors
from ingest import errors as ingest_errors
from rag import errors as rag_errors

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, a stable machine code and a message that says what to do."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(ApiError):
    status, code = 422, "invalid_request"


class InsufficientStorage(ApiError):
    status, code = 507, "insufficient_storage"


#: errno values of a full disk or an exhausted quota
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk: ``OSError`` ENOSPC/EDQUOT or
    SQLite's "database or disk is full"."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


DISK_FULL_MESSAGE = "the server's disk is full; try again later (an administrator must free space)"

#: security headers of the responses the catch-all handler writes: Starlette runs it outside the app's
#: middleware (so outside ``api.app.SecurityHeadersMiddleware``); a JSON error needs no content at all
ERROR_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


#: longest error message sent: a hostile value quoted in it (a 600 KB collection name) is cut in the middle,
#: so the advice at the end of the message stays and the payload is not echoed back
MAX_MESSAGE_CHARS = 1000
#: longest part of a validation error's ``loc`` (a field name the client made up)
MAX_LOC_CHARS = 100


def shorten(text: str, limit: int) -> str:
    """``text`` with its middle cut out when it is longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": shorten(message, MAX_MESSAGE_CHARS), **extra}}


@dataclass(frozen=True)
class HttpMapping:
    """How a core exception type answers over HTTP."""

    status: int
    code: str


# Exception type -> HTTP status and machine code. Looked up along the exception's MRO, so a
# subclass not listed answers as its nearest listed base (a kind, then its package's root).
CORE_ERRORS: dict[type[Exception], HttpMapping] = {
    # ingest
    ingest_errors.CollectionNotFoundError: HttpMapping(404, "collection_not_found"),
    ingest_errors.CollectionExistsError: HttpMapping(409, "collection_exists"),
    ingest_errors.EmbedderMismatchError: HttpMapping(409, "embedder_mismatch"),
    ingest_errors.CollectionBusyError: HttpMapping(409, "collection_busy"),
    ingest_errors.InvalidCollectionNameError: HttpMapping(422, "invalid_collection_name"),
    ingest_errors.LoaderError: HttpMapping(422, "invalid_document"),
    ingest_errors.NotFoundError: HttpMapping(404, "not_found"),
    ingest_errors.InvalidInputError: HttpMapping(422, "invalid_input"),
    ingest_errors.ConflictError: HttpMapping(409, "conflict"),
    ingest_errors.ModelUnavailableError: HttpMapping(503, "model_unavailable"),
    ingest_errors.ClusterUnavailableError: HttpMapping(503, "cluster_unavailable"),
    ingest_errors.IngestError: HttpMapping(500, "ingest_error"),
    # rag
    rag_errors.AdapterNotFoundError: HttpMapping(404, "adapter_not_found"),
    rag_errors.AdapterError: HttpMapping(422, "invalid_adapter"),
    rag_errors.QAError: HttpMapping(422, "invalid_question"),
    rag_errors.RetrieverError: HttpMapping(422, "invalid_question"),
    rag_errors.NotFoundError: HttpMapping(404, "not_found"),
    rag_errors.InvalidInputError: HttpMapping(422, "invalid_input"),
    rag_errors.ConflictError: HttpMapping(409, "conflict"),
    rag_errors.ModelUnavailableError: HttpMapping(503, "model_unavailable"),
    rag_errors.RagError: HttpMapping(500, "rag_error"),
    # finetune
    finetune_errors.AdapterNotFoundError: HttpMapping(404, "adapter_not_found"),
    finetune_errors.AdapterExistsError: HttpMapping(409, "adapter_exists"),
    finetune_errors.InvalidAdapterError: HttpMapping(422, "invalid_adapter"),
    finetune_errors.NotFoundError: HttpMapping(404, "not_found"),
    finetune_errors.InvalidInputError: HttpMapping(422, "invalid_input"),
    finetune_errors.ConflictError: HttpMapping(409, "conflict"),
    finetune_errors.FinetuneError: HttpMapping(500, "finetune_error"),
}
CORE_ROOTS: tuple[type[Exception], ...] = (
    ingest_errors.IngestError,
    rag_errors.RagError,
    finetune_errors.FinetuneError,
)


def http_mapping(exc: BaseException) -> HttpMapping | None:
    """The table entry of ``exc``'s most specific listed class, or None for a non-core exception."""
    for cls in type(exc).__mro__:
        mapping = CORE_ERRORS.get(cls)
        if mapping is not None:
            return mapping
    return None


def from_core(exc: Exception) -> ApiError:
    """The HTTP error for an exception raised by ``ingest``, ``rag`` or ``finetune`` (500 for anything else)."""
    mapping = http_mapping(exc)
    if mapping is None:
        return ApiError("internal error; see the server log", code="internal_error", status=500)
    msg = str(exc)
    if mapping.status == 404:
        msg = msg.split(" (known:")[0]  # never list other tenants' collections or adapters
    if mapping.status >= 500:
        logger.warning("%s: %s", type(exc).__name__, msg)
    return ApiError(msg, code=mapping.code, status=mapping.status)


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into the one JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {
                "loc": [shorten(p, MAX_LOC_CHARS) if isinstance(p, str) else p for p in e.get("loc", ())],
                "msg": shorten(str(e.get("msg", "")), MAX_MESSAGE_CHARS),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        return JSONResponse(error_body("validation_error", message, details=details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            507: "insufficient_storage",
        }
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; see /docs"
        return JSONResponse(
            error_body(codes.get(exc.status_code, "http_error"), message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _core(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):
            return _disk_full(request, exc)
        err = from_core(exc)
        return JSONResponse(error_body(err.code, err.message), status_code=err.status)

    for root in CORE_ROOTS:
        app.add_exception_handler(root, _core)

    async def _storage(request: Request, exc: Exception) -> JSONResponse:
        """A full disk is 507 (an ``OSError`` / ``sqlite3.Error`` of another kind stays a 500)."""
        if is_disk_full(exc):
            return _disk_full(request, exc)
        raise exc

    for kind in (OSError, sqlite3.Error):
        app.add_exception_handler(kind, _storage)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):
            return _disk_full(request, exc)
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", "internal error; see the server log"),
            status_code=500,
            headers=ERROR_SECURITY_HEADERS,
        )


def _disk_full(request: Request, exc: BaseException) -> JSONResponse:
    logger.error("disk full on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        error_body("insufficient_storage", DISK_FULL_MESSAGE), status_code=507, headers=ERROR_SECURITY_HEADERS
    )
