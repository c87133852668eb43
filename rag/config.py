"""Validated configuration of the generation layer."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GeneratorConfig(BaseModel):
    model: str = Field(
        "SmolLM2-135M-Instruct",
        description="Bundled name, a local Hugging Face model folder, or a hub id (where a hub is reachable).",
    )
    gguf_file: str | None = Field(None, description="GGUF file inside `model` when it is a GGUF folder.")
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = Field("auto", description="'auto' (float32 on CPU, bfloat16 on GPU), 'float32', 'bfloat16', 'float16'.")
