"""Long-form question answering on the Python documentation FAQ: ragqa against the LangChain stuff chain
(max_new_tokens 256), side by side in one process with the same models.

    .venv/bin/python -m bench.longform [--limit 40] [--corpus tutorial,faq,howto,reference,library]
                                       [--mode rag-token] [--style full] [--home DIR] [--write]

Data: Debian's ``python3.11-doc`` HTML (``/usr/share/doc/python3.11/html``). Every entry of ``faq/*.html``
is a question (a section heading that asks something, e.g. an ``h3``) and its answer (the section's own
body, without nested sections); entries whose answer has fewer than ``--min-words`` words are dropped,
and ``--limit`` of them are drawn with ``random.Random(--seed)``.

Systems (models loaded once before timing; every question runs through both, the order alternating
per question):

  ragqa      ``QAPipeline.answer(..., mode=--mode, style=--style)`` (``style`` only where the pipeline
             takes it) with the pipeline's default abstention, over a collection ingested by
             ``Workspace.ingest`` from the ``--corpus`` sections with ragqa's defaults (k=4).
  LangChain  ``DirectoryLoader(section, glob="**/*.html", loader_cls=BSHTMLLoader)`` over the same
             sections, ``RecursiveCharacterTextSplitter(1000, 200)``, ``HuggingFaceEmbeddings`` (the
             bundled all-MiniLM-L6-v2), FAISS, ``as_retriever(k=4)`` and the stuff chain of bench/qa.py
             (:class:`bench.common.LangChainStuffQA`, greedy, ``--lc-max-new-tokens`` 256).

Both collections are kept under ``--home`` (default ``~/.cache/ragqa-bench/longform``): ragqa's ingest is
incremental (unchanged files are skipped), LangChain's chunks and vectors are cached as JSON + ``.npy``
keyed by the files, so reruns skip the embedding. The first run reports how long each ingest took.

Metrics (pure functions below, tested in tests/bench/test_longform.py), per system:
  ROUGE-L F1          longest common subsequence of lower-cased word tokens, answer vs the FAQ answer
                      (markers removed; an abstention is scored as its text);
  embedding cosine    bundled MiniLM embedding of the answer vs the FAQ answer's;
  citation precision  share of the cited chunks (ragqa: the sentences' citations; LangChain: the
                      documents it was given) that come from the entry's own FAQ page;
  supported sentences share of answer sentences whose content words are >= 70% found in the chunks they
                      cite (LangChain: in the chunks it was given);
  abstention rate, p50/p95 latency (wall seconds of the call).

``--write`` replaces the "Long-form answers (Python FAQ)" section of BENCHMARKS.md (between
``<!-- longform:start -->`` and ``<!-- longform:end -->``).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import pathlib
import random
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import common

common.stay_offline()

logger = logging.getLogger("bench.longform")

SECTION = common.Section("longform", "## Long-form answers (Python FAQ)")
ALL_SECTIONS = ("tutorial", "faq", "howto", "reference", "library")
DEFAULT_HOME = pathlib.Path("~/.cache/ragqa-bench/longform")
K = 4
LC = "langchain"
RAGQA = "ragqa"
SUPPORT_THRESHOLD = 0.7
# The issue's targets.
TARGET_ROUGE_RATIO = 1.3
TARGET_SUPPORTED = 0.9
TARGET_P50_RATIO = 0.5


# =============================================================================================
# Metrics (pure)
# =============================================================================================

_WORD = re.compile(r"[a-z0-9_]+")
_MARKER = re.compile(r"\s*\[\d+\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'`(\[])|\n\s*\n|\n(?=\s*(?:[-*]|\d+[.)])\s)")

#: Function words left out of the supported-sentence check (the claim is in the other words).
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each either else few for from further had has
    have having he her here hers him his how i if in into is it its itself just may me might more most must my
    no nor not now of off on once only or other our ours out over own same shall she should so some such than
    that the their theirs them then there these they this those through to too under until up upon us very
    was we were what when where which while who whom why will with would yes yet you your yours""".split()
)


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore) of ``text``."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (O(len(a) * len(b)) time, one row)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> tuple[float, float, float]:
    """ROUGE-L (precision, recall, F1) of ``prediction`` against ``reference`` on lower-cased word tokens
    (F1 = 2PR / (P + R), i.e. beta = 1); zeros when either side has no words."""
    p_tok, r_tok = word_tokens(prediction), word_tokens(reference)
    if not p_tok or not r_tok:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(p_tok, r_tok)
    if lcs == 0:
        return 0.0, 0.0, 0.0
    precision, recall = lcs / len(p_tok), lcs / len(r_tok)
    return precision, recall, 2 * precision * recall / (precision + recall)


