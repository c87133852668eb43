"""Settings of a ragqa installation, read at the edge (CLI, app factory) and passed down.

Sources, highest priority first: keyword arguments, environment variables ``RAGQA_*`` (nested
fields with ``__``, e.g. ``RAGQA_INGEST__CHUNKING__CHUNK_TOKENS=256``), a YAML file
(``$RAGQA_CONFIG``, else ``$RAGQA_HOME/config.yaml`` when present), then the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from ingest.config import IngestConfig
from ingest.source_config import WatchedFolder, WebConfig
from rag.config import ConversationConfig, GeneratorConfig, QAConfig, RetrieverConfig

DEFAULT_HOME = Path("~/.ragqa")


class ServerConfig(BaseModel):
    """The REST server (`ragqa serve`): bind address, authentication and request limits."""

    host: str = Field("127.0.0.1", description="Bind address; loopback by default (use 0.0.0.0 behind a proxy only).")
    port: int = Field(8000, ge=0, le=65535)
    auth: bool = Field(
        True, description="Require `Authorization: Bearer <key>`; turn off only with `ragqa serve --no-auth`."
    )
    max_upload_mb: float = Field(50.0, gt=0, description="Largest file accepted by an upload (MB).")
    max_files: int = Field(32, ge=1, le=10000, description="Most files in one upload request.")
    max_json_mb: float = Field(
        1.0, gt=0, description="Largest body of a request that is not an upload (JSON; MB). Above it: 413."
    )
    min_free_mb: float = Field(
        200.0,
        ge=0,
        description="Free disk space (MB) the workspace keeps: below it uploads get 507 and the ingestion worker "
        "pauses until space returns. 0: no floor.",
    )
    csp: str = Field(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        description="Content-Security-Policy of every response but the API docs pages (/docs, /redoc).",
    )
    max_question_chars: int = Field(2000, ge=1, description="Longest question accepted (characters).")
    max_k: int = Field(32, ge=1, le=1000, description="Largest k a request may ask for.")
    allowed_suffixes: list[str] = Field(
        default_factory=lambda: [
            ".txt",
            ".text",
            ".md",
            ".markdown",
            ".html",
            ".htm",
            ".xhtml",
            ".pdf",
            ".docx",
            ".json",
            ".jsonl",
            ".ndjson",
        ],
        description="File types an upload may carry (others get 415).",
    )
    reader_cache: int = Field(16, ge=1, description="Read-only collection handles kept open (one per collection).")
    writer_wait_s: float = Field(30.0, ge=0, description="How long a delete waits for the ingestion worker to pause.")
    ingest_workers: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Ingestion worker threads (one collection each at a time, files shared round-robin across keys "
        "and collections). null: 2 on a machine with 4 or more cores, else 1.",
    )
    job_lease_s: float = Field(
        30.0,
        gt=0,
        description="Upload jobs are worked under a lease in server.sqlite, renewed every third of this while a "
        "server works them: with several `ragqa serve` replicas over one RAGQA_HOME, a replica that dies loses its "
        "jobs to the others after this long (at once when it ran on the same host).",
    )
    # Folder sync (ragqa watch) inside the server: each folder keeps its collection in sync while serving.
    watch: list[WatchedFolder] = Field(
        default_factory=list,
        description="Folders kept in sync with collections while the server runs, e.g. "
        "[{dir: ~/notes, collection: notes}]; each catches up at start-up and then follows the folder's changes.",
    )


class LimitsConfig(BaseModel):
    """Per-API-key rate limits and quotas (the `limits` library, in memory). Each is off while None.

    A limit is a string such as ``"30/minute"``, ``"10 per hour"`` or ``"2000/day"``. Over a limit the
    request gets 429 with ``Retry-After``. Counts live in the server process and restart at zero.
    """

    ask_per_key: str | None = Field(
        None, description="Questions (POST /v1/ask, /v1/chat/completions) per key, e.g. '30/minute'."
    )
    upload_per_key: str | None = Field(
        None, description="Upload requests (POST .../documents) per key, e.g. '10/minute'."
    )
    quota_per_key: str | None = Field(
        None, description="Questions per key over a long period, e.g. '2000/day' (a fixed window)."
    )
    strategy: Literal["moving-window", "fixed-window", "sliding-window-counter"] = Field(
        "moving-window",
        description="How ask_per_key and upload_per_key count: moving-window is exact, the others cheaper.",
    )

    @field_validator("ask_per_key", "upload_per_key", "quota_per_key")
    @classmethod
    def _parse(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from limits import parse

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not a rate limit; write it as '<count>/<second|minute|hour|day|month>', "
                f"e.g. '30/minute' ({exc})"
            ) from exc
        return value.strip()


class ServingConfig(BaseModel):
    """Serving many requests at once: how long a request may take and how a refused client is told to wait."""

    request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Deadline of one question, counted from its arrival (validation, retrieval and queueing "
        "included); past it: 504 (and the answer's rows are freed).",
    )
    busy_retry_after_s: int = Field(
        2, ge=1, description="Retry-After (seconds) sent with 503 when the request queue is full."
    )
    batching: bool = Field(
        True,
        description="Continuous batching: one scheduler thread owns the model and decodes all concurrent answers in "
        "shared steps (rag.scheduler). Off: every answer holds the model alone, one after the other.",
    )
    max_queue: int = Field(
        64, ge=0, description="Questions that may wait for the model; beyond it: 503 with Retry-After."
    )
    answer_threads: int = Field(
        64,
        ge=1,
        description="Worker threads for answers (each waits for the model while its question is queued or decoded), "
        "apart from the thread pool of every other route: a full model queue never delays key checks or listings.",
    )
    max_batch_rows: int = Field(
        64, ge=1, description="Most rows in one decode forward (K per rag-token answer, 1 per stuff answer)."
    )
    max_prefills_per_step: int = Field(
        4,
        ge=1,
        description="Most new answers admitted (prefilled) between two decode steps: bounds the pause of the others.",
    )
    max_prefill_tokens: int | None = Field(
        512,
        ge=1,
        description="Chunked prefill: at most about this many prompt-prefix tokens of cache misses are computed "
        "between two decode steps (one whole context-chunk prompt at a time, at least one per step), so a cold "
        "question does not pause the answers already decoding for its whole prefill. null: no cap.",
    )
    max_active_answers: int | None = Field(
        None,
        ge=1,
        description="Most answers prefilled or decoded at once; the others wait in the queue, first come first "
        "served, so admitted answers finish in bounded time instead of all slowing down together. "
        "null: max_batch_rows // retriever.k (16 with the defaults).",
    )
    admission: Literal["predict", "off"] = Field(
        "predict",
        description="'predict': a question whose predicted finish time (measured step, prefill and answer-length "
        "rates, and the answers ahead of it) passes its deadline is refused at once with 503 and a Retry-After "
        "of the predicted excess, instead of a 504 at the deadline. Until the first decode step is measured "
        "every question is admitted. 'off': admit whatever the queue holds.",
    )
    admission_margin: float = Field(
        0.2, ge=0, description="Safety factor of the admission test: refuse when prediction x (1 + margin) > deadline."
    )

    def active_answers(self, k: int) -> int:
        """:attr:`max_active_answers`, or its default for answers of ``k`` rows (documents)."""
        return self.max_active_answers or max(1, self.max_batch_rows // max(1, k))


def _yaml_file() -> Path | None:
    explicit = os.environ.get("RAGQA_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    home = Path(os.environ.get("RAGQA_HOME", DEFAULT_HOME)).expanduser()
    candidate = home / "config.yaml"
    return candidate if candidate.exists() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGQA_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(DEFAULT_HOME, description="Workspace folder holding all state (collections, model caches, ...).")
    ingest: IngestConfig = IngestConfig()
    generator: GeneratorConfig = GeneratorConfig()
    retriever: RetrieverConfig = RetrieverConfig()
    qa: QAConfig = QAConfig()
    conversation: ConversationConfig = ConversationConfig()
    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    serving: ServingConfig = ServingConfig()
    web: WebConfig = WebConfig()  # `ragqa ingest URL`: timeout, size limit, crawl defaults, user agent
    shipped_adapter: Path | None = Field(
        None,
        description="Folder of the shipped reader adapter that `ragqa models prepare` installs as 'reader' "
        "(default: data/adapters/reader of the source tree, else share/ragqa/adapters/reader of the install).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _yaml_file()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    def model_post_init(self, __context) -> None:
        self.home = Path(self.home).expanduser()

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"
