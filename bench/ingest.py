"""Ingestion benchmark: ``ragqa ingest`` against the pipeline a LangChain user writes, side by side.

    .venv/bin/python bench/ingest.py [--repeat N] [--quick] [--write] [-v]

Each ingest is a whole process timed from spawn to exit (interpreter start, imports, model
loading, loading, chunking, embedding, index writing); the two pipelines run alternately in the same
run (the order flips every repeat), each repeat with a fresh ``RAGQA_HOME`` / output folder.

Pipelines
  ragqa      ``ragqa ingest PATH -c NAME --json`` (defaults: 200-token chunks, 24 overlap, flat
             index). The ragqa re-ingest is the same command again on the unchanged corpus.
             ragqa builds converted embedder artefacts (ONNX) once per ``$RAGQA_HOME/models``; that
             one-time step runs untimed before the benchmark and every fresh home links the same
             ``models`` folder (``--cold-model-cache`` times it inside every first ingest instead).
  LangChain  ``DirectoryLoader(path, glob="**/*.html", loader_cls=BSHTMLLoader)`` (SQuAD: one
             ``Document`` per paragraph, metadata title + paragraph index),
             ``RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)``,
             ``HuggingFaceEmbeddings(model_name=<bundled all-MiniLM-L6-v2 folder>)``,
             ``FAISS.from_documents(...)`` and ``save_local(...)``; it runs as
             ``bench/ingest.py --langchain-worker ingest ...``.

Corpora
  docs   The Python 3.11 HTML docs (tutorial, faq, howto, reference: 57 pages; Debian package
         python3.11-doc), copied into one temporary folder that both pipelines ingest.
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


def ragqa_worker(action: str, collection: str, squad: pathlib.Path, limit: int | None) -> None:
    """``prepare``: load the embedder (builds its cache under $RAGQA_HOME/models); ``eval``: SQuAD recall."""
    from api.settings import Settings
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
        print(json.dumps(info))
        return
    questions = _squad_questions(squad, limit)
    with ws.open(collection, readonly=True) as coll:
        retrieved = [[(h.text, h.metadata) for h in coll.search(emb.embed_query(q["question"]), K)] for q in questions]
    print(json.dumps({**info, **_score(questions, retrieved)}))


# =============================================================================================
# Driver
# =============================================================================================


@dataclass
class PipelineResult:
    ingest: common.Samples = field(default_factory=common.Samples)
    reingest: common.Samples = field(default_factory=common.Samples)
    chunks: int | None = None
    documents: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Results:
    docs: dict[str, PipelineResult] = field(
        default_factory=lambda: {"ragqa": PipelineResult(), "langchain": PipelineResult()}
    )
    squad: dict[str, PipelineResult] = field(
        default_factory=lambda: {"ragqa": PipelineResult(), "langchain": PipelineResult()}
    )
    recall: dict[str, dict[str, Any] | None] = field(default_factory=lambda: {"ragqa": None, "langchain": None})
    failures: list[str] = field(default_factory=list)
    docs_files: int = 0
    sections: tuple[str, ...] = ()
    questions: int | None = None
    prepare_seconds: float | None = None
    ragqa_backend: str | None = None
    load: list[float] = field(default_factory=list)  #: 1-minute load average at start and end


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ragqa = common.venv_bin("ragqa")
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="ragqa-bench-ingest-", dir=args.workdir))
        self.res = Results()
        self.res.sections = ("tutorial",) if args.quick else common.PY_DOCS_SECTIONS
        self.res.questions = args.questions if args.questions is not None else (QUICK_QUESTIONS if args.quick else None)
        self.models_home = self.work / "models-home"

    # -- helpers ------------------------------------------------------------------------------
    def worker(self, *argv: str, env: dict[str, str] | None = None) -> common.Timed:
        return common.run_timed(
            [sys.executable, "-m", "bench.ingest", *argv], env=env or common.offline_env(), cwd=common.ROOT
        )

    def fresh_home(self, name: str) -> pathlib.Path:
        home = self.work / name
        home.mkdir(parents=True)
        if not self.args.cold_model_cache:
            (self.models_home / "models").mkdir(parents=True, exist_ok=True)
            (home / "models").symlink_to(self.models_home / "models", target_is_directory=True)
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
        """Untimed: build ragqa's embedder cache once and warm the OS file cache for both stacks."""
        if not self.args.cold_model_cache:
            self.models_home.mkdir(parents=True, exist_ok=True)
            t = self.worker("--ragqa-worker", "prepare", env=common.offline_env(RAGQA_HOME=str(self.models_home)))
            if t.ok:
                self.res.prepare_seconds = t.seconds
                self.res.ragqa_backend = (t.last_json() or {}).get("backend")
            else:
                self.fail("ragqa embedder preparation", t)
        t = self.worker("--langchain-worker", "warmup")
        if not t.ok:
            self.fail("LangChain warm-up", t)

    # -- one pipeline run ---------------------------------------------------------------------
    def run_ragqa(self, corpus: str, source: pathlib.Path, rep: int) -> None:
        result = getattr(self.res, corpus)["ragqa"]
        home = self.fresh_home(f"ragqa-{corpus}-{rep}")
        collection = DOCS_COLLECTION if corpus == "docs" else SQUAD_COLLECTION
        cmd = [self.ragqa, "ingest", str(source), "-c", collection, "--json"]
        env = common.offline_env(RAGQA_HOME=str(home))
        runs = ["ingest", "reingest"] if corpus == "docs" else ["ingest"]
        for phase in runs:
            t = common.run_timed(cmd, env=env, cwd=common.ROOT)
            report = t.last_json()
            if report is None or (not t.ok and not report.get("failed")):
                self.fail(f"ragqa {phase} of {corpus}", t)
                return
            if report.get("failed"):
                result.notes.append(f"ragqa {phase} ({corpus}) failed files: {report['failed']}")
            getattr(result, phase).add(t.seconds)
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
        result.chunks, result.documents = report["chunks"], report["documents"]

    def evaluate(self) -> None:
        limit = [] if self.res.questions is None else ["--questions", str(self.res.questions)]
        home = self.work / "ragqa-squad-0"
        if home.exists():
            t = self.worker(
                "--ragqa-worker",
                "eval",
                "--collection",
                SQUAD_COLLECTION,
                *limit,
                env=common.offline_env(RAGQA_HOME=str(home)),
            )
            if t.ok and t.last_json():
                self.res.recall["ragqa"] = t.last_json()
                self.res.ragqa_backend = self.res.recall["ragqa"].get("backend") or self.res.ragqa_backend
            else:
                self.fail("ragqa SQuAD evaluation", t)
        out = self.work / "langchain-squad-0"
        if out.exists():
            t = self.worker("--langchain-worker", "eval", "--out", str(out), *limit)
            if t.ok and t.last_json():
                self.res.recall["langchain"] = t.last_json()
            else:
                self.fail("LangChain SQuAD evaluation", t)

    def run(self) -> Results:
        self.res.load.append(os.getloadavg()[0])
        try:
            corpus = self.build_corpus()
            if not common.SQUAD.is_file():
                raise SystemExit(f"missing {common.SQUAD}")
            self.warm_up()
            for rep in range(self.args.repeat):
                ragqa_first = rep % 2 == 0  # alternate which pipeline goes first
                for name, source in (("docs", corpus), ("squad", common.SQUAD)):
                    steps = [self.run_ragqa, self.run_langchain]
                    for step in steps if ragqa_first else steps[::-1]:
                        step(name, source, rep)
            self.evaluate()
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


