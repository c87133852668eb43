"""Ingestion benchmark: ``ragqa ingest`` on both CPU embedder paths against LangChain, side by side.

    .venv/bin/python bench/ingest.py [--repeat N] [--quick] [--paths onnx,torch] [--write] [-v]

Each ingest is a whole process timed from spawn to exit (interpreter start, imports, model
loading, loading, chunking, embedding, index writing); the pipelines run in turn in the same run
(the order flips every repeat), each ingest with a fresh ``RAGQA_HOME`` / output folder.

Pipelines
  ragqa onnx   ``ragqa ingest PATH -c NAME --json`` with ``RAGQA_CPU_BF16=0``: the path ``auto`` takes on a
               CPU without AMX (ONNX Runtime, int8 weights). Defaults otherwise: 200-token chunks, 24
               overlap, flat index. The re-ingest is the same command again on the unchanged corpus.
  ragqa torch  the same command on the torch path: ``RAGQA_CPU_BF16=1`` (torch bf16) on a CPU with AMX;
               with AVX512-BF16 also ``RAGQA_INGEST__EMBEDDER__BACKEND=torch`` (bf16; auto keeps onnx-int8
               there); without either bf16 is emulated (slower than fp32), so there the row forces
               ``RAGQA_INGEST__EMBEDDER__BACKEND=torch`` (float32) instead, and says so.
  LangChain    ``DirectoryLoader(path, glob="**/*.html", loader_cls=BSHTMLLoader)`` (SQuAD: one
               ``Document`` per paragraph, metadata title + paragraph index),
               ``RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)``,
               ``HuggingFaceEmbeddings(model_name=<bundled all-MiniLM-L6-v2 folder>)``,
               ``FAISS.from_documents(...)`` and ``save_local(...)``; it runs as
               ``bench/ingest.py --langchain-worker ingest ...``.

The per-machine embedder cache (``RAGQA_CACHE_DIR``: the ONNX export and int8 model, built once per
machine and shared by every workspace) is prepared once, untimed, before the timed runs; every fresh
home uses it. One more "new user" run (fresh home, empty cache, onnx path, docs corpus) times that
one-time preparation inside the first ingest. After the timed runs, the overlap of loading/chunking
with embedding is measured in one process (onnx path, docs corpus, in-process seconds, fresh
collections): the pipeline with and without its prefetch thread.

Corpora
  docs   The Python 3.11 HTML docs (tutorial, faq, howto, reference: 57 pages; Debian package
         python3.11-doc), copied into one temporary folder that every pipeline ingests.
  squad  data/benchmarks/squad2_dev_public.json (126 paragraphs, 473 answerable questions).

Retrieval quality on SQuAD is measured after the timed ingests, in separate processes that open
the stores written by the first repeat: recall@1 and recall@4 over the answerable questions, with
two definitions of a hit: a gold answer string appears in a retrieved chunk (case-insensitive), or
a retrieved chunk comes from the gold paragraph (title + paragraph index in the chunk metadata).

``--quick``: only the tutorial folder and the first 50 answerable questions (a smoke run).
``--write``: replace the "Ingestion" section of BENCHMARKS.md (between ``<!-- ingest:start -->`` and
``<!-- ingest:end -->``) with the table, the command, the date, the machine and package versions.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from bench import common

logger = logging.getLogger("bench.ingest")

SECTION = common.Section("ingest", "## Ingestion")
DOCS_COLLECTION = "pydocs"
SQUAD_COLLECTION = "squad"
K = 4
QUICK_QUESTIONS = 50
TARGET_SPEED = 1 / 3  # ragqa docs ingest wall time <= 1/3 of LangChain's
TARGET_REINGEST = 0.05  # re-ingest of unchanged docs <= 5 % of the first ingest


# =============================================================================================
# Workers (run as separate processes)
# =============================================================================================


def _squad_questions(path: pathlib.Path, limit: int | None) -> list[dict[str, Any]]:
    """Answerable questions in file order: question, gold answers, gold (title, paragraph)."""
    from ingest.squad import iter_questions, read_squad

    out = [
        {"question": q.question, "answers": q.answer_texts, "title": article.title, "paragraph": paragraph.index}
        for article, paragraph, q in iter_questions(read_squad(path), answerable=True)
    ]
    return out[:limit] if limit else out


def _score(questions: list[dict[str, Any]], retrieved: list[list[tuple[str, dict[str, Any]]]]) -> dict[str, Any]:
    """Recall@1 / @K for both hit definitions; ``retrieved[i]`` = [(chunk text, metadata), ...] best first."""
    counts = {"answer@1": 0, f"answer@{K}": 0, "paragraph@1": 0, f"paragraph@{K}": 0}
    for q, hits in zip(questions, retrieved):
        answers = [a.lower() for a in q["answers"]]
        ans_hit = [any(a in text.lower() for a in answers) for text, _ in hits]
        par_hit = [
            str(md.get("title")) == q["title"] and _as_int(md.get("paragraph")) == q["paragraph"] for _, md in hits
        ]
        counts["answer@1"] += bool(ans_hit[:1] and ans_hit[0])
        counts[f"answer@{K}"] += any(ans_hit[:K])
        counts["paragraph@1"] += bool(par_hit[:1] and par_hit[0])
        counts[f"paragraph@{K}"] += any(par_hit[:K])
    n = len(questions)
    return {"questions": n, **{key: (v / n if n else None) for key, v in counts.items()}}


def _as_int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def langchain_ingest_worker(kind: str, source: pathlib.Path, out: pathlib.Path) -> None:
    """What a LangChain user writes: load, split, embed, FAISS, save. Timed by the parent as a whole."""
    from langchain_community.vectorstores import FAISS
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    if kind == "html":
        from langchain_community.document_loaders import BSHTMLLoader, DirectoryLoader

        # open_encoding: the docs are UTF-8; without it BSHTMLLoader uses the locale's encoding.
        loader = DirectoryLoader(
            str(source), glob="**/*.html", loader_cls=BSHTMLLoader, loader_kwargs={"open_encoding": "utf-8"}
        )
        docs = loader.load()
    else:
        from langchain_core.documents import Document

        from ingest.squad import iter_paragraphs, read_squad

        docs = [
            Document(page_content=p.context, metadata={"source": str(source), "title": a.title, "paragraph": p.index})
            for a, p in iter_paragraphs(read_squad(source))
        ]
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    chunks = splitter.split_documents(docs)
    embeddings = HuggingFaceEmbeddings(model_name=str(common.bundled_model_dir()))
    store = FAISS.from_documents(chunks, embeddings)
    store.save_local(str(out))
    print(json.dumps({"documents": len(docs), "chunks": len(chunks)}))


def langchain_warmup_worker() -> None:
    """Untimed: import the LangChain stack and load the model once (OS file cache), nothing else."""
    from langchain_community.document_loaders import BSHTMLLoader, DirectoryLoader  # noqa: F401
    from langchain_community.vectorstores import FAISS  # noqa: F401
    from langchain_huggingface import HuggingFaceEmbeddings

    HuggingFaceEmbeddings(model_name=str(common.bundled_model_dir())).embed_query("warm up")
    print(json.dumps({"ok": True}))


def langchain_eval_worker(store_dir: pathlib.Path, squad: pathlib.Path, limit: int | None) -> None:
    from langchain_community.vectorstores import FAISS
    from langchain_huggingface import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(model_name=str(common.bundled_model_dir()))
    # Our own file, written by langchain_ingest_worker (the docstore is a pickle).
    store = FAISS.load_local(str(store_dir), embeddings, allow_dangerous_deserialization=True)
    questions = _squad_questions(squad, limit)
    retrieved = [[(d.page_content, d.metadata) for d in store.similarity_search(q["question"], k=K)] for q in questions]
    print(json.dumps(_score(questions, retrieved)))


def ragqa_worker(
    action: str,
    collection: str,
    squad: pathlib.Path,
    limit: int | None,
    source: pathlib.Path | None,
    pairs: int = 1,
) -> None:
    """``prepare``: load the embedder (builds the per-machine cache); ``eval``: SQuAD recall; ``overlap``:
    in-process seconds of ingesting ``source`` with and without the prefetch thread (embedder loaded first)."""
    import time

    from api.settings import Settings
    from ingest.pipeline import ingest_paths
    from ingest.workspace import Workspace

    settings = Settings()
    ws = Workspace(settings.home, settings.ingest)
    emb = ws.embedder
    backend = getattr(emb, "backend", type(emb).__name__)
    if getattr(emb, "dtype", None):  # the torch backend: its weight dtype (bf16 on AMX CPUs)
        backend = f"{backend} {emb.dtype}"
    info = {"embedder": emb.name, "backend": backend}
    if action == "prepare":
        emb.embed_query("warm up")
        print(json.dumps({**info, "model_file": str(getattr(emb, "model_file", None))}))
        return
    if action == "overlap":
        if source is None:
            raise SystemExit("--ragqa-worker overlap needs --input")
        seconds: dict[str, float] = {}
        for overlap in (False, True) * pairs:  # interleaved: drifting machine load hits both
            name = f"overlap-{int(overlap)}-{len(seconds)}"
            with ws.open_or_create(name) as coll:
                t0 = time.perf_counter()
                report = ingest_paths(
                    [source],
                    coll,
                    emb.embed_documents,
                    ws.chunker_for(coll),
                    settings.ingest.loader,
                    embed_batch_chunks=max(64, 8 * settings.ingest.embedder.batch_size),
                    overlap=overlap,
                )
                seconds[name] = time.perf_counter() - t0
            ws.delete(name)
            if report.failed:
                raise SystemExit(f"overlap run failed files: {report.failed}")
        seq = [v for k, v in seconds.items() if k.startswith("overlap-0")]
        ovl = [v for k, v in seconds.items() if k.startswith("overlap-1")]
        print(json.dumps({**info, "sequential": seq, "overlapped": ovl, "chunks": report.chunks}))
        return
    questions = _squad_questions(squad, limit)
    with ws.open(collection, readonly=True) as coll:
        retrieved = [[(h.text, h.metadata) for h in coll.search(emb.embed_query(q["question"]), K)] for q in questions]
    print(json.dumps({**info, **_score(questions, retrieved)}))


# =============================================================================================
# Driver
# =============================================================================================


def torch_path_env() -> tuple[dict[str, str], str]:
    """The environment that puts ``ragqa`` on its torch path here, and how the report names it."""
    # read here, not via ingest.hardware: run as bench/ingest.py, "ingest" is this file
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
    except OSError:
        flags = []
    if "amx_bf16" in flags:
        return {"RAGQA_CPU_BF16": "1"}, "torch bf16 (RAGQA_CPU_BF16=1, AMX)"
    if "avx512_bf16" in flags:
        return (
            {"RAGQA_CPU_BF16": "1", "RAGQA_INGEST__EMBEDDER__BACKEND": "torch"},
            "torch bf16 (RAGQA_INGEST__EMBEDDER__BACKEND=torch, AVX512-BF16)",
        )
    return (
        {"RAGQA_CPU_BF16": "0", "RAGQA_INGEST__EMBEDDER__BACKEND": "torch"},
        "torch float32 (RAGQA_INGEST__EMBEDDER__BACKEND=torch: no bf16 matmuls here, bf16 would be emulated)",
    )


@dataclass
class RagqaPath:
    key: str  #: "onnx" / "torch"
    env: dict[str, str]
    label: str


def ragqa_paths(names: list[str]) -> list[RagqaPath]:
    torch_env, torch_label = torch_path_env()
    known = {
        "onnx": RagqaPath("onnx", {"RAGQA_CPU_BF16": "0"}, "auto with RAGQA_CPU_BF16=0 (onnx-int8)"),
        "torch": RagqaPath("torch", torch_env, torch_label),
    }
    return [known[n] for n in names]


@dataclass
class PipelineResult:
    ingest: common.Samples = field(default_factory=common.Samples)
    reingest: common.Samples = field(default_factory=common.Samples)
    chunks: int | None = None
    documents: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Results:
    pipelines: list[str] = field(default_factory=list)  #: "ragqa-onnx", "ragqa-torch", "langchain"
    docs: dict[str, PipelineResult] = field(default_factory=dict)
    squad: dict[str, PipelineResult] = field(default_factory=dict)
    recall: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)  #: what each ragqa pipeline loaded
    labels: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    docs_files: int = 0
    sections: tuple[str, ...] = ()
    questions: int | None = None
    prepare_seconds: float | None = None
    new_user: PipelineResult | None = None  #: first ingest with a cold per-machine cache (onnx path)
    overlap: dict[str, Any] | None = None
    load: list[float] = field(default_factory=list)  #: 1-minute load average at start and end


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ragqa = common.venv_bin("ragqa")
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="ragqa-bench-ingest-", dir=args.workdir))
        self.paths = ragqa_paths(args.paths)
        self.res = Results()
        self.res.pipelines = [f"ragqa-{p.key}" for p in self.paths] + ["langchain"]
        self.res.labels = {f"ragqa-{p.key}": p.label for p in self.paths}
        for corpus in ("docs", "squad"):
            setattr(self.res, corpus, {name: PipelineResult() for name in self.res.pipelines})
        self.res.recall = dict.fromkeys(self.res.pipelines)
        self.res.sections = ("tutorial",) if args.quick else common.PY_DOCS_SECTIONS
        self.res.questions = args.questions if args.questions is not None else (QUICK_QUESTIONS if args.quick else None)
        self.cache = self.work / "machine-cache"  #: the per-machine embedder cache, prepared once

    # -- helpers ------------------------------------------------------------------------------
    def worker(self, *argv: str, env: dict[str, str] | None = None) -> common.Timed:
        return common.run_timed(
            [sys.executable, "-m", "bench.ingest", *argv], env=env or common.offline_env(), cwd=common.ROOT
        )

    def ragqa_env(self, path: RagqaPath, home: pathlib.Path, cache: pathlib.Path | None = None) -> dict[str, str]:
        return common.offline_env(RAGQA_HOME=str(home), RAGQA_CACHE_DIR=str(cache or self.cache), **path.env)

    def fresh_home(self, name: str) -> pathlib.Path:
        home = self.work / name
        home.mkdir(parents=True)
        return home

    def fail(self, what: str, timed: common.Timed) -> None:
        msg = f"{what}: {timed.describe_failure()}"
        logger.error("%s", msg)
        self.res.failures.append(msg)

    # -- setup --------------------------------------------------------------------------------
    def build_corpus(self) -> pathlib.Path:
        if not common.PY_DOCS.is_dir() or not all((common.PY_DOCS / s).is_dir() for s in self.res.sections):
            raise SystemExit(
                f"The Python 3.11 HTML docs are not under {common.PY_DOCS} (folders {', '.join(self.res.sections)}); "
                "install them with `apt-get install python3.11-doc`."
            )
        corpus = self.work / "corpus" / "pydocs"
        for section in self.res.sections:
            for src in sorted((common.PY_DOCS / section).rglob("*.html")):
                dest = corpus / section / src.relative_to(common.PY_DOCS / section)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
                self.res.docs_files += 1
        if not self.res.docs_files:
            raise SystemExit(f"no .html files under {common.PY_DOCS} {self.res.sections}")
        logger.info("corpus: %d HTML files in %s", self.res.docs_files, corpus)
        return corpus

    def warm_up(self) -> None:
        """Untimed: build the per-machine embedder cache once and warm the OS file cache for every stack."""
        for path in self.paths:
            t = self.worker("--ragqa-worker", "prepare", env=self.ragqa_env(path, self.work / f"prepare-{path.key}"))
            if t.ok:
                if path.key == "onnx":
                    self.res.prepare_seconds = t.seconds
                self.res.backends[f"ragqa-{path.key}"] = (t.last_json() or {}).get("backend", "?")
            else:
                self.fail(f"ragqa embedder preparation ({path.key})", t)
        t = self.worker("--langchain-worker", "warmup")
        if not t.ok:
            self.fail("LangChain warm-up", t)

    # -- one pipeline run ---------------------------------------------------------------------
    def run_ragqa(self, path: RagqaPath, corpus: str, source: pathlib.Path, rep: int) -> None:
        name = f"ragqa-{path.key}"
        result = getattr(self.res, corpus)[name]
        home = self.fresh_home(f"{name}-{corpus}-{rep}")
        self._ragqa_ingests(name, result, corpus, source, rep, self.ragqa_env(path, home))

    def run_new_user(self, source: pathlib.Path) -> None:
        """The onnx path's first docs ingest with an empty per-machine cache: the one-time preparation included."""
        path = next((p for p in self.paths if p.key == "onnx"), None)
        if path is None:
            return
        self.res.new_user = PipelineResult()
        env = self.ragqa_env(path, self.fresh_home("new-user"), cache=self.work / "new-user-cache")
        self._ragqa_ingests("ragqa-onnx new user", self.res.new_user, "docs", source, 0, env, phases=("ingest",))

    def _ragqa_ingests(
        self,
        name: str,
        result: PipelineResult,
        corpus: str,
        source: pathlib.Path,
        rep: int,
        env: dict[str, str],
        phases: tuple[str, ...] | None = None,
    ) -> None:
        collection = DOCS_COLLECTION if corpus == "docs" else SQUAD_COLLECTION
        cmd = [self.ragqa, "ingest", str(source), "-c", collection, "--json"]
        runs = phases or (("ingest", "reingest") if corpus == "docs" else ("ingest",))
        for phase in runs:
            t = common.run_timed(cmd, env=env, cwd=common.ROOT)
            report = t.last_json()
            if report is None or (not t.ok and not report.get("failed")):
                self.fail(f"{name} {phase} of {corpus}", t)
                return
            if report.get("failed"):
                result.notes.append(f"{phase} failed files: {report['failed']}")
            getattr(result, phase).add(t.seconds)
            logger.info("%s %s %s rep %d: %.1f s", name, corpus, phase, rep, t.seconds)
            if phase == "ingest":
                result.chunks, result.documents = report.get("chunks"), report.get("documents")
                if rep == 0:
                    result.notes.append(f"in-process seconds reported by ragqa (first ingest): {report.get('seconds')}")
            else:
                if report.get("chunks_embedded") or report.get("added") or report.get("replaced"):
                    result.notes.append(f"re-ingest was not a no-op: {report}")
                if rep == 0:
                    result.notes.append(
                        f"re-ingest: {report.get('unchanged')} files unchanged, "
                        f"{report.get('chunks_embedded')} chunks embedded, "
                        f"in-process seconds {report.get('seconds')}"
                    )

    def run_langchain(self, corpus: str, source: pathlib.Path, rep: int) -> None:
        result = getattr(self.res, corpus)["langchain"]
        out = self.work / f"langchain-{corpus}-{rep}"
        t = self.worker(
            "--langchain-worker",
            "ingest",
            "--kind",
            "html" if corpus == "docs" else "squad",
            "--input",
            str(source),
            "--out",
            str(out),
        )
        report = t.last_json()
        if not t.ok or report is None:
            self.fail(f"LangChain ingest of {corpus}", t)
            return
        result.ingest.add(t.seconds)
        logger.info("langchain %s rep %d: %.1f s", corpus, rep, t.seconds)
        result.chunks, result.documents = report["chunks"], report["documents"]

    def evaluate(self) -> None:
        limit = [] if self.res.questions is None else ["--questions", str(self.res.questions)]
        for path in self.paths:
            name = f"ragqa-{path.key}"
            home = self.work / f"{name}-squad-0"
            if not home.exists():
                continue
            t = self.worker(
                "--ragqa-worker", "eval", "--collection", SQUAD_COLLECTION, *limit, env=self.ragqa_env(path, home)
            )
            if t.ok and t.last_json():
                self.res.recall[name] = t.last_json()
                self.res.backends[name] = self.res.recall[name].get("backend") or self.res.backends.get(name, "?")
            else:
                self.fail(f"{name} SQuAD evaluation", t)
        out = self.work / "langchain-squad-0"
        if out.exists():
            t = self.worker("--langchain-worker", "eval", "--out", str(out), *limit)
            if t.ok and t.last_json():
                self.res.recall["langchain"] = t.last_json()
            else:
                self.fail("LangChain SQuAD evaluation", t)

    def measure_overlap(self, source: pathlib.Path) -> None:
        path = next((p for p in self.paths if p.key == "onnx"), None)
        if path is None or self.args.no_overlap_check:
            return
        env = self.ragqa_env(path, self.fresh_home("overlap"))
        t = self.worker(
            "--ragqa-worker",
            "overlap",
            "--input",
            str(source),
            "--overlap-pairs",
            str(self.args.overlap_pairs),
            env=env,
        )
        if t.ok and t.last_json():
            self.res.overlap = t.last_json()
        else:
            self.fail("overlap measurement", t)

    def run(self) -> Results:
        self.res.load.append(os.getloadavg()[0])
        try:
            corpus = self.build_corpus()
            if not common.SQUAD.is_file():
                raise SystemExit(f"missing {common.SQUAD}")
            self.warm_up()
            for rep in range(self.args.repeat):
                steps: list[Any] = [functools.partial(self.run_ragqa, p) for p in self.paths] + [self.run_langchain]
                if rep % 2:  # alternate which pipeline goes first
                    steps.reverse()
                for name, source in (("docs", corpus), ("squad", common.SQUAD)):
                    for step in steps:
                        step(name, source, rep)
            if not self.args.no_new_user:
                self.run_new_user(corpus)
            self.evaluate()
            self.measure_overlap(corpus)
            self.res.load.append(os.getloadavg()[0])
        finally:
            if self.args.keep:
                logger.warning("kept the work folder %s", self.work)
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        return self.res


