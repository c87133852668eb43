"""BM25 over a collection's chunk texts: tokenizer, index, per-collection cache, persistence.

Tokenisation (:func:`tokenize`): NFKC, case-folded; words are runs of letters/digits (one-letter
words dropped unless they are digits, as in bm25s); runs of CJK characters (Han, kana, Hangul)
become overlapping character bigrams (a single CJK character stays a unigram) — the usual
dictionary-free way to index Chinese/Japanese/Korean. Optional English stopwords (bm25s's list)
and Harman's S-stemmer (:func:`rag.stemming.s_stem`, plural folding: "Normans" -> "norman", "theories" -> "theory").

Caching: :class:`BM25Cache` keeps one index per collection folder, keyed by the store's
``generation``, so any ingest or delete (each bumps the generation) rebuilds it on next use.

Persistence: with ``BM25Config.persist`` the index is also saved as ``<collection>/bm25-<gen>/``
with bm25s's own format — ``.npy`` arrays written and read with ``allow_pickle=False`` plus JSON
(vocabulary, parameters) — and our row table (``rows.npy`` faiss ids, ``rows.json`` source/title)
and ``meta.json`` (generation, tokenizer settings). No pickle. The folder is written under a
temporary name, fsynced and renamed into place, so a reader sees a whole index or none; a
damaged or mismatched folder is rebuilt, never trusted. Older generations are removed.
File names: bm25s's ``data/indices/indptr.csc.index.npy``, ``vocab.index.json``, ``params.index.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.config import BM25Config
from rag.stemming import s_stem

if TYPE_CHECKING:  # pragma: no cover
    from ingest.collection import Collection

logger = logging.getLogger(__name__)


def _quiet_bm25s() -> None:
    """bm25s sets its own logger to DEBUG on import; keep it at our root level or above."""
    logging.getLogger("bm25s").setLevel(max(logging.getLogger().getEffectiveLevel(), logging.INFO))


__all__ = ["BM25Cache", "BM25Index", "build_bm25_index", "tokenize"]

#: Bump when the tokenizer's output changes: persisted indexes of another version are rebuilt.
TOKENIZER_VERSION = 1
FORMAT_VERSION = 1
_DIR_RE = re.compile(r"^bm25-(\d+)$")

# Hiragana, katakana, CJK extension A, CJK unified ideographs, compatibility ideographs,
# Hangul syllables, half-width katakana.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff66-\uff9f"
_WORD_RE = re.compile(rf"[^\W_{_CJK}]+")  # letters/digits, CJK excluded
_CJK_RE = re.compile(rf"[{_CJK}]+")


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str, *, stopwords: frozenset[str] = frozenset(), stem: bool = False) -> list[str]:
    """Tokens of ``text`` for BM25 (see the module docstring); the same function serves chunks and queries.

    Word tokens come first, then the CJK bigrams (order is irrelevant to BM25).
    """
    ascii_only = text.isascii()
    text = text.lower() if ascii_only else unicodedata.normalize("NFKC", text).casefold()
    out = [w for w in _WORD_RE.findall(text) if (len(w) > 1 or w.isdigit()) and w not in stopwords]
    if stem:
        out = [s_stem(w) for w in out]
    if not ascii_only:
        for run in _CJK_RE.findall(text):
            if len(run) == 1:
                out.append(run)
            else:
                out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out


class Tokenizer:
    """:func:`tokenize` with a config's settings bound."""

    def __init__(self, config: BM25Config) -> None:
        self.stem = config.stem
        self.stopwords = _stopwords() if config.stopwords else frozenset()

    def __call__(self, text: str) -> list[str]:
        return tokenize(text, stopwords=self.stopwords, stem=self.stem)


def _signature(config: BM25Config) -> dict[str, Any]:
    """What a persisted index must match to be reused."""
    return {
        "format": FORMAT_VERSION,
        "tokenizer": TOKENIZER_VERSION,
        "k1": config.k1,
        "b": config.b,
        "stopwords": config.stopwords,
        "stem": config.stem,
    }


