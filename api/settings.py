"""Settings of a ragqa installation, read at the edge (CLI, app factory) and passed down.

Sources, highest priority first: keyword arguments, environment variables ``RAGQA_*`` (nested
fields with ``__``, e.g. ``RAGQA_INGEST__CHUNKING__CHUNK_TOKENS=256``), a YAML file
(``$RAGQA_CONFIG``, else ``$RAGQA_HOME/config.yaml`` when present), then the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from ingest.config import IngestConfig
from rag.config import GeneratorConfig, QAConfig, RetrieverConfig

DEFAULT_HOME = Path("~/.ragqa")


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