def strip_markers(text: str) -> str:
    """``text`` without inline citation markers such as ``[1]`` or ``[2][3]``."""
    return _MARKER.sub("", text).strip()


def split_sentences(text: str) -> list[str]:
    """Sentences of a plain answer: split after ``.``/``!``/``?`` + space before a capital, digit, quote or
    bracket (not inside "e.g. this"), at blank lines and before list items."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def content_words(text: str) -> list[str]:
    """The word tokens of ``text`` that carry content: not a stop word, not a lone character."""
    return [w for w in word_tokens(text) if w not in STOPWORDS and len(w) > 1]


def support_share(sentence: str, evidence: Iterable[str]) -> float | None:
    """Share of ``sentence``'s content words found among the words of the ``evidence`` texts
    (None when the sentence has no content words)."""
    words = content_words(sentence)
    if not words:
        return None
    found = set()
    for text in evidence:
        found.update(word_tokens(text))
    return sum(w in found for w in words) / len(words)


def supported_sentence_rate(
    sentences: Sequence[tuple[str, Sequence[str]]], threshold: float = SUPPORT_THRESHOLD
) -> float | None:
    """Share of ``(sentence, the texts it cites)`` pairs whose content words are >= ``threshold`` found in
    those texts. A sentence that cites nothing is unsupported; one without content words is left out.
    None when no sentence counts."""
    verdicts = []
    for sentence, evidence in sentences:
        share = support_share(sentence, evidence)
        if share is not None:
            verdicts.append(share >= threshold)
    return sum(verdicts) / len(verdicts) if verdicts else None


def page_of(source: str) -> str:
    """``section/page.html`` of a documentation file path (its last two parts)."""
    parts = pathlib.PurePath(source).parts
    return "/".join(parts[-2:])


def citation_precision(cited_sources: Sequence[str], page: str) -> float | None:
    """Share of cited chunks whose source file is ``page`` (``faq/x.html``); None when nothing is cited."""
    if not cited_sources:
        return None
    return sum(page_of(s) == page for s in cited_sources) / len(cited_sources)


# =============================================================================================
# The FAQ
# =============================================================================================

_QUESTION_START = re.compile(
    r"^(how|why|what|which|who|whom|whose|when|where|is|are|can|could|do|does|did|should|will|would|was|were|"
    r"has|have|may|must|i)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class FaqEntry:
    page: str  #: ``faq/programming.html``
    anchor: str  #: the section's id
    question: str
    answer: str

    @property
    def words(self) -> int:
        return len(self.answer.split())


def is_question(heading: str) -> bool:
    """Whether a heading asks something: it ends with ``?`` or starts with a question word."""
    h = heading.strip()
    return h.endswith("?") or bool(_QUESTION_START.match(h))


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\u00b6", " ")).strip()


def parse_faq_html(html: str, page: str, min_words: int = 0) -> list[FaqEntry]:
    """The FAQ entries of one Sphinx page: each ``<section>`` whose heading (h2-h6) is a question, with its
    own body as the answer (the heading and nested sections left out), kept if it has >= ``min_words``."""
    from bs4 import BeautifulSoup, Tag

    soup = BeautifulSoup(html, "lxml")
    main = soup.select_one('[role="main"]') or soup.body or soup
    out = []
    for section in main.find_all("section"):
        heading = section.find(re.compile(r"^h[2-6]$"), recursive=False)
        if heading is None:
            continue
        for link in heading.select("a.headerlink"):
            link.decompose()
        question = _clean(heading.get_text(" "))
        if not is_question(question):
            continue
        parts = [
            _clean(child.get_text(" ")) if isinstance(child, Tag) else _clean(str(child))
            for child in section.children
            if child is not heading and not (isinstance(child, Tag) and child.name == "section")
        ]
        answer = " ".join(p for p in parts if p)
        entry = FaqEntry(page=page, anchor=str(section.get("id", "")), question=question, answer=answer)
        if answer and entry.words >= min_words:
            out.append(entry)
    return out


def load_faq(docs_root: pathlib.Path, min_words: int) -> list[FaqEntry]:
    """Every FAQ entry of ``docs_root/faq/*.html`` with an answer of >= ``min_words`` words."""
    pages = sorted((docs_root / "faq").glob("*.html"))
    if not pages:
        raise SystemExit(f"no FAQ pages under {docs_root / 'faq'}: install them with `apt-get install python3.11-doc`")
    out = []
    for path in pages:
        out += parse_faq_html(path.read_text(encoding="utf-8"), f"faq/{path.name}", min_words)
    return out


# =============================================================================================
# The two systems
# =============================================================================================


@dataclass
class SystemAnswer:
    """One system's answer, reduced to what the metrics read."""

    text: str  #: as shown to the user (ragqa: with its markers)
    abstained: bool
    sentences: list[tuple[str, list[str]]]  #: (sentence without markers, texts of the chunks it cites)
    cited_sources: list[str]  #: source path of each cited chunk (each chunk once)
    latency_s: float
    timings: dict[str, float] = field(default_factory=dict)  #: the system's own split (ragqa: retrieve/generate)
    fallback: str | None = None  #: ragqa full style: "extractive" / "abstain" when the guard left no sentence
    left_out: int = 0  #: ragqa full style: generated sentences the sentence-support guard left out
    quoted_words: int = 0  #: ragqa full style: words of the sentences quoted from the chunks (not generated)


class RagqaSystem:
    def __init__(self, qa: Any, coll: Any, mode: str, style: str | None) -> None:
        self.qa, self.coll, self.mode = qa, coll, mode
        self.kwargs: dict[str, Any] = {"mode": mode}
        self.style_supported = "style" in inspect.signature(qa.answer).parameters
        if style and self.style_supported:
            self.kwargs["style"] = style
        elif style:
            logger.warning("this QAPipeline.answer takes no style: answering in its only style")

    def answer(self, question: str) -> SystemAnswer:
        t0 = time.perf_counter()
        ans = self.qa.answer(self.coll, question, **self.kwargs)
        latency = time.perf_counter() - t0
        return ragqa_answer(ans, latency)


def ragqa_answer(ans: Any, latency_s: float) -> SystemAnswer:
    """A ``rag.qa.Answer`` as a :class:`SystemAnswer`: its ``sentences`` (full style) with their citations,
    or, for a pipeline without them, one sentence (the whole answer) citing every chunk that contributed."""
    by_index = {c.index: c for c in ans.citations}
    sentences: list[tuple[str, list[str]]] = []
    cited: dict[int, str] = {}
    fallback, left_out = getattr(ans, "fallback", None), getattr(ans, "sentences_left_out", 0)
    if ans.abstained:
        return SystemAnswer(ans.answer, True, [], [], latency_s, dict(ans.timings), fallback, left_out)
    structured = getattr(ans, "sentences", None)
    quoted = sum(len(s.text.split()) for s in structured or [] if getattr(s, "quoted", False))
    if structured is not None:
        for s in structured:
            cites = [by_index[i] for i in s.citations if i in by_index]
            sentences.append((s.text, [c.text for c in cites]))
            cited.update((c.index, c.source) for c in cites)
    else:
        cites = [c for c in ans.citations if c.contribution > 0]
        sentences.append((strip_markers(ans.answer), [c.text for c in cites]))
        cited.update((c.index, c.source) for c in cites)
    return SystemAnswer(
        ans.answer, False, sentences, list(cited.values()), latency_s, dict(ans.timings), fallback, left_out, quoted
    )


class LangChainSystem:
    def __init__(self, lc: common.LangChainStuffQA) -> None:
        self.lc = lc

    def answer(self, question: str) -> SystemAnswer:
        from rag.prompts import is_abstention

        out = self.lc.answer(question)
        texts = [d.page_content for d in out["documents"]]
        abstained = is_abstention(out["answer"])
        sentences = [] if abstained else [(s, texts) for s in split_sentences(out["answer"])]
        sources = [str(d.metadata.get("source", "")) for d in out["documents"]]
        return SystemAnswer(
            out["answer"], abstained, sentences, sources, out["latency_s"], {"generate_s": out["generate_s"]}
        )


def replaying_strategy(inner: Any) -> Any:
    """A :class:`rag.strategies.AnswerStrategy` that generates through ``inner`` once per prompt and replays
    that reply afterwards (greedy decoding gives the same tokens again), so the settings applied after
    generation (the sentence-support guard, its fallback, citations) are compared on identical replies
    without generating again (``--sweep``)."""
    from rag.strategies import AnswerStrategy

    class ReplayStrategy(AnswerStrategy):
        def __init__(self) -> None:
            self.replies: dict[tuple[Any, ...], Any] = {}

        def select_documents(self, doc_logprobs: Any, config: Any) -> Any:
            return inner.select_documents(doc_logprobs, config)

        def generate(self, decoder: Any, generator: Any, config: Any, request: Any) -> Any:
            key = (request.question, tuple(request.contexts), request.style, request.max_new_tokens)
            if key not in self.replies:
                self.replies[key] = inner.generate(decoder, generator, config, request)
            return self.replies[key]

        def sentence_posteriors(self, *args: Any, **kwargs: Any) -> Any:
            return inner.sentence_posteriors(*args, **kwargs)

    replay = ReplayStrategy()
    replay.mode = inner.mode  # type: ignore[misc]
    return replay


def parse_sweep(settings: Sequence[str], base: Any) -> list[tuple[str, Any]]:
    """``--sweep`` settings (``key=value[,key=value]``, ``QAConfig`` fields) as (label, validated QAConfig)."""
    from pydantic import ValidationError

    out = []
    for setting in settings:
        updates = {}
        for part in setting.split(","):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in type(base).model_fields:
                raise SystemExit(
                    f"--sweep {setting!r}: use key=value pairs of QAConfig fields, e.g. full_min_support=0.7"
                )
            updates[key.strip()] = value.strip()
        try:
            out.append((setting, type(base).model_validate({**base.model_dump(), **updates})))
        except ValidationError as e:
            raise SystemExit(f"--sweep {setting!r}: {e}") from None
    return out


# =============================================================================================
# Collections (cached under --home)
# =============================================================================================


def section_dirs(sections: Sequence[str]) -> list[pathlib.Path]:
    dirs = [common.PY_DOCS / s for s in sections]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: install the docs with `apt-get install python3.11-doc`")
    return dirs


def prepare_home(home: pathlib.Path) -> None:
    """Create ``home``; reuse the converted models of the default workspace (``$RAGQA_HOME`` or
    ``~/.ragqa``) through a symlink, as bench/ingest.py does, instead of converting them again."""
    home.mkdir(parents=True, exist_ok=True)
    models = home / "models"
    shared = pathlib.Path(os.environ.get("RAGQA_HOME", "~/.ragqa")).expanduser() / "models"
    if not models.exists() and shared.is_dir() and shared.resolve() != models.resolve():
        models.symlink_to(shared, target_is_directory=True)


def open_ragqa(home: pathlib.Path, sections: Sequence[str]) -> tuple[Any, Any, str, dict[str, Any]]:
    """ragqa's stack (models loaded) and the collection of ``sections``, ingested (incrementally) and calibrated
    (when stale) now, as ``ragqa ingest`` leaves it: (stack, open read-only collection, name, ingest summary with its
    wall seconds)."""
    from api.factory import RagStack
    from api.settings import Settings

    stack = RagStack(Settings(home=home))
    name = "pydocs-" + "-".join(sections)
    t0 = time.perf_counter()
    report = stack.workspace.ingest(section_dirs(sections), name)
    seconds = time.perf_counter() - t0
    from rag.calibration import recalibrate

    recalibrate(stack.workspace, name)  # as `ragqa ingest` does: the collection's own "I don't know" threshold
    summary = {
        "seconds": seconds,
        "files_ingested": len(report.added) + len(report.replaced),
        "files_unchanged": len(report.unchanged),
        "failed": [str(f) for f in report.failed],
        "chunks_embedded": report.chunks_embedded,
    }
    logger.info("ragqa ingest of %s: %.1f s %s", name, seconds, summary)
    stack.warm_up()
    coll = stack.workspace.open(name, readonly=True)
    summary["chunks"] = coll.info()["chunks"]
    return stack, coll, name, summary


def _files_key(dirs: Sequence[pathlib.Path]) -> str:
    h = hashlib.sha256()
    h.update(f"{common.LC_CHUNK_SIZE}/{common.LC_CHUNK_OVERLAP}/{common.bundled_model_dir()}".encode())
    for d in dirs:
        for p in sorted(d.rglob("*.html")):
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def langchain_store(home: pathlib.Path, sections: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """LangChain's FAISS store over ``sections`` (what a user writes: DirectoryLoader + BSHTMLLoader, split,
    embed), the chunks and vectors cached under ``home/langchain/<key of the files>``; (store, summary)."""
    import numpy as np
    from langchain_community.vectorstores import FAISS

    dirs = section_dirs(sections)
    cache = home / "langchain" / f"{'-'.join(sections)}-{_files_key(dirs)}"
    embeddings = common.langchain_embeddings()
    if (cache / "vectors.npy").is_file() and (cache / "chunks.json").is_file():
        chunks = json.loads((cache / "chunks.json").read_text(encoding="utf-8"))
        vectors = np.load(cache / "vectors.npy")
        summary: dict[str, Any] = {"seconds": None, "cached": str(cache), "chunks": len(chunks)}
    else:
        from langchain_community.document_loaders import BSHTMLLoader, DirectoryLoader
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        t0 = time.perf_counter()
        docs = []
        for d in dirs:
            loader = DirectoryLoader(
                str(d), glob="**/*.html", loader_cls=BSHTMLLoader, loader_kwargs={"open_encoding": "utf-8"}
            )
            docs += loader.load()
        split = RecursiveCharacterTextSplitter(
            chunk_size=common.LC_CHUNK_SIZE, chunk_overlap=common.LC_CHUNK_OVERLAP
        ).split_documents(docs)
        chunks = [{"text": c.page_content, "metadata": c.metadata} for c in split]
        vectors = np.asarray(embeddings.embed_documents([c["text"] for c in chunks]), dtype=np.float32)
        summary = {"seconds": time.perf_counter() - t0, "cached": None, "chunks": len(chunks)}
        cache.mkdir(parents=True, exist_ok=True)
        _write_atomic(cache / "chunks.json", json.dumps(chunks).encode())
        tmp = cache / ".vectors.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, vectors)
        os.replace(tmp, cache / "vectors.npy")
        logger.info("LangChain ingest of %s: %.1f s, %d chunks", sections, summary["seconds"], len(chunks))
    store = FAISS.from_embeddings(
        [(c["text"], v.tolist()) for c, v in zip(chunks, vectors)],
        embeddings,
        metadatas=[c["metadata"] for c in chunks],
    )
    return store, summary


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# =============================================================================================
# Driver
# =============================================================================================


