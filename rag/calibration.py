"""Per-collection abstention calibration: the evidence threshold each collection computes for itself.

Out of the box a question that the collection cannot answer should get "I don't know". What counts as
weak evidence depends on the collection (its topic, its size, the embedder), so every collection measures
it when it is ingested or changed:

* **answerable** queries: question-like queries made from sentences of the collection's own chunks
  (:func:`answerable_queries`; at most ``max_chunks`` chunks (1000) are sampled, deterministically);
* **unanswerable** queries: the calibration split of the general-knowledge probe set shipped in
  ``rag/probes/general_questions.txt`` (package data) (:func:`load_probes`), none of which a document collection of a
  specialised topic answers.

Both are scored with the best dense cosine of the collection (the retriever's ``max_dense_score`` signal)
and :func:`choose_min_score` picks the threshold. The rule favours answering::

    min_score = min(quantile(probe scores, 0.975) + margin, quantile(answerable scores, 0.25))    (margin 0)

i.e. just above almost every probe question, but never above the score of the weaker quarter of the
answerable queries: when the two overlap, the threshold follows the answerable side (a collection rather
answers an unrelated question than withholds its own). The cap is a quartile, not the minimum, because the
made-up queries are rough: some come from sentences (list items, captions, code comments) that no person
would ask about. Chosen on the Python docs and the SQuAD articles (``bench/abstention_defaults.py``, which
also measures the held-out probe questions; BENCHMARKS.md): the probe quantile is what separates them, since
an unrelated question's best cosine depends on the collection (0.36 / 0.39 at the 95th percentile there).

The sample is large (1000 chunks) because on a big collection the two distributions cross and the threshold
*is* the answerable quartile, so its sampling noise decides real questions. Rule 1 sampled 120 chunks: on the
full Python docs (11,165 chunks, library included) its quartile came out 0.511, while 1000-chunk samples of
three seeds give 0.492-0.495; "How do I create a virtual environment?" (best cosine 0.505, the venv pages
retrieved) was refused by that chance draw (bench/abstention_defaults.py, BENCHMARKS.md).

The result is a :class:`Calibration`, stored with the collection
(:meth:`ingest.collection.Collection.set_calibration`) together with the store generation it was computed
for and the sample sizes; :meth:`rag.abstention.AbstentionRule.for_collection` uses it whenever
``QAConfig.abstain_min_score`` is not set (``QAConfig.auto_abstain``). The retriever's hybrid ranking can
leave the best dense chunk out of the top k, so a question's ``max_dense_score`` is at most the score
calibration measured (it abstains a little more often, never less).

Cost: one embedding per query (up to ``max_chunks`` answerable + 160 probes, short texts) and one top-1 index
search each: about 4 s for a large collection on a 2-core CPU with the bundled embedder (a small collection
has fewer chunks to sample, and costs less).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ingest.collection import Collection
from ingest.workspace import Workspace

logger = logging.getLogger(__name__)

__all__ = [
    "PROBES_FILE",
    "RULE_VERSION",
    "Calibration",
    "CalibrationRule",
    "Threshold",
    "answerable_queries",
    "best_scores",
    "calibrate_collection",
    "choose_min_score",
    "load_probes",
    "calibrate_if_stale",
    "is_current",
    "read_calibration",
    "recalibrate",
]

PROBES_FILE = Path(__file__).resolve().parent / "probes" / "general_questions.txt"
RULE_VERSION = 2  # 2: 1000 sampled chunks instead of 120 (stored rule-1 calibrations are recomputed)
Split = Literal["calibration", "bench"]


class QueryEmbedder(Protocol):
    """What calibration needs from an embedder (:class:`ingest.embedder.Embedder` has it)."""

    name: str

    def embed_documents(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """``(n, dim)`` float32 rows of unit L2 norm."""
        ...


# -- the probe set -------------------------------------------------------------------------------


def load_probes(split: Split = "calibration", path: Path | None = None) -> list[str]:
    """The questions of one split of the probe file (``[calibration]`` / ``[bench]`` sections, ``#`` comments)."""
    path = Path(path) if path is not None else PROBES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the probe questions {path} are missing; reinstall ragqa (they ship in the rag package, rag/probes)"
        )
    out: dict[str, list[str]] = {"calibration": [], "bench": []}
    section: str | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            if section not in out:
                raise ValueError(f"{path}: unknown section [{section}]; use [calibration] or [bench]")
            continue
        if section is None:
            raise ValueError(f"{path}: question {line!r} before any [calibration] / [bench] section")
        out[section].append(line)
    return out[split]


# -- answerable queries from a collection's own chunks -------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_CODE_LIKE = re.compile(r"`|>>>|https?://|[{}<>=\\|_]|\(\)|\w\.\w+\(")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_YEAR = re.compile(r"\b1\d{3}\b|\b20\d{2}\b")
_LEADING_FILLER = {"and", "or", "but", "so", "then", "also", "however", "thus", "therefore"}


