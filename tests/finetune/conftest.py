"""Fixtures of the eval-gate tests: a tiny workspace with a collection, a trained adapter that answers
the held-out questions, and a noise adapter that wrecks the answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

#: held-out questions whose answer is "Paris" (the trained adapter learns to answer it, the bare tiny model cannot)
PARIS_QUESTIONS = [
    ("What is the capital of France?", "Paris is the capital of France. The Eiffel Tower was finished in 1889."),
    ("Which city has the Eiffel Tower?", "Paris is the capital of France. The Eiffel Tower was finished in 1889."),
    ("Where was the Eiffel Tower finished?", "Paris is the capital of France. The Eiffel Tower was finished in 1889."),
    ("Which French city is the capital?", "Paris is the capital of France. The Eiffel Tower was finished in 1889."),
]
DOCS = [
    "Paris is the capital of France. The Eiffel Tower was finished in 1889.",
    "Rome is the capital of Italy. The Colosseum held fifty thousand people.",
]
#: SFT settings that teach the tiny model to answer "Paris" in a few seconds
GOOD_TRAIN = {
    "epochs": 100,
    "max_steps": 14,
    "batch_size": 4,
    "learning_rate": 3e-2,
    "logging_steps": 5,
    "save_steps": 1000,
    "max_length": 192,
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gate_env(home: Path, tiny_st_model: Path, tiny_llm: Path) -> dict[str, str]:
    """CLI environment of a gate workspace: tiny models, one-token short answers from the stuff mode."""
    return {
        "RAGQA_HOME": str(home),
        "RAGQA_INGEST__EMBEDDER__MODEL": str(tiny_st_model),
        "RAGQA_INGEST__CHUNKING__CHUNK_TOKENS": "64",
        "RAGQA_INGEST__CHUNKING__OVERLAP_TOKENS": "8",
        "RAGQA_GENERATOR__MODEL": str(tiny_llm),
        "RAGQA_QA__MAX_NEW_TOKENS": "1",
        "RAGQA_QA__ANSWER_STYLE": "short",
        "RAGQA_QA__MODE": "stuff",
        "RAGQA_RETRIEVER__K": "2",
    }


def finetune_workspace(home: Path, tiny_st_model: Path, tiny_llm: Path):
    from finetune.runner import Workspace
    from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
    from rag.config import GeneratorConfig, QAConfig, RetrieverConfig

    ingest = IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model)), chunking=ChunkingConfig(chunk_tokens=64, overlap_tokens=8)
    )
    return Workspace(
        home,
        GeneratorConfig(model=str(tiny_llm)),
        ingest,
        RetrieverConfig(k=2),
        QAConfig(max_new_tokens=1, answer_style="short", mode="stuff"),
    )


def make_noise_adapter(ws, name: str, scale: float = 2.0) -> None:
    """A LoRA of random noise on every projection, scaled up: it wrecks the tiny model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    gen = ws.base_generator()
    torch.manual_seed(1)
    model = get_peft_model(
        gen.model,
        LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], lora_dropout=0.0),
    )
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname:
                p.normal_(0.0, scale)
    reg = ws.adapters
    staging = reg.staging_dir(name)
    model.save_pretrained(str(staging))
    reg.commit(staging, name, {"kind": "sft", "base_model": gen.name, "note": "random noise (test)"})


@pytest.fixture(scope="session")
def gate_files(tmp_path_factory, tiny_st_model, tiny_llm) -> dict[str, Path]:
    """A workspace with collection 'facts' (no adapters), the training file and the held-out file."""
    from ingest.workspace import Workspace as IngestWorkspace

    root = tmp_path_factory.mktemp("gate")
    home = root / "home"
    docs = root / "docs"
    docs.mkdir()
    for i, text in enumerate(DOCS):
        (docs / f"d{i}.txt").write_text(text)
    ws = finetune_workspace(home, tiny_st_model, tiny_llm)
    assert IngestWorkspace(home, ws.ingest).ingest([docs], "facts").ok
    train = write_jsonl(
        root / "train.jsonl", [{"question": q, "answer": "Paris", "context": c} for q, c in PARIS_QUESTIONS]
    )
    heldout = write_jsonl(
        root / "heldout.jsonl",
        [{"question": q, "answer": "Paris"} for q, _ in PARIS_QUESTIONS]
        + [{"question": "What is the capital of Mars?", "answerable": False}],
    )
    return {"home": home, "train": train, "heldout": heldout, "root": root}


@pytest.fixture(scope="session")
def gate_base(gate_files, tmp_path_factory, tiny_st_model, tiny_llm) -> dict[str, Path]:
    """:func:`gate_files` plus adapter 'good' (SFT: answers "Paris") and 'noise'. Tests copy it
    (:func:`gate_home`) so promotions never leak between them."""
    from finetune.config import SFTJob
    from finetune.sft import run_sft

    home = tmp_path_factory.mktemp("gate-base") / "home"
    shutil.copytree(gate_files["home"], home)
    ws = finetune_workspace(home, tiny_st_model, tiny_llm)
    job = SFTJob(data=gate_files["train"], output="good", collection="facts", k=2, lora={"r": 8}, train=GOOD_TRAIN)
    run_sft(job, ws)
    make_noise_adapter(ws, "noise")
    return {**gate_files, "home": home}


def private_copy(source: Path, tmp_path: Path, monkeypatch) -> Path:
    import os

    for key in list(os.environ):
        if key.startswith("RAGQA_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    shutil.copytree(source, home, ignore=shutil.ignore_patterns("finetune-runs"))
    return home


@pytest.fixture()
def gate_home(gate_base, tmp_path, monkeypatch) -> Path:
    """A private copy of the gate workspace with its adapters (RAGQA_* of the caller cleared)."""
    return private_copy(gate_base["home"], tmp_path, monkeypatch)


@pytest.fixture()
def bare_home(gate_files, tmp_path, monkeypatch) -> Path:
    """A private copy of the gate workspace without adapters (RAGQA_* of the caller cleared)."""
    return private_copy(gate_files["home"], tmp_path, monkeypatch)