@dataclass
class Row:
    entry: FaqEntry
    answer: SystemAnswer
    rouge_l: float
    cosine: float
    citation_precision: float | None
    supported: float | None


@dataclass
class SystemResult:
    rows: list[Row] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        import numpy as np

        rows = self.rows
        n = max(len(rows), 1)

        def mean(values: list[float | None]) -> float | None:
            vs = [v for v in values if v is not None]
            return sum(vs) / len(vs) if vs else None

        lat = np.array([r.answer.latency_s for r in rows] or [0.0])
        supported = [(s, ev) for r in rows for s, ev in r.answer.sentences]
        return {
            "n": len(rows),
            "rouge_l": sum(r.rouge_l for r in rows) / n,
            "cosine": sum(r.cosine for r in rows) / n,
            "citation_precision": mean([r.citation_precision for r in rows]),
            "supported_rate": supported_sentence_rate(supported),
            "supported_rate_per_answer": mean([r.supported for r in rows]),
            "sentences": len(supported),
            "abstention_rate": sum(r.answer.abstained for r in rows) / n,
            "p50_s": float(np.percentile(lat, 50)),
            "p95_s": float(np.percentile(lat, 95)),
            "words_per_answer": sum(len(strip_markers(r.answer.text).split()) for r in rows) / n,
            "quoted_word_share": sum(r.answer.quoted_words for r in rows)
            / max(sum(len(strip_markers(r.answer.text).split()) for r in rows if not r.answer.abstained), 1),
            "fallback_extractive": sum(r.answer.fallback == "extractive" for r in rows),
            "fallback_abstain": sum(r.answer.fallback == "abstain" for r in rows),
            "sentences_left_out": sum(r.answer.left_out for r in rows),
        }


