"""Compare embedder backends side by side in one process: speed, load time, agreement, retrieval.

    .venv/bin/python -m bench.embedder_speed [--chunks 240] [--rounds 2] [--cache /tmp/ragqa-bench-cache]

Corpus: the Python 3.11 HTML docs (tutorial, faq, howto, reference) cut into 200-token chunks with
24 tokens of overlap (the chunker's defaults); a subset of ``--chunks`` chunks spread over the corpus
is embedded by every backend, rounds interleaved so that a noisy machine hurts all alike.

Columns: tokens/s (real tokens, no padding, best round), load = a fresh ``python`` process from
start to the first query vector (imports + model load; ONNX with a warm cache), cosine to the torch
fp32 vectors (mean and min), and recall@1/@4 on data/benchmarks/squad2_dev_public.json (embed the
126 paragraphs and the 473 answerable questions; is the gold paragraph among the top k?).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np

from ingest.config import EmbedderConfig
from ingest.embedder import load_embedder, resolve_embedder_path
from ingest.squad import iter_paragraphs, read_squad

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]

DOCS = pathlib.Path("/usr/share/doc/python3.11/html")
SECTIONS = ("tutorial", "faq", "howto", "reference")
SQUAD = ROOT / "data" / "benchmarks" / "squad2_dev_public.json"


def corpus_texts() -> list[str]:
    from bs4 import BeautifulSoup

    texts = []
    for section in SECTIONS:
        for path in sorted((DOCS / section).glob("*.html")):
            soup = BeautifulSoup(path.read_bytes(), "lxml")
            root = soup.find("div", attrs={"role": "main"}) or soup.body or soup
            text = re.sub(r"\s+", " ", root.get_text(" ")).strip()
            if text:
                texts.append(text)
    return texts


def chunk(texts: list[str], tokenizer, size: int = 200, overlap: int = 24) -> tuple[list[str], int]:
    """Token windows cut on the tokenizer's character offsets; returns chunks and total corpus tokens."""
    chunks, total = [], 0
    for text in texts:
        enc = tokenizer.encode(text, add_special_tokens=False)
        offsets = enc.offsets
        total += len(offsets)
        for start in range(0, max(len(offsets) - overlap, 1), size - overlap):
            window = offsets[start : start + size]
            chunks.append(text[window[0][0] : window[-1][1]])
    return chunks, total


def squad() -> tuple[list[str], list[str], np.ndarray]:
    """Every paragraph, the questions not marked impossible, and each question's paragraph index."""
    paragraphs, questions, gold = [], [], []
    for _, para in iter_paragraphs(read_squad(SQUAD)):
        for qa in para.questions:
            if not qa.is_impossible:
                questions.append(qa.question)
                gold.append(len(paragraphs))
        paragraphs.append(para.context)
    return paragraphs, questions, np.array(gold)


def recall(embedder, paragraphs, questions, gold) -> tuple[float, float]:
    p = embedder.embed_documents(paragraphs)
    q = np.stack([embedder.embed_query(x) for x in questions])
    top = np.argsort(-(q @ p.T), axis=1)[:, :4]
    return float((top[:, 0] == gold).mean()), float((top == gold[:, None]).any(axis=1).mean())


LOAD_SNIPPET = """
import os, sys, time, pathlib
t0 = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, {root!r})
from ingest.config import EmbedderConfig
from ingest.embedder import load_embedder
cfg = EmbedderConfig()
if "backend" not in type(cfg).model_fields:
    object.__setattr__(cfg, "backend", {backend!r})
else:
    setattr(cfg, "backend", {backend!r})
e = load_embedder(cfg, cache_dir=pathlib.Path({cache!r}))
v = e.embed_query("How do I open a file?")
t1 = time.perf_counter()
_ = e.tokenizer
print(t1 - t0, time.perf_counter() - t0)
"""


def load_time(backend: str, cache: str) -> tuple[float, float]:
    """Fresh process, interpreter start excluded: (to first query vector, plus the HF tokenizer)."""
    code = LOAD_SNIPPET.format(root=str(ROOT), backend=backend, cache=cache)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, with_tok = out.split()[-2:]
    return float(first), float(with_tok)


def make(backend: str, cache: pathlib.Path, batch_size: int = 64, dtype: str = "auto"):
    cfg = EmbedderConfig(batch_size=batch_size, device="cpu", dtype=dtype)
    if "backend" in type(cfg).model_fields:
        cfg.backend = backend
    else:
        object.__setattr__(cfg, "backend", backend)
    return load_embedder(cfg, cache_dir=cache)


def _threads() -> int:
    return len(os.sched_getaffinity(0))


