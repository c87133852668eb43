"""The FastAPI app: one factory, :func:`create_app`, used by ``ragqa serve`` and the tests.

The lifespan loads the models once (:func:`api.service.build_service`), starts the ingestion
worker, and stops it at shutdown (an unfinished job resumes at the next start).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.backpressure import install_backpressure
from api.errors import install_handlers
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


class BodyLimitMiddleware:
    """Refuse request bodies above ``limit`` bytes with 413, by Content-Length or while reading."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            from starlette.responses import JSONResponse

            from api.errors import error_body

            msg = f"request body of {int(length)} bytes is above the limit of {self.limit} bytes"
            await JSONResponse(error_body("payload_too_large", msg), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def _receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, f"request body above the limit of {self.limit} bytes")
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
    cfg = settings.server
    body_limit = int(cfg.max_files * cfg.max_upload_mb * (1 << 20)) + (1 << 20)
    app.add_middleware(BodyLimitMiddleware, limit=body_limit)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
