"""HTTP errors of the REST API, and the handlers that give every error one JSON shape.

Every error body is ``{"error": {"code": "<machine_code>", "message": "<what to do>"}}``
(validation errors add ``"details"``). Core exceptions (``ingest``/``rag``) are mapped here,
so the core packages never see HTTP.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest.errors import CollectionError, CollectionExistsError, CollectionNotFoundError, EmbedderMismatchError, IngestError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, a stable machine code and a message that says what to do."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, headers: dict[str, str] | None = None) -> None:
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


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def from_core(exc: Exception) -> ApiError:
    """The HTTP error for an exception raised by ``ingest`` or ``rag``."""
    from rag.generator import AdapterError
    from rag.qa import QAError
    from rag.retriever import RetrieverError

    msg = str(exc)
    if isinstance(exc, CollectionNotFoundError):
        return NotFound(msg.split(" (known:")[0], code="collection_not_found")  # never list other tenants' names
    if isinstance(exc, CollectionExistsError):
        return Conflict(msg, code="collection_exists")
    if isinstance(exc, EmbedderMismatchError):
        return Conflict(msg, code="embedder_mismatch")
    if isinstance(exc, CollectionError) and "being written" in msg:
        return Conflict(msg, code="collection_busy")
    if isinstance(exc, CollectionError) and "invalid collection name" in msg:
        return Unprocessable(msg, code="invalid_collection_name")
    if isinstance(exc, AdapterError):
        if "not found" in msg:
            return NotFound(msg.split(" (known:")[0], code="adapter_not_found")
        return Unprocessable(msg, code="invalid_adapter")
    if isinstance(exc, (QAError, RetrieverError)):
        return Unprocessable(msg, code="invalid_question")
    if isinstance(exc, IngestError):
        return ApiError(msg, code="ingest_error", status=500)
    return ApiError("internal error; see the server log", code="internal_error", status=500)


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into the one JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        message = f"{where}: {first['msg']}" if where else first["msg"]
        return JSONResponse(error_body("validation_error", message, details=details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                 413: "payload_too_large"}
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; see /docs"
        return JSONResponse(error_body(codes.get(exc.status_code, "http_error"), message),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(IngestError)
    async def _ingest(request: Request, exc: IngestError) -> JSONResponse:
        err = from_core(exc)
        return JSONResponse(error_body(err.code, err.message), status_code=err.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error; see the server log"), status_code=500)