def score(entry: FaqEntry, ans: SystemAnswer, embed: Any) -> Row:
    """The metrics of one answer against ``entry`` (``embed``: texts -> L2-normalised vectors)."""
    text = strip_markers(ans.text)
    vecs = embed([text or " ", entry.answer])
    return Row(
        entry=entry,
        answer=ans,
        rouge_l=rouge_l(text, entry.answer)[2],
        cosine=float(vecs[0] @ vecs[1]),
        citation_precision=citation_precision(ans.cited_sources, entry.page),
        supported=supported_sentence_rate(ans.sentences),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rag.models import locate_generator

    entries = load_faq(common.PY_DOCS, args.min_words)
    sample = random.Random(args.seed).sample(entries, min(args.limit, len(entries)))
    logger.info("%d FAQ entries with >= %d words; %d sampled", len(entries), args.min_words, len(sample))
    home = pathlib.Path(args.home).expanduser()
    prepare_home(home)
    stack, coll, name, ragqa_ingest = open_ragqa(home, args.corpus)
    systems: dict[str, Any] = {RAGQA: RagqaSystem(stack.qa, coll, args.mode, args.style)}
    lc_ingest = None
    if not args.no_langchain:
        store, lc_ingest = langchain_store(home, args.corpus)
        gen_dir = locate_generator(stack.settings.generator, stack.settings.models_dir).path
        systems = {LC: LangChainSystem(common.LangChainStuffQA(store, gen_dir, args.lc_max_new_tokens, k=K)), **systems}
    stack.qa.retriever.warm_up(coll)
    embedder = stack.workspace.embedder
    for s in systems.values():  # untimed warm-up
        s.answer(sample[0].question)
    from rag.strategies import STRATEGIES

    sweep = parse_sweep(args.sweep, stack.qa.config)
    inner, base = STRATEGIES[args.mode], stack.qa.config
    if sweep:  # after the warm-up, so that the timed pass generates every answer
        STRATEGIES[args.mode] = replaying_strategy(inner)
    results = {s: SystemResult() for s in systems}
    swept = {label: SystemResult() for label, _ in sweep}
    order = list(systems)
    cfg = stack.settings.qa
    head = {
        "n_entries": len(entries),
        "seed": args.seed,
        "min_words": args.min_words,
        "corpus": list(args.corpus),
        "collection": name,
        "mode": args.mode,
        "style": args.style if systems[RAGQA].style_supported else None,
        "ingest": {RAGQA: ragqa_ingest, LC: lc_ingest},
        "config": cfg.model_dump(),
        "retriever": stack.settings.retriever.model_dump(exclude={"bm25"}),
    }
    t_start = time.perf_counter()
    try:
        for i, entry in enumerate(sample):
            for s in order[i % len(order) :] + order[: i % len(order)]:
                ans = systems[s].answer(entry.question)
                results[s].rows.append(score(entry, ans, embedder.embed_documents))
            for label, cfg_v in sweep:  # the same reply, replayed, under each other setting
                stack.qa.config = cfg_v
                swept[label].rows.append(score(entry, systems[RAGQA].answer(entry.question), embedder.embed_documents))
            stack.qa.config = base
            logger.info("%d/%d questions (%.0f s)", i + 1, len(sample), time.perf_counter() - t_start)
            common.save_json(args.json, _results(head, i + 1, results, swept))  # so far: a stopped run keeps them
    finally:
        STRATEGIES[args.mode], stack.qa.config = inner, base
    coll.close()
    return _results(head, len(sample), results, swept)


def _results(
    head: dict[str, Any], n: int, results: dict[str, SystemResult], swept: dict[str, SystemResult]
) -> dict[str, Any]:
    return {
        **head,
        "n": n,
        "systems": {s: r.summary() for s, r in results.items()},
        "sweep": {label: r.summary() for label, r in swept.items()},
        "answers": {s: [_row_dict(r) for r in res.rows] for s, res in results.items()},
        "sweep_answers": {label: [_row_dict(r) for r in res.rows] for label, res in swept.items()},
    }


def _row_dict(r: Row) -> dict[str, Any]:
    d = asdict(r)
    d["answer"].pop("sentences")
    return d


# =============================================================================================
# Report
# =============================================================================================


def _f(v: float | None, spec: str = ".3f") -> str:
    return common.fmt(v, spec)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _short(text: str, limit: int = 700) -> str:
    t = " ".join(text.split())
    return t if len(t) <= limit else t[:limit] + "…"


def render(res: dict[str, Any], args: argparse.Namespace, argv: list[str]) -> str:
    sysres = res["systems"]
    lines = [f"Command: `{common.command_line(pathlib.Path(__file__), argv)}`  "]
    lines.append(f"Date: {common.today()} · revision {common.git_revision()}  ")
    lines.append(
        f"Machine: {common.machine_summary()} (shared with other jobs: compare the ratios, measured in the same "
        "run with the order of the systems alternating per question)  "
    )
    vers = common.package_versions()
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v != "not installed"))
    lines.append("")
    lines.append(
        f"Data: {res['n']} of the {res['n_entries']} Python 3.11 FAQ entries (`faq/*.html`, heading a question, "
        f"answer >= {res['min_words']} words), `random.Random({res['seed']}).sample`. Collection: the "
        f"{', '.join(res['corpus'])} pages of /usr/share/doc/python3.11/html (Debian python3.11-doc). "
        f"ragqa: mode {res['mode']}, style {res['style'] or 'the pipeline default (no style argument)'}, "
        f"retriever {res['retriever']['mode']} k={K}, default abstention; LangChain: stuff chain, k={K}, greedy, "
        f"max_new_tokens={args.lc_max_new_tokens}."
    )
    lines.append("")
    lines += _render_ingest(res)
    lines.append(
        "| system | ROUGE-L F1 | embedding cosine | citation precision | supported-sentence rate (sentences) | "
        "abstention rate | p50 latency (s) | p95 latency (s) | words/answer | quoted words |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for s in (LC, RAGQA):
        if s not in sysres:
            continue
        r = sysres[s]
        name = f"LangChain stuff chain (max_new_tokens={args.lc_max_new_tokens})" if s == LC else f"ragqa {res['mode']}"
        lines.append(
            f"| {name} | {_f(r['rouge_l'])} | {_f(r['cosine'])} | {_f(r['citation_precision'])} | "
            f"{_f(r['supported_rate'])} ({r['sentences']}) | {_f(r['abstention_rate'])} | {_f(r['p50_s'], '.2f')} | "
            f"{_f(r['p95_s'], '.2f')} | {_f(r['words_per_answer'], '.1f')} | "
            f"{_f(r.get('quoted_word_share', 0.0), '.2f') if s == RAGQA else '-'} |"
        )
    lines.append("")
    lines.append(
        "ROUGE-L: F1 of the longest common subsequence of lower-cased word tokens vs the FAQ answer (markers "
        "removed). Cosine: bundled all-MiniLM-L6-v2 (inputs cut at 256 tokens). Citation precision: share of "
        "the cited chunks (LangChain: the 4 it was given) from the entry's own FAQ page, mean over answers "
        "that cite. Supported: answer sentences whose content words are >= 70% found in the chunks they cite "
        "(LangChain: the chunks it was given); ragqa without sentence attribution counts its whole answer as one "
        "sentence citing every chunk that contributed. Quoted words: share of the words of ragqa's answers "
        "(abstentions aside) in sentences quoted as written from the chunks (`qa.full_quote_min_words`, the fallback "
        "quote), not generated."
    )
    lines.append("")
    if res.get("sweep"):
        lines += _render_sweep(res, sysres[RAGQA])
    if LC in sysres and RAGQA in sysres:
        lines += _render_targets(sysres)
    lines += _render_samples(res)
    return "\n".join(lines)


def _render_sweep(res: dict[str, Any], timed: dict[str, Any]) -> list[str]:
    cfg = res["config"]
    lines = [
        "The same generated replies under other settings (`--sweep`; the first row is the timed pass, "
        f"full_min_support={cfg['full_min_support']}, full_fallback_min_overlap={cfg['full_fallback_min_overlap']}, "
        f"citation_by_overlap={cfg['citation_by_overlap']}, "
        f"full_quote_min_words={cfg.get('full_quote_min_words', 0)}):",
        "",
        "| setting | ROUGE-L F1 | embedding cosine | citation precision | supported-sentence rate (sentences) | "
        "words/answer | quoted words | sentences left out | quoted / I don't know (fallback) | abstention rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in [("(timed pass)", timed), *res["sweep"].items()]:
        lines.append(
            f"| {label} | {_f(r['rouge_l'])} | {_f(r['cosine'])} | {_f(r['citation_precision'])} | "
            f"{_f(r['supported_rate'])} ({r['sentences']}) | {_f(r['words_per_answer'], '.1f')} | "
            f"{_f(r.get('quoted_word_share', 0.0), '.2f')} | {r.get('sentences_left_out', 0)} | "
            f"{r.get('fallback_extractive', 0)} / {r.get('fallback_abstain', 0)} | "
            f"{_f(r['abstention_rate'])} |"
        )
    lines.append("")
    return lines


def _render_ingest(res: dict[str, Any]) -> list[str]:
    ing = res["ingest"]
    r = ing[RAGQA]
    parts = [
        f"ragqa ingest in this run {r['seconds']:.1f} s ({r['files_ingested']} files ingested, "
        f"{r['files_unchanged']} unchanged, {r['chunks_embedded']} chunks embedded; {r['chunks']} chunks in all)"
    ]
    lc = ing.get(LC)
    if lc:
        parts.append(
            f"LangChain {lc['chunks']} chunks, "
            + ("loaded from its cache" if lc["seconds"] is None else f"built in {lc['seconds']:.1f} s")
        )
    return ["Collections: " + "; ".join(parts) + ".", ""]


def _render_targets(sysres: dict[str, Any]) -> list[str]:
    lc, rq = sysres[LC], sysres[RAGQA]
    rr = common.ratio(rq["rouge_l"], lc["rouge_l"])
    pr = common.ratio(rq["p50_s"], lc["p50_s"])
    sup = rq["supported_rate"]
    return [
        "| target | value | |",
        "|---|---|---|",
        f"| ROUGE-L >= 1.3x LangChain's | {_f(rq['rouge_l'])} vs {_f(lc['rouge_l'])} = {_f(rr, '.2f')}x | "
        f"{_met(rr is not None and rr >= TARGET_ROUGE_RATIO)} |",
        f"| supported-sentence rate >= 0.9 | {_f(sup)} | {_met(sup is not None and sup >= TARGET_SUPPORTED)} |",
        f"| p50 latency <= 0.5x LangChain's | {_f(rq['p50_s'], '.2f')} s vs {_f(lc['p50_s'], '.2f')} s = "
        f"{_f(pr, '.2f')}x | {_met(pr is not None and pr <= TARGET_P50_RATIO)} |",
        "",
    ]


def _render_samples(res: dict[str, Any], n: int = 3) -> list[str]:
    answers = res["answers"]
    lines = ["Sample answers (the first questions of the sample):", ""]
    for i in range(min(n, res["n"])):
        entry = answers[RAGQA][i]["entry"]
        lines.append(f"- **{entry['question']}** ({entry['page']}#{entry['anchor']})")
        lines.append(f"  - ragqa: {_short(answers[RAGQA][i]['answer']['text'])}")
        if LC in answers:
            lines.append(f"  - LangChain: {_short(answers[LC][i]['answer']['text'])}")
    lines.append("")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=40, help="FAQ questions to ask (sampled with --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-words", type=int, default=30, help="keep FAQ entries whose answer has >= this many words")
    p.add_argument(
        "--corpus", default=",".join(ALL_SECTIONS), help=f"doc sections to ingest, from {', '.join(ALL_SECTIONS)}"
    )
    p.add_argument("--mode", default="rag-token", help="ragqa mode")
    p.add_argument("--style", default="full", help="ragqa answer style (where the pipeline takes one)")
    p.add_argument("--lc-max-new-tokens", type=int, default=256)
    p.add_argument("--home", default=str(DEFAULT_HOME), help="workspace kept between runs (collections, caches)")
    p.add_argument("--no-langchain", action="store_true", help="ragqa only")
    p.add_argument(
        "--sweep",
        nargs="*",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="after the timed pass, answer again under each of these QAConfig settings (e.g. full_min_support=0.7), "
        "replaying the timed pass's generated replies: compares the guard / fallback / citation settings on "
        "identical replies (their latencies are not reported)",
    )
    p.add_argument("--write", action="store_true", help="update the Long-form answers section of BENCHMARKS.md")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    a.corpus = tuple(s for s in a.corpus.split(",") if s)
    bad = [s for s in a.corpus if s not in ALL_SECTIONS]
    if bad or "faq" not in a.corpus:
        p.error(f"--corpus: use sections from {', '.join(ALL_SECTIONS)}, faq included (got {a.corpus})")
    if a.limit < 1:
        p.error("--limit must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format=common.LOG_FORMAT)
    logger.setLevel(logging.INFO)
    res = run(args)
    common.save_json(args.json, res)
    body = render(res, args, argv)
    SECTION.publish(body, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
