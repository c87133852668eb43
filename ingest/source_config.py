"""Configuration of the two live sources of documents: watched folders and web pages.

Kept apart from :mod:`ingest.watch` and :mod:`ingest.web` so that the settings (read by every command) load
neither FAISS nor the extractors.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingest.errors import InvalidCollectionNameError


class WatchedFolder(BaseModel):
    """A folder kept in sync with a collection (``ragqa watch``; a list of them in ``server.watch``)."""

    model_config = ConfigDict(extra="forbid")

    dir: Path = Field(description="The folder to watch (searched recursively; hidden files are ignored).")
    collection: str = Field(description="The collection kept in sync with it (created on first use).")
    prune: bool = Field(True, description="Remove the documents of files deleted from the folder (--prune).")
    debounce_ms: int = Field(
        500, ge=10, le=60_000, description="Quiet time after the last change before a sync starts (milliseconds)."
    )
    max_batch_ms: int = Field(
        5_000, ge=10, le=600_000, description="Longest a stream of changes is gathered before a sync (milliseconds)."
    )

    @field_validator("dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(value).expanduser()

    @field_validator("collection")
    @classmethod
    def _name(cls, value: str) -> str:
        from ingest.collection import validate_name  # faiss and numpy load only when a folder is configured

        try:
            return validate_name(value)
        except InvalidCollectionNameError as exc:
            raise ValueError(str(exc)) from exc


class WebConfig(BaseModel):
    """Fetching web pages (``ragqa ingest URL``): limits per URL and crawl defaults."""

    timeout_s: float = Field(20.0, gt=0, le=600, description="Longest time one URL may take, body included (s).")
    max_page_mb: float = Field(5.0, gt=0, description="Largest response body read for one URL (MB).")
    depth: int = Field(2, ge=0, le=20, description="Default --depth of --crawl: links followed from a start URL.")
    max_pages: int = Field(100, ge=1, description="Default --max-pages of --crawl: most pages fetched per run.")
    user_agent: str = Field("ragqa", min_length=1, description="User-Agent sent, and matched in robots.txt.")
    max_crawl_delay_s: float = Field(
        5.0, ge=0, description="robots.txt Crawl-delay is honoured up to this many seconds between two fetches."
    )
