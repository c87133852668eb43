"""The FastAPI app: one factory, :func:`create_app`, used by ``ragqa serve`` and the tests.

The lifespan loads the models once (:func:`api.service.build_service`), starts the ingestion
worker, and stops it at shutdown (an unfinished job resumes at the next start).
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import GATE_STATE_KEY, INVALID_KEY, MISSING_KEY
from api.backpressure import install_backpressure
from api.errors import DISK_FULL_MESSAGE, error_body, install_handlers
from api.jobs import free_bytes
from api.metrics import Metrics, MetricsMiddleware
from api.routes import adapters, ask, collections, conversations, documents, feedback, health, jobs, openai
from api.settings import Settings
from api.watchers import start_folder_syncs, stop_folder_syncs

logger = logging.getLogger(__name__)

#: The web UI: plain HTML, CSS and JS served as they are (no build step); it only calls the REST API.
STATIC_DIR = Path(__file__).resolve().parent / "static"

NO_AUTH_BANNER = (
    "\n" + "!" * 78 + "\n"
    "!!  AUTHENTICATION IS OFF (--no-auth): anyone who can reach this server can read,\n"
    "!!  upload to and delete every collection. Use it on a trusted machine only.\n" + "!" * 78
)


#: POST here is an upload (multipart files); every other request is held to the JSON body limit
UPLOAD_PATH = re.compile(r"^/v1/collections/[^/]+/documents/?$")
#: room for one multipart part's headers and delimiters, on top of its file's bytes
PART_OVERHEAD = 64 * 1024
#: the API docs pages load Swagger UI / ReDoc from a CDN with inline scripts: no CSP beyond frame-ancestors there
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
_BOUNDARY = re.compile(rb'boundary="?([^";,]+)"?', re.IGNORECASE)


async def _json_error(scope, receive, send, status: int, code: str, message: str, headers=None) -> None:
    """Answer with the API's error shape (sent straight from a middleware, without reading the body)."""
    await JSONResponse(error_body(code, message), status_code=status, headers=headers)(scope, receive, send)