def set_threads(embedders: dict, threads: int) -> None:
    """Same thread count for every backend: torch globally, a fresh ORT session per ONNX embedder."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    for e in embedders.values():
        if hasattr(e, "session"):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            e.session = ort.InferenceSession(e.session._model_path, opts, providers=["CPUExecutionProvider"])
            e.embed_documents(["warm-up"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/ragqa-bench-cache")
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()
    cache = pathlib.Path(args.cache)

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(pathlib.Path(resolve_embedder_path("all-MiniLM-L6-v2")) / "tokenizer.json"))
    tok.no_truncation()
    texts = corpus_texts()
    chunks, total_tokens = chunk(texts, tok)
    step = max(1, len(chunks) // args.chunks)
    sample = chunks[::step][: args.chunks]
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(sample))
    print(
        f"corpus: {len(texts)} pages, {sum(map(len, texts)):,} chars, {total_tokens:,} tokens, {len(chunks)} chunks;"
        f" sample {len(sample)} chunks = {n_tokens:,} tokens (with [CLS]/[SEP])"
    )

    builds = {}
    for backend, _variant in (("onnx", "fp32"), ("onnx-int8", "int8")):
        t = time.perf_counter()
        make(backend, cache)
        builds[backend] = time.perf_counter() - t
    print("ONNX build-or-load (first call in this process):", {k: round(v, 1) for k, v in builds.items()})

    configs = [
        ("torch fp32 bs32", "torch", 32, "float32"),
        ("torch fp32 bs64", "torch", 64, "float32"),
        ("torch fp32 bs128", "torch", 128, "float32"),
        ("torch bf16 bs64", "torch", 64, "bfloat16"),  # hardware bf16 on AMX / AVX512-BF16, emulated elsewhere
        ("onnx fp32 bs32", "onnx", 32, "auto"),
        ("onnx fp32 bs64", "onnx", 64, "auto"),
        ("onnx int8 bs32", "onnx-int8", 32, "auto"),
        ("onnx int8 bs64", "onnx-int8", 64, "auto"),
    ]
    embedders = {label: make(backend, cache, bs, dtype) for label, backend, bs, dtype in configs}
    for e in embedders.values():  # warm-up
        e.embed_documents(sample[:8])
    vectors: dict[str, np.ndarray] = {}
    best: dict[str, float] = {}  # wall tokens/s with all cores
    best_cpu: dict[str, float] = {}  # tokens per CPU-second of one thread (robust on a busy machine)
    for threads in (1, _threads()):
        set_threads(embedders, threads)
        for r in range(args.rounds):
            for label, e in embedders.items():
                t, c = time.perf_counter(), time.thread_time()
                vectors[label] = e.embed_documents(sample)
                dt, dc = time.perf_counter() - t, time.thread_time() - c
                if threads == 1:
                    best_cpu[label] = max(best_cpu.get(label, 0.0), n_tokens / dc)
                    print(f"  1 thread  round {r + 1} {label:18s} {n_tokens / dc:8.0f} tok/cpu-s", flush=True)
                else:
                    best[label] = max(best.get(label, 0.0), n_tokens / dt)
                    print(f"  {threads} threads round {r + 1} {label:18s} {n_tokens / dt:8.0f} tok/s", flush=True)

    ref = vectors["torch fp32 bs64"]
    paragraphs, questions, gold = squad()
    loads = {}
    if not args.skip_load:
        for backend in ("torch", "onnx", "onnx-int8"):
            loads[backend] = min(load_time(backend, str(cache)) for _ in range(2))
    print()
    print(
        f"{'backend':18s} {'tok/cpu-s':>9s} {'x torch':>7s} {'tok/s':>7s} {'x torch':>7s} {'load s':>7s} {'+tok s':>7s}"
        f" {'cos mean':>8s} {'cos min':>8s} {'R@1':>6s} {'R@4':>6s}"
    )
    recall_cache: dict[tuple[str, str], tuple[float, float]] = {}
    for label, backend, _, dtype in configs:
        cos = (vectors[label] * ref).sum(axis=1)
        if (backend, dtype) not in recall_cache:
            recall_cache[backend, dtype] = recall(embedders[label], paragraphs, questions, gold)
        r1, r4 = recall_cache[backend, dtype]
        load, load_tok = loads.get(backend, (float("nan"), float("nan")))
        print(
            f"{label:18s} {best_cpu[label]:9.0f} {best_cpu[label] / best_cpu['torch fp32 bs64']:7.2f}"
            f" {best[label]:7.0f} {best[label] / best['torch fp32 bs64']:7.2f} {load:7.1f} {load_tok:7.1f}"
            f" {cos.mean():8.5f} {cos.min():8.5f} {r1:6.3f} {r4:6.3f}"
        )
    est = total_tokens * 1.14  # ~ chunk overlap and special tokens
    print(f"\nwhole corpus (~{est:,.0f} tokens) at best wall tok/s:", {k: f"{est / v:.0f}s" for k, v in best.items()})
    print(
        f"  ... at {_threads()} x tok/cpu-s (an idle machine):",
        {k: f"{est / (v * _threads()):.0f}s" for k, v in best_cpu.items()},
    )


if __name__ == "__main__":
    main()