def render_table(res: Results, repeat: int) -> str:
    d, s = res.docs, res.squad
    lines = [
        "| Corpus | Measure | ragqa | LangChain | ragqa / LangChain | Target | Met |",
        "|---|---|--:|--:|--:|---|---|",
    ]
    speed = _ratios(d["ragqa"].ingest, d["langchain"].ingest)
    lines.append(
        f"| Python docs ({res.docs_files} pages) | ingest wall s | "
        f"{_times(d['ragqa'].ingest)} | {_times(d['langchain'].ingest)} | "
        f"{_ratio_cell(speed, repeat)} | ragqa <= 1/3 LangChain | "
        f"{_met(None if speed[1] is None else speed[1] <= TARGET_SPEED)} |"
    )
    lines.append(f"| Python docs | chunks | {d['ragqa'].chunks or 'n/a'} | {d['langchain'].chunks or 'n/a'} | | | |")
    re_ratio = _ratios(d["ragqa"].reingest, d["ragqa"].ingest)
    lines.append(
        f"| Python docs | re-ingest unchanged, wall s (re / first) | "
        f"{_times(d['ragqa'].reingest)} | (no incremental mode) | "
        f"{_ratio_cell(re_ratio, repeat)} (re / first) | re <= 5 % of first | "
        f"{_met(None if re_ratio[1] is None else re_ratio[1] <= TARGET_REINGEST)} |"
    )
    sq = _ratios(s["ragqa"].ingest, s["langchain"].ingest)
    lines.append(
        f"| SQuAD ({s['ragqa'].documents or s['langchain'].documents or '?'} paragraphs) | "
        f"ingest wall s | {_times(s['ragqa'].ingest)} | "
        f"{_times(s['langchain'].ingest)} | {_ratio_cell(sq, repeat)} | | |"
    )
    lines.append(f"| SQuAD | chunks | {s['ragqa'].chunks or 'n/a'} | {s['langchain'].chunks or 'n/a'} | | | |")
    rr, lr = res.recall["ragqa"] or {}, res.recall["langchain"] or {}
    n = rr.get("questions") or lr.get("questions") or "?"
    for key, label in (
        ("answer@1", "recall@1, answer string in chunk"),
        (f"answer@{K}", f"recall@{K}, answer string in chunk"),
        ("paragraph@1", "recall@1, gold paragraph's chunk"),
        (f"paragraph@{K}", f"recall@{K}, gold paragraph's chunk"),
    ):
        a, b = rr.get(key), lr.get(key)
        target, met = "", ""
        if key.endswith(f"@{K}"):
            target = "ragqa >= LangChain"
            met = _met(None if a is None or b is None else a >= b - 1e-12)
        lines.append(f"| SQuAD ({n} questions) | {label} | {_pct(a)} | {_pct(b)} | | {target} | {met} |")
    return "\n".join(lines)