def _sentences(text: str) -> list[str]:
    """Prose sentences of a chunk: 6-40 words, a capital first letter, mostly letters, nothing like code."""
    out = []
    for para in re.split(r"\n\s*\n|\n(?=\s*[-*•])", text):
        for s in _SENTENCE_END.split(" ".join(para.split())):
            words = s.split()
            if not 6 <= len(words) <= 40 or not s[0].isupper() or _CODE_LIKE.search(s):
                continue
            if sum(len(w) for w in _WORD.findall(s)) < 0.7 * len(s.replace(" ", "")):
                continue
            out.append(s)
    return out


def _question(sentence: str, rng: random.Random) -> str:
    """A question-like query from a sentence: a wh-word and the sentence's opening words (where its topic
    usually is), 6-12 of them, cut at the first clause boundary after the sixth."""
    words = [w for w in sentence.split() if w.strip(".,;:!?\"'()[]")]
    while words and words[0].lower().strip(",") in _LEADING_FILLER:
        words = words[1:]
    size = min(len(words), rng.randint(6, 12))
    for i in range(5, size):
        if words[i].endswith((",", ";", ":")):
            size = i + 1
            break
    window = [w.strip(".,;:!?\"'()[]") for w in words[:size]]
    if window and window[0][:1].isupper() and not window[0].isupper():
        window[0] = window[0][0].lower() + window[0][1:]
    text = " ".join(w for w in window if w)
    wh = "When" if _YEAR.search(text) else rng.choice(("What", "What", "How", "Why", "Which"))
    return f"{wh} {text}?"


def answerable_queries(texts: Sequence[str], n: int, *, seed: int = 0) -> list[str]:
    """Up to ``n`` question-like queries made from sentences of ``texts``: one per text in order, then (when
    the texts are few) a second sentence of each, and so on. Deterministic for a given ``seed``; texts
    without a prose sentence give no query."""
    rng = random.Random(seed)
    pools = []
    for text in texts:
        sentences = _sentences(text)
        rng.shuffle(sentences)
        pools.append(sentences)
    out: list[str] = []
    for depth in range(max((len(p) for p in pools), default=0)):
        for sentences in pools:
            if len(out) >= n:
                return out
            if depth < len(sentences):
                out.append(_question(sentences[depth], rng))
    return out


# -- scores and the rule -------------------------------------------------------------------------


def best_scores(collection: Collection, vectors: np.ndarray) -> np.ndarray:
    """The best dense cosine of each query ``vectors`` ``(n, dim)`` in ``collection``: ``(n,)`` float64."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, collection.dim)
    index = collection.index
    if index.ntotal == 0 or len(vectors) == 0:
        return np.zeros(0, dtype=np.float64)
    scores, ids = index.search(vectors, 1)
    return np.where(ids[:, 0] >= 0, scores[:, 0], -1.0).astype(np.float64)


@dataclass(frozen=True)
class CalibrationRule:
    """How the threshold is chosen (see the module docstring) and how much is sampled."""

    probe_quantile: float = 0.975
    cap_quantile: float = 0.25
    margin: float = 0.0
    max_chunks: int = 1000
    min_answerable: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("probe_quantile", "cap_quantile"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.max_chunks < 1 or self.min_answerable < 1:
            raise ValueError("max_chunks and min_answerable must be >= 1")


@dataclass(frozen=True)
class Threshold:
    """The chosen ``min_score`` (None: off) and the two quantiles it came from."""

    min_score: float | None
    probe_score: float | None = None
    cap_score: float | None = None


def choose_min_score(
    answerable: Sequence[float], unanswerable: Sequence[float], rule: CalibrationRule | None = None
) -> Threshold:
    """The threshold by the rule of the module docstring: the probes' high quantile (plus the margin), but
    never above the answerable queries' low (cap) quantile.

    Off (``min_score`` None) with fewer than ``rule.min_answerable`` answerable scores or no unanswerable
    ones: too little to tell them apart."""
    rule = rule or CalibrationRule()
    a = np.asarray(answerable, dtype=np.float64)
    u = np.asarray(unanswerable, dtype=np.float64)
    if len(a) < rule.min_answerable or len(u) == 0:
        return Threshold(None)
    hi_u = float(np.quantile(u, rule.probe_quantile))
    cap = float(np.quantile(a, rule.cap_quantile))
    return Threshold(round(min(hi_u + rule.margin, cap), 4), round(hi_u, 4), round(cap, 4))


@dataclass(frozen=True)
class Calibration:
    """A collection's calibrated abstention threshold and what it was computed from."""

    min_score: float | None
    generation: int
    embedder: str
    n_answerable: int
    n_unanswerable: int
    probe_score: float | None
    cap_score: float | None
    probe_quantile: float
    cap_quantile: float
    margin: float
    seconds: float
    computed_at: float
    rule_version: int = RULE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def read_calibration(collection: Collection) -> Calibration | None:
    """The calibration stored with ``collection``, or None (never calibrated, or written by an unknown rule)."""
    data = collection.calibration()
    if not data:
        return None
    try:
        return Calibration.from_dict(data)
    except TypeError:
        logger.warning("collection %s: unreadable calibration %r; recalibrate it", collection.name, data)
        return None