@dataclass
class BM25Index:
    """A bm25s index over ``n`` chunks; row ``i`` is the chunk with faiss id ``ids[i]``."""

    model: Any  # bm25s.BM25, or None when no chunk has a token (empty collection)
    ids: np.ndarray  # (n,) int64 faiss ids
    sources: list[str]
    titles: list[str]
    generation: int
    tokenizer: Tokenizer

    def __post_init__(self) -> None:
        self._row = {int(i): r for r, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for ``query``: ``(n,)`` float32 (0 where no query term occurs)."""
        if self.model is None:
            return np.zeros(len(self.ids), dtype=np.float32)
        token_ids = self.model.get_tokens_ids(self.tokenizer(query))
        if not token_ids:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self.model.get_scores_from_ids(token_ids), dtype=np.float32)

    def mask(self, sources: Sequence[str] | None = None, titles: Sequence[str] | None = None) -> np.ndarray | None:
        """``(n,)`` bool of the chunks passing the filters (None without filters); same semantics as
        :meth:`ingest.collection.Collection.search`: source in ``sources`` AND title in ``titles``."""
        if not sources and not titles:
            return None
        keep = np.ones(len(self.ids), dtype=bool)
        if sources:
            allowed = set(sources)
            keep &= np.fromiter((s in allowed for s in self.sources), dtype=bool, count=len(self.ids))
        if titles:
            allowed = set(titles)
            keep &= np.fromiter((t in allowed for t in self.titles), dtype=bool, count=len(self.ids))
        return keep

    def top(self, scores: np.ndarray, n: int, mask: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The ``n`` best ``(faiss_id, score)`` among chunks with a positive score (and in ``mask``)."""
        if len(scores) == 0 or n <= 0:
            return []
        s = np.where(mask, scores, 0.0) if mask is not None else scores
        rows = np.flatnonzero(s > 0)
        if len(rows) > n:
            rows = rows[np.argpartition(-s[rows], n - 1)[:n]]
        rows = rows[np.lexsort((self.ids[rows], -s[rows]))]  # score desc, then id: deterministic
        return [(int(self.ids[r]), float(s[r])) for r in rows]

    def score_of(self, scores: np.ndarray, faiss_id: int) -> float:
        """The score of one chunk in ``scores`` (0 for a chunk this index does not know)."""
        r = self._row.get(int(faiss_id))
        return float(scores[r]) if r is not None else 0.0


def build_bm25_index(
    texts: Sequence[str], ids: np.ndarray, sources: list[str], titles: list[str], generation: int, config: BM25Config
) -> BM25Index:
    """Tokenise and index ``texts`` (row ``i`` is chunk ``ids[i]``)."""
    tok = Tokenizer(config)
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) != len(texts) or len(sources) != len(texts) or len(titles) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(ids)} ids, {len(sources)} sources, {len(titles)} titles")
    vocab: dict[str, int] = {}
    token_ids = [[vocab.setdefault(w, len(vocab)) for w in tok(t)] for t in texts]
    model = None
    if vocab:
        import bm25s

        _quiet_bm25s()

        model = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
        model.index((token_ids, vocab), show_progress=False)  # ids + vocab: faster than bm25s's token path
    return BM25Index(model, ids, list(sources), list(titles), generation, tok)


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_bm25_index(index: BM25Index, folder: Path, config: BM25Config) -> None:
    """Write ``index`` to ``folder`` atomically (temp folder, fsync, rename); replaces an existing one."""
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        if index.model is not None:
            index.model.save(str(tmp), allow_pickle=False, show_progress=False)
        np.save(tmp / "rows.npy", index.ids, allow_pickle=False)
        (tmp / "rows.json").write_text(
            json.dumps({"sources": index.sources, "titles": index.titles}, ensure_ascii=False), encoding="utf-8"
        )
        meta = {**_signature(config), "generation": index.generation, "n": len(index), "model": index.model is not None}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        _fsync_tree(tmp)
        if folder.exists():  # a mismatched or damaged old copy: move it aside first
            trash = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.trash")
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_bm25_index(folder: Path, generation: int, config: BM25Config) -> BM25Index | None:
    """The index saved in ``folder`` if it matches ``generation`` and ``config``, else None."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("generation") != generation or any(meta.get(k) != v for k, v in _signature(config).items()):
            return None
        ids = np.load(folder / "rows.npy", allow_pickle=False)
        rows = json.loads((folder / "rows.json").read_text(encoding="utf-8"))
        n = int(meta["n"])
        if ids.dtype != np.int64 or ids.shape != (n,) or len(rows["sources"]) != n or len(rows["titles"]) != n:
            raise ValueError("row table does not match the index size")
        model = None
        if meta.get("model"):
            import bm25s

            _quiet_bm25s()

            model = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False)
            if int(model.scores["num_docs"]) != n:
                raise ValueError(f"index holds {model.scores['num_docs']} chunks, row table {n}")
        return BM25Index(model, ids, list(rows["sources"]), list(rows["titles"]), generation, Tokenizer(config))
    except Exception as exc:  # damaged: rebuilt, never trusted
        logger.warning("BM25 index %s unreadable (%s); rebuilding it from the store", folder, exc)
        return None


class BM25Cache:
    """In-memory BM25 indexes, one per collection folder, rebuilt when the store generation changes.

    Thread-safe: concurrent requests for one collection build its index once.
    """

    def __init__(self, config: BM25Config) -> None:
        self.config = config
        self._indexes: dict[str, BM25Index] = {}
        self._lock = threading.Lock()
        self.builds = 0  #: indexes built from the store (not loaded from disk) — for tests and logs

    def get(self, collection: Collection) -> BM25Index:
        key = str(Path(collection.path).resolve())
        gen = collection.store.generation
        with self._lock:
            index = self._indexes.get(key)
            if index is None or index.generation != gen:
                index = self._load_or_build(collection, gen)
                self._indexes[key] = index
            return index

    def _load_or_build(self, collection: Collection, gen: int) -> BM25Index:
        folder = Path(collection.path) / f"bm25-{gen}"
        if self.config.persist:
            index = load_bm25_index(folder, gen, self.config)
            if index is not None:
                logger.debug("loaded BM25 index %s (%d chunks)", folder, len(index))
                return index
        t0 = time.perf_counter()
        ids, texts, sources, titles = [], [], [], []
        for row in collection.store.iter_chunks():
            ids.append(row.faiss_id)
            texts.append(row.text)
            sources.append(str(row.metadata.get("source", "")))
            titles.append(str(row.metadata.get("title", "")))
        index = build_bm25_index(texts, np.asarray(ids, dtype=np.int64), sources, titles, gen, self.config)
        self.builds += 1
        logger.info(
            "built BM25 index of %s: %d chunks in %.2f s", collection.name, len(index), time.perf_counter() - t0
        )
        # A write committed while we read would make the index newer than ``gen``: keep it in
        # memory (the next call sees the new generation and rebuilds) but never persist it.
        if self.config.persist and collection.store.generation == gen:
            self._persist(index, folder)
        return index

    def _persist(self, index: BM25Index, folder: Path) -> None:
        try:
            save_bm25_index(index, folder, self.config)
            for p in folder.parent.iterdir():
                m = _DIR_RE.match(p.name)
                if m and int(m.group(1)) < index.generation:  # older only: never a newer one
                    shutil.rmtree(p, ignore_errors=True)
                elif p.name.startswith(".bm25-") and p.name.endswith(".tmp") and time.time() - p.stat().st_mtime > 3600:
                    shutil.rmtree(p, ignore_errors=True)  # left by a process killed while saving
        except OSError as exc:  # read-only folder, full disk, a concurrent writer: memory is enough
            logger.info("BM25 index not saved to %s (%s); it stays in memory", folder, exc)