def render_notes(res: Results, repeat: int, cold: bool = False) -> list[str]:
    notes = [
        "Wall seconds are whole processes (spawn to exit), "
        f"{'min / median of ' + str(repeat) + ' runs' if repeat > 1 else 'one run'}; "
        "ratios are of the mins / medians; targets are checked on the medians.",
        f"ragqa embedder backend: {res.ragqa_backend or 'unknown'}; its one-time embedder preparation "
        + (
            f"took {res.prepare_seconds:.1f} s (untimed, its models folder shared by all fresh homes)."
            if res.prepare_seconds is not None
            else "is timed inside every first ingest (--cold-model-cache)."
            if cold
            else "FAILED (see below), so the first timed ragqa ingest built it."
        ),
        "Chunking differs by design: ragqa 200 tokens / 24 overlap; LangChain 1000 characters / 200 overlap.",
    ]
    if res.load:
        notes.append(
            f"1-minute load average at start / end of the run: {' / '.join(f'{v:.1f}' for v in res.load)} "
            "(other work on the machine inflates every time)."
        )
    for corpus in ("docs", "squad"):
        for pipeline, r in getattr(res, corpus).items():
            notes += [f"{pipeline} {corpus}: {n}" for n in r.notes]
    notes += [f"FAILED {f}" for f in res.failures]
    return notes


def render_section(res: Results, args: argparse.Namespace, argv: list[str], table: str, notes: list[str]) -> str:
    versions = common.package_versions()
    cmd = common.command_line(pathlib.Path(__file__), [a for a in argv if a not in ("-v", "--verbose", "--keep")])
    corpus = f"{res.docs_files} pages of the Python 3.11 HTML docs ({', '.join(res.sections)})"
    lines = [
        f"`ragqa ingest` against a LangChain pipeline (DirectoryLoader + BSHTMLLoader, RecursiveCharacterTextSplitter "
        f"1000/200, HuggingFaceEmbeddings all-MiniLM-L6-v2, FAISS.from_documents + save_local); corpora: {corpus} and "
        f"data/benchmarks/squad2_dev_public.json{' (quick mode)' if args.quick else ''}.",
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
        "--cold-model-cache",
        action="store_true",
        help="no untimed ragqa embedder preparation: each fresh home builds its own",
    )
    p.add_argument("--workdir", type=pathlib.Path, default=None, help="parent of the temporary work folder")
    p.add_argument("--keep", action="store_true", help="keep the work folder (corpus, homes, stores)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    # worker entries (run by the driver as child processes)
    p.add_argument("--langchain-worker", choices=("ingest", "eval", "warmup"), help=argparse.SUPPRESS)
    p.add_argument("--ragqa-worker", choices=("prepare", "eval"), help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("html", "squad"), help=argparse.SUPPRESS)
    p.add_argument("--input", type=pathlib.Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=pathlib.Path, help=argparse.SUPPRESS)
    p.add_argument("--collection", default=SQUAD_COLLECTION, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
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
        ragqa_worker(args.ragqa_worker, args.collection, common.SQUAD, args.questions)
        return 0

    res = Bench(args).run()
    table = render_table(res, args.repeat)
    notes = render_notes(res, args.repeat, args.cold_model_cache)
    print(table)
    print()
    print("\n".join(f"- {n}" for n in notes))
    if args.write:
        SECTION.write(render_section(res, args, argv, table, notes))
        print(f"\nupdated {common.BENCHMARKS_MD.relative_to(common.ROOT)} ({SECTION.heading[3:]} section)")
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