def calibrate_collection(
    collection: Collection,
    embedder: QueryEmbedder,
    *,
    rule: CalibrationRule | None = None,
    probes: Sequence[str] | None = None,
    store: bool = True,
) -> Calibration:
    """Compute ``collection``'s threshold (and store it with the collection when ``store``)."""
    rule = rule or CalibrationRule()
    t0 = time.perf_counter()
    probes = list(probes) if probes is not None else load_probes("calibration")
    ids = collection.store.faiss_ids()
    if len(ids) > rule.max_chunks:
        picked = sorted(random.Random(rule.seed).sample(ids, rule.max_chunks))
    else:
        picked = list(ids)
    rows = collection.store.get_chunks(picked)
    texts = [rows[i].text for i in picked if i in rows]
    queries = answerable_queries(texts, rule.max_chunks, seed=rule.seed)
    answerable: np.ndarray = np.zeros(0)
    unanswerable: np.ndarray = np.zeros(0)
    if queries and probes:
        vectors = embedder.embed_documents(queries + probes)
        scores = best_scores(collection, vectors)
        if len(scores):
            answerable, unanswerable = scores[: len(queries)], scores[len(queries) :]
    t = choose_min_score(answerable.tolist(), unanswerable.tolist(), rule)
    cal = Calibration(
        min_score=t.min_score,
        generation=collection.store.generation,
        embedder=str(getattr(embedder, "name", "")),
        n_answerable=len(answerable),
        n_unanswerable=len(unanswerable),
        probe_score=t.probe_score,
        cap_score=t.cap_score,
        probe_quantile=rule.probe_quantile,
        cap_quantile=rule.cap_quantile,
        margin=rule.margin,
        seconds=round(time.perf_counter() - t0, 3),
        computed_at=time.time(),
    )
    if store:
        collection.set_calibration(cal.to_dict())
    logger.info(
        "collection %s calibrated at generation %d: abstain_min_score %s (probes q%.3f %s, answerable q%.2f %s; "
        "%d answerable, %d probe queries, %.2f s)",
        collection.name,
        cal.generation,
        "off" if t.min_score is None else f"{t.min_score:.3f}",
        rule.probe_quantile,
        t.probe_score,
        rule.cap_quantile,
        t.cap_score,
        cal.n_answerable,
        cal.n_unanswerable,
        cal.seconds,
    )
    return cal


def is_current(calibration: Calibration | None, collection: Collection) -> bool:
    """Whether ``calibration`` was computed by this rule for ``collection`` as it is now."""
    return (
        calibration is not None
        and calibration.generation == collection.store.generation
        and calibration.rule_version == RULE_VERSION
        and calibration.embedder == collection.embedder_name
    )


def calibrate_if_stale(
    collection: Collection,
    embedder: Callable[[], QueryEmbedder],
    *,
    force: bool = False,
    quiet: bool = False,
    rule: CalibrationRule | None = None,
) -> Calibration | None:
    """Recalibrate ``collection`` (open for writing) unless its stored calibration is current (or ``force``);
    returns the new calibration, or None when nothing was done. ``embedder`` is called only when work is needed.

    ``quiet`` (after an ingest, upload or delete): a failure is logged, not raised, because the change itself
    succeeded; the collection keeps its previous threshold until ``ragqa collections calibrate NAME``."""
    if not force and is_current(read_calibration(collection), collection):
        return None
    try:
        return calibrate_collection(collection, embedder(), rule=rule)
    except Exception as exc:  # calibration must never fail the change that triggered it
        if not quiet:
            raise
        logger.warning(
            "could not calibrate collection %s (%s: %s); it keeps its previous abstention threshold. "
            "Retry with `ragqa collections calibrate %s`",
            collection.name,
            type(exc).__name__,
            exc,
            collection.name,
        )
        return None


def recalibrate(workspace: Workspace, name: str, *, force: bool = False, quiet: bool = False) -> Calibration | None:
    """Open collection ``name`` of ``workspace`` for writing and :func:`calibrate_if_stale` it (``quiet``: opening
    failures are logged too)."""
    try:
        with workspace.open(name, check_embedder=False) as coll:
            return calibrate_if_stale(coll, lambda: workspace.embedder, force=force, quiet=quiet)
    except Exception as exc:
        if not quiet:
            raise
        logger.warning("could not calibrate collection %s (%s: %s)", name, type(exc).__name__, exc)
        return None
