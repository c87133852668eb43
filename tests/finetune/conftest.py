"""Shared fixtures of the fine-tune tests: tiny-model training workspaces with a collection of facts, and the
eval-gate workspace (a trained adapter that answers the held-out questions, and a noise adapter that wrecks the
answers)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

PARIS_DOC = "Paris is the capital of France. The Eiffel Tower was finished in 1889."
ROME_DOC = "Rome is the capital of Italy. The Colosseum held fifty thousand people."
#: (question, gold answer, context) of the preference tests
FACTS = [
    ("What is the capital of France?", "Paris", PARIS_DOC),
    ("What is the capital of Italy?", "Rome", ROME_DOC),
    ("Where does Oslo lie?", "the head of the Oslofjord", "Oslo lies at the head of the Oslofjord in Norway."),
]
#: held-out questions whose answer is "Paris" (the trained adapter learns to answer it, the bare tiny model cannot)
PARIS_QUESTIONS = [
    ("What is the capital of France?", PARIS_DOC),
    ("Which city has the Eiffel Tower?", PARIS_DOC),
    ("Where was the Eiffel Tower finished?", PARIS_DOC),
    ("Which French city is the capital?", PARIS_DOC),
]
DOCS = [PARIS_DOC, ROME_DOC]
#: SFT settings that teach the tiny model to answer "Paris" in a few seconds
GOOD_TRAIN = {
    "epochs": 100,
    "max_steps": 14,
    "grad_accum": 1,  # the tests set their own loop (the default accumulates 2)
    "batch_size": 4,
    "learning_rate": 3e-2,
    "logging_steps": 5,
    "save_steps": 1000,
    "max_length": 192,
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_workspace(home: Path, tiny_st_model: Path, tiny_llm: Path, *, qa=None, retriever=None):
    """A fine-tune workspace on the tiny models (64-token chunks); ``qa``/``retriever`` default to the configs'."""
    from finetune.runner import Workspace
    from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
    from rag.config import GeneratorConfig, QAConfig, RetrieverConfig

    ingest = IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model)), chunking=ChunkingConfig(chunk_tokens=64, overlap_tokens=8)
    )
    retriever = retriever if retriever is not None else RetrieverConfig()
    qa = qa if qa is not None else QAConfig()
    return Workspace(home, GeneratorConfig(model=str(tiny_llm)), ingest, retriever, qa)


def ingest_docs(ws, docs_dir: Path, texts: Sequence[str], collection: str = "facts") -> None:
    """Write each text to its own file in ``docs_dir`` and ingest them into ``collection`` of ``ws``."""
    from ingest.workspace import Workspace as IngestWorkspace

    docs_dir.mkdir()
    for i, text in enumerate(texts):
        (docs_dir / f"d{i}.txt").write_text(text)
    assert IngestWorkspace(ws.home, ws.ingest).ingest([docs_dir], collection).ok


@pytest.fixture(scope="session")
def training_env(tmp_path_factory, tiny_st_model, tiny_llm) -> Callable:
    """Factory of training workspaces: ``make(name, docs=(), qa=None)`` returns ``(workspace, root)``, a workspace
    under a fresh folder ``root`` whose collection 'facts' holds ``docs`` (one file each; none when empty) and which
    answers in at most 4 short tokens unless ``qa`` says otherwise."""
    from rag.config import QAConfig

    def make(name: str, docs: Sequence[str] = (), qa=None):
        root = tmp_path_factory.mktemp(name)
        qa = qa if qa is not None else QAConfig(max_new_tokens=4, answer_style="short")
        ws = tiny_workspace(root / "home", tiny_st_model, tiny_llm, qa=qa)
        if docs:
            ingest_docs(ws, root / "docs", docs)
        return ws, root

    return make


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
    """The gate workspace's settings: retrieve 2 chunks, answer one short token from the stuff mode."""
    from rag.config import QAConfig, RetrieverConfig

    qa = QAConfig(max_new_tokens=1, answer_style="short", mode="stuff")
    return tiny_workspace(home, tiny_st_model, tiny_llm, qa=qa, retriever=RetrieverConfig(k=2))


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
    root = tmp_path_factory.mktemp("gate")
    home = root / "home"
    ingest_docs(finetune_workspace(home, tiny_st_model, tiny_llm), root / "docs", DOCS)
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
