"""Settings of a ragqa installation, read at the edge (CLI, app factory) and passed down.

Sources, highest priority first: keyword arguments, environment variables ``RAGQA_*`` (nested
fields with ``__``, e.g. ``RAGQA_INGEST__CHUNKING__CHUNK_TOKENS=256``), a YAML file
(``$RAGQA_CONFIG``, else ``$RAGQA_HOME/config.yaml`` when present), then the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from ingest.config import IngestConfig
from rag.config import GeneratorConfig, QAConfig, RetrieverConfig

DEFAULT_HOME = Path("~/.ragqa")


class ServerConfig(BaseModel):
    """The REST server (`ragqa serve`): bind address, authentication and request limits."""

    host: str = Field("127.0.0.1", description="Bind address; loopback by default (use 0.0.0.0 behind a proxy only).")
    port: int = Field(8000, ge=0, le=65535)
    auth: bool = Field(True, description="Require `Authorization: Bearer <key>`; turn off only with `ragqa serve --no-auth`.")
    max_upload_mb: float = Field(50.0, gt=0, description="Largest file accepted by an upload (MB).")
    max_files: int = Field(32, ge=1, description="Most files in one upload request.")
    max_question_chars: int = Field(2000, ge=1, description="Longest question accepted (characters).")
    max_k: int = Field(32, ge=1, le=1000, description="Largest k a request may ask for.")
    allowed_suffixes: list[str] = Field(
        default_factory=lambda: [".txt", ".text", ".md", ".markdown", ".html", ".htm", ".xhtml", ".pdf", ".docx",
                                 ".json", ".jsonl", ".ndjson"],
        description="File types an upload may carry (others get 415).",
    )
    reader_cache: int = Field(16, ge=1, description="Read-only collection handles kept open (one per collection).")
    writer_wait_s: float = Field(30.0, ge=0, description="How long a delete waits for the ingestion worker to pause.")


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
    server: ServerConfig = ServerConfig()

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