class SecurityHeadersMiddleware:
    """Security headers on every response: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
    ``Referrer-Policy: no-referrer`` and a Content-Security-Policy (``server.csp``: same-origin scripts, styles
    and API calls only, ``frame-ancestors 'none'``); the API docs pages get ``frame-ancestors 'none'`` only."""

    def __init__(self, app, csp: str) -> None:
        self.app = app
        self.csp = csp

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = "frame-ancestors 'none'" if scope.get("path") in DOCS_PATHS else self.csp

        async def _send(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("Content-Security-Policy", csp)
            await send(message)

        await self.app(scope, receive, _send)


class AuthGateMiddleware:
    """Check the API key of every ``/v1/`` request from its headers alone, before anything reads the body:
    a request without a valid key gets 401 and its body is never received (no memory, no spooling).

    The verified key is left in ``request.state`` for :func:`api.deps.get_key` (verified once per request).
    Off with ``--no-auth``; before the lifespan has built the service, requests pass to the routes."""

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.settings.server.auth or not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        service = getattr(scope["app"].state, "service", None) if "app" in scope else None
        if service is None:
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            await _json_error(scope, receive, send, 401, "unauthorized", MISSING_KEY, {"WWW-Authenticate": "Bearer"})
            return
        key = await run_in_threadpool(service.keys.verify, token)
        if key is None:
            await _json_error(scope, receive, send, 401, "unauthorized", INVALID_KEY, {"WWW-Authenticate": "Bearer"})
            return
        scope.setdefault("state", {})[GATE_STATE_KEY] = key
        await self.app(scope, receive, send)


class _PartScanner:
    """Bytes of the current multipart part, counted as the body streams in (a linear scan for the boundary),
    so an oversized file is refused while it arrives, never spooled to disk whole."""

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.limit = limit
        self.tail = b"\r\n"  # the body's first delimiter has no CRLF before it: pretend one
        self.pos = len(self.tail)  # bytes of the (pretended) stream seen
        self.part_start = 0  # stream offset just after the last delimiter

    def feed(self, chunk: bytes) -> bool:
        """Take the next body chunk; False once a part is larger than the limit."""
        data = self.tail + chunk
        offset = self.pos - len(self.tail)
        start = 0
        while (i := data.find(self.delimiter, start)) >= 0:
            start = i + len(self.delimiter)
            self.part_start = offset + start
        self.pos += len(chunk)
        self.tail = data[max(start, len(data) - len(self.delimiter) + 1) :]
        return self.pos - self.part_start <= self.limit


class BodyLimitMiddleware:
    """Request body limits, from Content-Length and while the body streams in: 413 above them.

    Uploads (POST ``/v1/collections/{name}/documents``): each multipart part at most ``server.max_upload_mb``
    (+ its headers), at most ``server.max_files`` parts' worth in all, and 507 before any byte is read while the
    workspace's disk has less than ``server.min_free_mb`` free (plus the announced body). Every other request:
    ``server.max_json_mb``."""

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        cfg = settings.server
        self.json_limit = int(cfg.max_json_mb * (1 << 20))
        self.part_limit = int(cfg.max_upload_mb * (1 << 20)) + PART_OVERHEAD
        self.upload_limit = cfg.max_files * self.part_limit + PART_OVERHEAD
        self.min_free = int(cfg.min_free_mb * (1 << 20))
        self.disk = settings.home / "uploads"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        upload = scope.get("method") == "POST" and UPLOAD_PATH.match(scope.get("path", "")) is not None
        limit = self.upload_limit if upload else self.json_limit
        length_text = headers.get("content-length", "")
        length = int(length_text) if length_text.isdigit() and len(length_text) < 20 else None
        if length_text and length is None:
            await _json_error(scope, receive, send, 400, "bad_request", f"invalid Content-Length {length_text[:40]!r}")
            return
        if length is not None and length > limit:
            what = "an upload" if upload else "a request that is not an upload"
            msg = f"request body of {length} bytes is above the limit of {limit} bytes for {what}"
            await _json_error(scope, receive, send, 413, "payload_too_large", msg)
            return
        if upload and self.min_free:
            free = free_bytes(self.disk)
            if free is not None and free < self.min_free + (length or 0):
                logger.error("upload refused: %d MB free, the floor is %d MB", free >> 20, self.min_free >> 20)
                await _json_error(scope, receive, send, 507, "insufficient_storage", DISK_FULL_MESSAGE)
                return
        match = _BOUNDARY.search(headers.get("content-type", "").encode("latin-1")) if upload else None
        scanner = _PartScanner(match.group(1), self.part_limit) if match else None
        seen = 0

        async def _receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                seen += len(body)
                if seen > limit:
                    raise StarletteHTTPException(413, f"request body above the limit of {limit} bytes")
                if scanner is not None and not scanner.feed(body):
                    raise StarletteHTTPException(
                        413, f"a file of the upload is larger than the limit of {self.part_limit >> 10} KiB"
                    )
            return message

        await self.app(scope, _receive, send)


def mount_web_ui(app: FastAPI) -> None:
    """Serve the web UI: ``/`` is its page, ``/static/...`` its assets (no key needed to load them;
    the page asks for one and sends it with every API call)."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def create_app(settings: Settings | None = None, *, start_worker: bool = True) -> FastAPI:
    """The app for ``settings`` (read from the environment when None). Models load at start-up."""
    settings = settings if settings is not None else Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from starlette.concurrency import run_in_threadpool

        from api.service import build_service

        if not settings.server.auth:
            logger.warning(NO_AUTH_BANNER)
        service = await run_in_threadpool(lambda: build_service(settings, metrics=metrics, start_worker=start_worker))
        app.state.service = service
        folder_syncs = start_folder_syncs(service) if start_worker else []  # server.watch
        try:
            yield
        finally:
            await run_in_threadpool(stop_folder_syncs, folder_syncs)
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="ragqa",
        summary="Self-hosted retrieval-augmented question answering.",
        description="Collections of documents, background ingestion, answers with citations, feedback, "
        "and an OpenAI-compatible chat endpoint. Authenticate with `Authorization: Bearer <key>` "
        '(`ragqa keys create NAME`). Errors: `{"error": {"code", "message"}}`.',
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_handlers(app)
    install_backpressure(app, settings, metrics)  # rate limiter; 503/504 for a full queue or a missed deadline
    for module in (health, collections, documents, jobs, ask, conversations, feedback, adapters, openai):
        app.include_router(module.router)
    mount_web_ui(app)
    # outermost last: security headers on everything, metrics, the key check before any body is read, body limits
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(AuthGateMiddleware, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware, csp=settings.server.csp)
    return app