# =============================================================================================
# Report
# =============================================================================================


def _times(s: common.Samples) -> str:
    if not s.values:
        return "failed"
    if len(s.values) == 1:
        return f"{s.values[0]:.1f}"
    return f"{s.min:.1f} / {s.median:.1f}"


def _ratios(a: common.Samples, b: common.Samples) -> tuple[float | None, float | None]:
    return common.ratio(a.min, b.min), common.ratio(a.median, b.median)


def _ratio_cell(pair: tuple[float | None, float | None], repeat: int) -> str:
    lo, med = pair
    if med is None:
        return "n/a"
    return f"{med:.3f}" if repeat == 1 else f"{lo:.3f} / {med:.3f}"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _short(res: Results, name: str) -> str:
    return "LangChain" if name == "langchain" else f"ragqa {res.backends.get(name) or name.removeprefix('ragqa-')}"


def render_table(res: Results, repeat: int) -> str:
    """One row per pipeline (the ragqa CPU paths and LangChain), measures as columns."""
    d, s = res.docs, res.squad
    lc_d, lc_s = d["langchain"].ingest, s["langchain"].ingest
    rr = {name: res.recall.get(name) or {} for name in res.pipelines}
    lcr = rr["langchain"]
    lines = [
        f"| Pipeline | docs ingest wall s | / LangChain (target <= 1/3) | docs re-ingest wall s (re / first, "
        f"target <= 5 %) | docs chunks | SQuAD ingest wall s (/ LangChain) | SQuAD recall@{K} answer "
        f"| SQuAD recall@{K} paragraph (target >= LangChain) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in res.pipelines:
        r_d, r_s, r = d[name], s[name], rr[name]
        if name == "langchain":
            speed, re_cell, sq = "", "(no incremental mode)", _times(r_s.ingest)
        else:
            ratio = _ratios(r_d.ingest, lc_d)
            speed = f"{_ratio_cell(ratio, repeat)} ({_met(None if ratio[1] is None else ratio[1] <= TARGET_SPEED)})"
            re_ratio = _ratios(r_d.reingest, r_d.ingest)
            re_ok = None if re_ratio[1] is None else re_ratio[1] <= TARGET_REINGEST
            re_cell = f"{_times(r_d.reingest)} ({_ratio_cell(re_ratio, repeat)}, {_met(re_ok)})"
            sq = f"{_times(r_s.ingest)} ({_ratio_cell(_ratios(r_s.ingest, lc_s), repeat)})"
        recall = []
        for key in (f"answer@{K}", f"paragraph@{K}"):
            a, b = r.get(key), lcr.get(key)
            met = "" if name == "langchain" else f" ({_met(None if a is None or b is None else a >= b - 1e-12)})"
            recall.append(f"{_pct(a)}{met}")
        lines.append(
            f"| {_short(res, name)} | {_times(r_d.ingest)} | {speed} | {re_cell} | {r_d.chunks or 'n/a'} | "
            f"{sq} | {recall[0]} | {recall[1]} |"
        )
    if res.new_user is not None and res.new_user.ingest.values:
        ratio = _ratios(res.new_user.ingest, lc_d)
        lines.append(
            f"| {_short(res, 'ragqa-onnx')}, new user (empty per-machine cache) | {_times(res.new_user.ingest)} | "
            f"{_ratio_cell((ratio[1], ratio[1]), 1)} ({_met(None if ratio[1] is None else ratio[1] <= TARGET_SPEED)})"
            " | | | | | |"
        )
    return "\n".join(lines)


def render_notes(res: Results, repeat: int) -> list[str]:
    notes = [
        f"Corpora: Python docs ({res.docs_files} pages), SQuAD ({res.squad['langchain'].documents or '?'} paragraphs, "
        f"{next((r.get('questions') for r in res.recall.values() if r), '?')} questions; recall = answer string in "
        "one of the top 4 chunks, or the gold paragraph's chunk among them).",
        "Wall seconds are whole processes (spawn to exit), each ingest in a fresh RAGQA_HOME, "
        f"{'min / median of ' + str(repeat) + ' runs' if repeat > 1 else 'one run'}; "
        "ratios are of the mins / medians; targets are checked on the medians.",
        *[f"{_short(res, k)}: {v}" for k, v in res.labels.items()],
        "The per-machine embedder cache (RAGQA_CACHE_DIR) was prepared once before the timed runs "
        + (
            f"(onnx-int8 export + quantisation, {res.prepare_seconds:.1f} s whole process, untimed) "
            if res.prepare_seconds is not None
            else "(FAILED, see below) "
        )
        + "and shared by every fresh home; the new-user row starts with an empty cache and pays that preparation "
        "inside its first ingest.",
        "Chunking differs by design: ragqa 200 tokens / 24 overlap; LangChain 1000 characters / 200 overlap.",
    ]
    if res.overlap:
        seq, ovl = res.overlap["sequential"], res.overlap["overlapped"]
        notes.append(
            f"Loading/chunking overlapped with embedding (ragqa {res.overlap.get('backend')}, docs corpus, one "
            f"process, in-process seconds, {res.overlap.get('chunks')} chunks, runs interleaved): sequential "
            f"{' / '.join(f'{v:.1f}' for v in seq)} s, overlapped {' / '.join(f'{v:.1f}' for v in ovl)} s "
            f"(best {min(ovl) / min(seq):.2f}x of sequential)."
        )
    if res.load:
        notes.append(
            f"1-minute load average at start / end of the run: {' / '.join(f'{v:.1f}' for v in res.load)} "
            "(other work on the machine inflates every time; the ratios are of runs taken side by side)."
        )
    for corpus in ("docs", "squad"):
        for pipeline, r in getattr(res, corpus).items():
            notes += [f"{_short(res, pipeline)} {corpus}: {n}" for n in r.notes]
    if res.new_user is not None:
        notes += [f"new user docs: {n}" for n in res.new_user.notes]
    notes += [f"FAILED {f}" for f in res.failures]
    return notes


def render_section(res: Results, args: argparse.Namespace, argv: list[str], table: str, notes: list[str]) -> str:
    versions = common.package_versions()
    cmd = common.command_line(pathlib.Path(__file__), [a for a in argv if a not in ("-v", "--verbose", "--keep")])
    corpus = f"{res.docs_files} pages of the Python 3.11 HTML docs ({', '.join(res.sections)})"
    lines = [
        f"`ragqa ingest` on both CPU embedder paths against a LangChain pipeline (DirectoryLoader + BSHTMLLoader, "
        f"RecursiveCharacterTextSplitter 1000/200, HuggingFaceEmbeddings all-MiniLM-L6-v2, FAISS.from_documents + "
        f"save_local); corpora: {corpus} and data/benchmarks/squad2_dev_public.json"
        f"{' (quick mode)' if args.quick else ''}.",
        "",
        f"- Command: `{cmd}`",
        f"- Date: {common.today()}; revision {common.git_revision()}",
        f"- Machine: {common.machine_summary()}",
        f"- Packages: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        "",
        table,
        "",
        *[f"- {n}" for n in notes],
    ]
    return "\n".join(lines)


# =============================================================================================
# CLI
# =============================================================================================


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="alternating runs per pipeline and corpus (min and median reported)"
    )
    p.add_argument(
        "--quick", action="store_true", help=f"smoke run: tutorial folder only, {QUICK_QUESTIONS} SQuAD questions"
    )
    p.add_argument("--questions", type=int, default=None, help="evaluate only the first N answerable SQuAD questions")
    p.add_argument("--write", action="store_true", help="update the Ingestion section of BENCHMARKS.md")
    p.add_argument(
        "--paths",
        type=lambda v: [x for x in v.split(",") if x],
        default=["onnx", "torch"],
        help="ragqa CPU embedder paths to run, comma-separated: onnx (RAGQA_CPU_BF16=0), torch (default both)",
    )
    p.add_argument("--no-new-user", action="store_true", help="skip the run with an empty per-machine cache")
    p.add_argument(
        "--no-overlap-check", action="store_true", help="skip the in-process overlap-vs-sequential measurement"
    )
    p.add_argument(
        "--overlap-pairs", type=int, default=1, help="sequential/overlapped ingest pairs of the overlap measurement"
    )
    p.add_argument("--workdir", type=pathlib.Path, default=None, help="parent of the temporary work folder")
    p.add_argument("--keep", action="store_true", help="keep the work folder (corpus, homes, stores)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    # worker entries (run by the driver as child processes)
    p.add_argument("--langchain-worker", choices=("ingest", "eval", "warmup"), help=argparse.SUPPRESS)
    p.add_argument("--ragqa-worker", choices=("prepare", "eval", "overlap"), help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("html", "squad"), help=argparse.SUPPRESS)
    p.add_argument("--input", type=pathlib.Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=pathlib.Path, help=argparse.SUPPRESS)
    p.add_argument("--collection", default=SQUAD_COLLECTION, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if not args.paths or set(args.paths) - {"onnx", "torch"}:
        p.error("--paths takes onnx, torch or onnx,torch")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    if args.langchain_worker == "ingest":
        langchain_ingest_worker(args.kind, args.input, args.out)
        return 0
    if args.langchain_worker == "warmup":
        langchain_warmup_worker()
        return 0
    if args.langchain_worker == "eval":
        langchain_eval_worker(args.out, common.SQUAD, args.questions)
        return 0
    if args.ragqa_worker:
        ragqa_worker(args.ragqa_worker, args.collection, common.SQUAD, args.questions, args.input, args.overlap_pairs)
        return 0

    res = Bench(args).run()
    table = render_table(res, args.repeat)
    notes = render_notes(res, args.repeat)
    print(table)
    print()
    print("\n".join(f"- {n}" for n in notes))
    if args.write:
        SECTION.write(render_section(res, args, argv, table, notes))
        print(f"\nupdated {common.BENCHMARKS_MD.relative_to(common.ROOT)} ({SECTION.heading[3:]} section)")
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
