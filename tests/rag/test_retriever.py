"""rag.retriever and rag.bm25: pure maths against brute force, then retrieval on real collections.

Most retrieval tests use a collection built from hand-made 4-d vectors and a stub query
embedder, so which chunk dense search finds is known by construction; the cache and CJK tests
ingest files with the tiny random sentence-transformers model; one slow test measures recall@4
on the bundled SQuAD sample with the real bundled embedder.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from ingest.collection import Collection
from ingest.config import ChunkingConfig, EmbedderConfig, IndexConfig, IngestConfig
from ingest.documents import Chunk, Document, stable_hash
from rag.bm25 import BM25Cache, build_bm25_index, load_bm25_index, save_bm25_index, tokenize
from rag.config import BM25Config, RetrieverConfig
from rag.retriever import (
    Retriever,
    RetrieverError,
    log_softmax_posterior,
    mmr_select,
    rrf_fuse,
    softmax_posterior,
)

SQUAD = Path(__file__).resolve().parents[2] / "data" / "benchmarks" / "squad2_dev_public.json"


# -- pure maths --------------------------------------------------------------------------------


class TestRRF:
    def test_matches_hand_computation(self) -> None:
        # dense: 7, 3, 5   bm25: 3, 9, 7, 2   (k = 60, 1-based ranks)
        got = rrf_fuse([[7, 3, 5], [3, 9, 7, 2]], k=60)
        want = {
            3: 1 / 62 + 1 / 61,
            7: 1 / 61 + 1 / 63,
            9: 1 / 62,
            5: 1 / 63,
            2: 1 / 64,
        }
        assert [i for i, _ in got] == [3, 7, 9, 5, 2]
        for i, s in got:
            assert s == pytest.approx(want[i], abs=1e-15)

    def test_small_k_and_ties(self) -> None:
        # k = 0: scores are plain reciprocal ranks. 1 and 2 tie (1/1 + 1/2); 1 was seen first.
        got = rrf_fuse([[1, 2], [2, 1]], k=0)
        assert got == [(1, pytest.approx(1.5)), (2, pytest.approx(1.5))]
        # a tie broken by the better best rank: 4 is first somewhere, 5 never is
        got = rrf_fuse([[5, 6, 4], [4, 6, 5]], k=1)  # 5: 1/2+1/4, 4: 1/4+1/2, 6: 1/3+1/3
        assert [i for i, _ in got] == [5, 4, 6]

    def test_duplicates_and_empty(self) -> None:
        assert rrf_fuse([], k=60) == []
        assert rrf_fuse([[], []], k=60) == []
        got = dict(rrf_fuse([[1, 1, 2]], k=10))  # the repeat of 1 is ignored
        assert got == {1: pytest.approx(1 / 11), 2: pytest.approx(1 / 13)}
        with pytest.raises(ValueError):
            rrf_fuse([[1]], k=-1)


class TestPosterior:
    @pytest.mark.parametrize("temperature", [0.01, 0.05, 1.0, 7.0])
    def test_matches_brute_force(self, temperature: float) -> None:
        scores = [0.71, 0.64, 0.69, 0.2, -0.3]
        exps = [math.exp(s / temperature) for s in scores]
        brute = [e / sum(exps) for e in exps]
        p = softmax_posterior(scores, temperature)
        assert p.shape == (5,)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert p == pytest.approx(brute, rel=1e-9)
        assert log_softmax_posterior(np.array(scores), temperature) == pytest.approx(np.log(brute), rel=1e-9)

    def test_stable_for_large_scores(self) -> None:
        p = softmax_posterior([1000.0, 999.0], 0.01)  # naive exp overflows
        assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
        assert p[0] == pytest.approx(1 / (1 + math.exp(-100)))

    def test_edge_cases(self) -> None:
        assert softmax_posterior([], 0.05).shape == (0,)
        assert softmax_posterior([0.3], 0.05) == pytest.approx([1.0])
        with pytest.raises(ValueError):
            softmax_posterior([0.1], 0.0)


def _unit(*rows: list[float]) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _brute_mmr(q: np.ndarray, V: np.ndarray, rel: np.ndarray | None, k: int, lam: float) -> list[int]:
    """The MMR definition with explicit loops."""
    n = len(V)
    rel = [float(np.dot(V[i], q)) for i in range(n)] if rel is None else list(rel)
    chosen: list[int] = []
    while len(chosen) < min(k, n):
        best, best_val = None, -math.inf
        for i in range(n):
            if i in chosen:
                continue
            red = max((float(np.dot(V[i], V[j])) for j in chosen), default=0.0)
            val = lam * rel[i] - (1 - lam) * red
            if val > best_val:
                best, best_val = i, val
        chosen.append(best)
    return chosen


class TestMMR:
    Q = _unit([1, 0, 0, 0])[0]
    # 0 and 1 are near-duplicates (both close to the query); 2 and 3 point elsewhere.
    V = _unit([1, 0.1, 0, 0], [1, 0.12, 0.01, 0], [0.6, 0, 0.8, 0], [0.5, 0, 0, 0.86], [0, 1, 0, 0])

    def test_near_duplicate_is_skipped(self) -> None:
        plain = list(np.argsort(-(self.V @ self.Q))[:3])
        assert plain[:2] == [0, 1]  # by relevance alone the duplicate comes second
        got = mmr_select(self.Q, self.V, None, 3, 0.5)
        assert got[0] == 0 and 1 not in got[:2]
        assert got == _brute_mmr(self.Q, self.V, None, 3, 0.5)

    @pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 0.7, 1.0])
    @pytest.mark.parametrize("k", [1, 3, 5, 9])
    def test_matches_brute_force(self, lam: float, k: int) -> None:
        assert mmr_select(self.Q, self.V, None, k, lam) == _brute_mmr(self.Q, self.V, None, k, lam)
        rel = np.array([0.2, 0.9, 0.5, 0.4, 0.1])
        assert mmr_select(self.Q, self.V, rel, k, lam) == _brute_mmr(self.Q, self.V, rel, k, lam)

    def test_random_vectors_match_brute_force(self) -> None:
        rng = np.random.default_rng(0)
        for _ in range(20):
            V = _unit(*rng.normal(size=(12, 6)).tolist())
            q = _unit(rng.normal(size=6).tolist())[0]
            assert mmr_select(q, V, None, 6, 0.6) == _brute_mmr(q, V, None, 6, 0.6)

    def test_lambda_one_is_relevance_order(self) -> None:
        assert mmr_select(self.Q, self.V, None, 5, 1.0) == list(np.argsort(-(self.V @ self.Q), kind="stable"))

    def test_bad_relevance_shape(self) -> None:
        with pytest.raises(ValueError):
            mmr_select(self.Q, self.V, np.ones(3), 2, 0.5)


class TestTokenize:
    def test_words_stopwords_and_stemming(self) -> None:
        sw = frozenset({"the", "of", "in"})
        assert tokenize("The Normans of Normandy", stopwords=sw, stem=True) == ["norman", "normandy"]
        assert tokenize("theories classes glass bus", stem=True) == ["theory", "classe", "glass", "bus"]
        assert tokenize("World War 2, a b") == ["world", "war", "2"]  # one-letter words go, digits stay

    def test_cjk_bigrams(self) -> None:
        assert tokenize("东京大学") == ["东京", "京大", "大学"]
        assert tokenize("猫") == ["猫"]
        assert tokenize("Tokyo東京 ﬁle") == ["tokyo", "file", "東京"]  # NFKC folds the ligature


# -- collections built from hand-made vectors ---------------------------------------------------


class StubEmbedder:
    """Query embeddings looked up in a table (a hand-made embedder with known neighbours)."""

    name = "stub"
    dim = 4

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed_query(self, text: str) -> np.ndarray:
        return _unit(self.table.get(text, [1, 0, 0, 0]))[0].astype(np.float32)


# (text, source, title, vector). The query vector is e0: dense ranks chunks by their first component.
HAND = [
    ("Cats sleep most of the afternoon in warm sunlight.", "a.txt", "Cats", [1, 0.05, 0, 0]),
    ("Cats chase mice around the old barn at night.", "a.txt", "Cats", [1, 0.06, 0, 0]),  # near-dup vector of 0
    ("Dogs guard the farm and bark at strangers.", "b.txt", "Dogs", [0.9, 0.45, 0, 0]),
    ("Horses graze in the meadow beside the river.", "b.txt", "Horses", [0.8, 0, 0.6, 0]),
    ("The zymurgy handbook explains brewing and fermentation.", "c.txt", "Brewing", [0, 0, 0, 1]),
    ("Dogs and cats share the farm with horses.", "c.txt", "Farm", [0.5, 0, 0, 0.86]),
]


def _make_hand_collection(root: Path) -> Collection:
    coll = Collection.create(root, "hand", embedder_name="stub", dim=4, chunking=ChunkingConfig(), index=IndexConfig())
    by_source: dict[str, list[int]] = {}
    for i, (_, source, _, _) in enumerate(HAND):
        by_source.setdefault(source, []).append(i)
    for source, rows in by_source.items():
        docs, chunks = [], []
        for i in rows:
            text, _, title, _ = HAND[i]
            doc = Document(text=text, source=source, key=str(i), title=title)
            docs.append(doc)
            chunks.append(
                Chunk(stable_hash(doc.doc_id, "0", text), doc.doc_id, 0, text, {"title": title, "source": source})
            )
        vecs = _unit(*[HAND[i][3] for i in rows]).astype(np.float32)
        coll.replace_file(source, stable_hash(source), 1, docs, chunks, vecs)
    coll.flush()
    return coll


@pytest.fixture()
def hand(tmp_path):
    coll = _make_hand_collection(tmp_path / "collections")
    yield coll
    coll.close()


def _texts(ret) -> list[str]:
    return [c.text for c in ret.chunks]


def _retriever(**kw) -> Retriever:
    return Retriever(StubEmbedder({}), RetrieverConfig(**kw))


ZYM = HAND[4][0]


class TestHandCollection:
    def test_bm25_finds_rare_keyword_that_dense_misses(self, hand) -> None:
        r = _retriever(k=2)
        dense = r.retrieve(hand, "zymurgy", mode="dense")
        assert ZYM not in _texts(dense)
        assert _texts(dense) == [HAND[0][0], HAND[1][0]]
        bm25 = r.retrieve(hand, "zymurgy", mode="bm25")
        assert _texts(bm25) == [ZYM]  # the only chunk sharing a term with the query
        top = bm25.chunks[0]
        assert top.bm25_score > 0 and top.bm25_rank == 1 and top.dense_rank is None
        # the dense cosine is computed from the stored vector even for a BM25-only hit
        assert top.dense_score == pytest.approx(0.0, abs=1e-6)
        assert bm25.max_dense_score == pytest.approx(0.0, abs=1e-6)
        assert bm25.posterior_score == "bm25" and bm25.posterior == pytest.approx([1.0])

    def test_hybrid_fuses_both(self, hand) -> None:
        r = _retriever(k=2, rrf_k=60)
        ret = r.retrieve(hand, "zymurgy")  # config default: hybrid
        assert ret.mode == "hybrid"
        first, second = ret.chunks
        # ZYM: dense rank 6 (cosine 0) + bm25 rank 1; chunk 0: dense rank 1 only
        assert first.text == ZYM and (first.dense_rank, first.bm25_rank) == (6, 1)
        assert first.score == pytest.approx(1 / 66 + 1 / 61) == first.rrf_score
        assert second.text == HAND[0][0] and (second.dense_rank, second.bm25_rank) == (1, None)
        assert second.score == pytest.approx(1 / 61)
        assert second.bm25_score == 0.0  # real BM25 score: no shared term
        # the posterior is over the dense cosines of the returned chunks
        cos = [c.dense_score for c in ret.chunks]
        assert cos == pytest.approx([0.0, float(_unit(HAND[0][3])[0][0])], abs=1e-6)
        assert ret.posterior == pytest.approx(softmax_posterior(cos, 0.05))
        assert [c.posterior for c in ret.chunks] == pytest.approx(list(ret.posterior))
        assert ret.max_dense_score == pytest.approx(max(cos))
        assert [c.rank for c in ret.chunks] == [1, 2]

    def test_dense_scores_and_posterior(self, hand) -> None:
        r = _retriever(k=4, temperature=0.1)
        ret = r.retrieve(hand, "cats", mode="dense")
        want = np.argsort(-np.array([_unit(v)[0][0] for *_, v in HAND]), kind="stable")[:4]
        assert _texts(ret) == [HAND[i][0] for i in want]
        cos = np.array([c.dense_score for c in ret.chunks])
        assert cos == pytest.approx([c.score for c in ret.chunks], abs=1e-6)  # flat index: same cosine
        assert ret.log_posterior.shape == (4,)
        assert ret.posterior.sum() == pytest.approx(1.0)
        assert ret.posterior == pytest.approx(softmax_posterior(cos, 0.1))
        assert all(c.bm25_score is None and c.rrf_score is None for c in ret.chunks)

    def test_bm25_posterior_uses_normalised_score(self, hand) -> None:
        ret = _retriever(k=3, temperature=0.5).retrieve(hand, "cats dogs farm", mode="bm25")
        s = np.array([c.bm25_score for c in ret.chunks])
        assert (np.diff(s) <= 0).all() and s[-1] > 0
        assert ret.posterior == pytest.approx(softmax_posterior(s / s.max(), 0.5))

    @pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
    def test_filters(self, hand, mode: str) -> None:
        r = _retriever(k=6)
        q = "cats dogs farm horses zymurgy"
        ret = r.retrieve(hand, q, mode=mode, sources=["b.txt"])
        assert ret.chunks and {c.source for c in ret.chunks} == {"b.txt"}
        ret = r.retrieve(hand, q, mode=mode, titles=["Cats", "Farm"])
        assert ret.chunks and {c.title for c in ret.chunks} <= {"Cats", "Farm"}
        ret = r.retrieve(hand, q, mode=mode, sources=["c.txt"], titles=["Brewing"])
        assert _texts(ret) == [ZYM]
        assert r.retrieve(hand, q, mode=mode, sources=["nowhere.txt"]).chunks == []

    def test_mmr_skips_near_duplicate(self, hand) -> None:
        r = _retriever(k=2, mode="dense", mmr_lambda=0.3)
        assert _texts(r.retrieve(hand, "q")) == [HAND[0][0], HAND[1][0]]
        ret = r.retrieve(hand, "q", mmr=True)
        # chunk 1 (cosine 0.9998 with chunk 0) gives way to the chunk orthogonal to chunk 0
        assert _texts(ret) == [HAND[0][0], ZYM]
        assert [c.rank for c in ret.chunks] == [1, 2]
        cos = [c.dense_score for c in ret.chunks]
        assert ret.posterior == pytest.approx(softmax_posterior(cos, 0.05))

    @pytest.mark.parametrize("mode", ["bm25", "hybrid"])
    def test_mmr_on_fused_scores(self, hand, mode: str) -> None:
        r = _retriever(k=3, mmr=True, mmr_lambda=0.5)
        ret = r.retrieve(hand, "cats dogs farm zymurgy", mode=mode)
        assert len(ret.chunks) == 3 and len({c.chunk_id for c in ret.chunks}) == 3
        # the most relevant candidate is always picked first
        plain = r.retrieve(hand, "cats dogs farm zymurgy", mode=mode, mmr=False)
        assert ret.chunks[0].chunk_id == plain.chunks[0].chunk_id
        assert ret.posterior.sum() == pytest.approx(1.0)

    def test_per_call_overrides_and_errors(self, hand) -> None:
        r = _retriever(k=1, candidates=2)
        assert len(r.retrieve(hand, "cats", mode="dense")) == 1
        assert len(r.retrieve(hand, "cats", k=5, mode="dense")) == 5  # candidates grow to k
        with pytest.raises(RetrieverError, match="mode"):
            r.retrieve(hand, "cats", mode="sparse")  # type: ignore[arg-type]
        with pytest.raises(RetrieverError, match="k must be"):
            r.retrieve(hand, "cats", k=0)

        class Wrong(StubEmbedder):
            dim = 8

        with pytest.raises(RetrieverError, match="dimensional"):
            Retriever(Wrong({}), RetrieverConfig()).retrieve(hand, "cats")

    def test_no_match_and_empty_collection(self, hand, tmp_path) -> None:
        r = _retriever()
        ret = r.retrieve(hand, "qwertyuiop", mode="bm25")
        assert ret.chunks == [] and ret.log_posterior.shape == (0,) and ret.max_dense_score is None
        empty = Collection.create(
            tmp_path / "other", "empty", embedder_name="stub", dim=4, chunking=ChunkingConfig(), index=IndexConfig()
        )
        try:
            for mode in ("dense", "bm25", "hybrid"):
                assert r.retrieve(empty, "cats", mode=mode).chunks == []
        finally:
            empty.close()

    def test_to_dict_is_json(self, hand) -> None:
        d = _retriever().retrieve(hand, "zymurgy cats").to_dict()
        json.dumps(d)
        assert d["chunks"][0]["rank"] == 1 and "dense_score" in d["chunks"][0]


# -- BM25 index: persistence ---------------------------------------------------------------------


class TestPersistence:
    def test_saved_without_pickle_and_reloaded(self, hand) -> None:
        cfg = BM25Config()
        cache = BM25Cache(cfg)
        index = cache.get(hand)
        gen = hand.store.generation
        folder = hand.path / f"bm25-{gen}"
        assert folder.is_dir() and cache.builds == 1
        assert {p.suffix for p in folder.iterdir()} <= {".npy", ".json"}
        for npy in folder.glob("*.npy"):
            np.load(npy, allow_pickle=False)  # plain arrays: loads with pickle refused
        loaded = load_bm25_index(folder, gen, cfg)
        assert loaded is not None
        assert list(loaded.ids) == list(index.ids) and loaded.sources == index.sources
        assert loaded.scores("cats farm") == pytest.approx(index.scores("cats farm"))
        # a second cache (another process) loads instead of building
        other = BM25Cache(cfg)
        other.get(hand)
        assert other.builds == 0
        # other tokenizer settings do not reuse it
        assert load_bm25_index(folder, gen, BM25Config(stem=False)) is None
        assert load_bm25_index(folder, gen + 1, cfg) is None

    def test_damaged_index_is_rebuilt(self, hand, caplog) -> None:
        cfg = BM25Config()
        BM25Cache(cfg).get(hand)
        folder = hand.path / f"bm25-{hand.store.generation}"
        (folder / "rows.npy").write_bytes(b"garbage")
        cache = BM25Cache(cfg)
        with caplog.at_level(logging.WARNING):
            index = cache.get(hand)
        assert cache.builds == 1 and len(index) == len(HAND)
        assert "unreadable" in caplog.text
        assert load_bm25_index(folder, hand.store.generation, cfg) is not None  # rewritten

    def test_persist_off(self, hand) -> None:
        BM25Cache(BM25Config(persist=False)).get(hand)
        assert not list(hand.path.glob("bm25-*"))

    def test_empty_corpus(self, tmp_path) -> None:
        index = build_bm25_index([], np.zeros(0, dtype=np.int64), [], [], 0, BM25Config())
        assert len(index) == 0 and index.top(index.scores("cats"), 3) == []
        # chunks without a single token (punctuation only): no bm25s model, every score 0
        index = build_bm25_index(["...", "!"], np.array([5, 7]), ["s", "s"], ["t", "t"], 3, BM25Config())
        assert index.model is None and list(index.scores("cats")) == [0.0, 0.0]
        assert index.top(index.scores("cats"), 3) == [] and index.score_of(index.scores("cats"), 7) == 0.0
        save_bm25_index(index, tmp_path / "bm25-3", BM25Config())
        loaded = load_bm25_index(tmp_path / "bm25-3", 3, BM25Config())
        assert loaded is not None and list(loaded.ids) == [5, 7] and loaded.model is None


# -- ingested collections with the tiny sentence-transformers model -----------------------------


@pytest.fixture()
def tiny_ws(tmp_path, tiny_st_model):
    from ingest.workspace import Workspace

    return Workspace(tmp_path / "home", IngestConfig(embedder=EmbedderConfig(model=str(tiny_st_model))))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class TestIngested:
    def test_bm25_cache_rebuilds_after_ingest(self, tiny_ws, tmp_path) -> None:
        f1 = _write(tmp_path / "docs" / "a.txt", "Rivers carry water from the mountains to the sea.")
        tiny_ws.ingest([f1], "c")
        r = Retriever(tiny_ws.embedder, RetrieverConfig(mode="bm25"))
        with tiny_ws.open("c", readonly=True) as coll:
            gen1 = coll.store.generation
            assert r.retrieve(coll, "quokka").chunks == []
            assert r.bm25_cache.builds == 1
            r.retrieve(coll, "rivers")
            assert r.bm25_cache.builds == 1  # cached: same generation

            f2 = _write(tmp_path / "docs" / "b.txt", "The quokka is a small marsupial from Rottnest Island.")
            tiny_ws.ingest([f2], "c")  # another writer; our read-only handle sees the new generation
            assert coll.store.generation > gen1
            ret = r.retrieve(coll, "quokka")
            assert r.bm25_cache.builds == 2
            assert len(ret.chunks) == 1 and ret.chunks[0].source == str(f2)
            gen2 = coll.store.generation
        # persisted for the new generation; the old generation's folder is gone
        names = [p.name for p in (tiny_ws.collections_dir / "c").glob("bm25-*")]
        assert names == [f"bm25-{gen2}"]

    def test_hybrid_and_dense_on_real_embeddings(self, tiny_ws, tmp_path) -> None:
        files = [
            _write(tmp_path / "docs" / f"{i}.txt", text)
            for i, text in enumerate(
                [
                    "Photosynthesis turns light into sugar.",
                    "Volcanoes erupt molten rock.",
                    "The Danube flows through Vienna and Budapest.",
                ]
            )
        ]
        tiny_ws.ingest(files, "c")
        r = Retriever(tiny_ws.embedder, RetrieverConfig(k=3))
        with tiny_ws.open("c", readonly=True) as coll:
            q = "Which river flows through Vienna?"
            qv = tiny_ws.embedder.embed_query(q)
            ret = r.retrieve(coll, q)
            assert ret.chunks[0].source == str(files[2])  # BM25 pulls it to the top whatever the random dense says
            for c in ret.chunks:  # dense cosine of every result = stored vector . query
                ids, vecs = coll.store.all_vectors(coll.dim, faiss_ids=[c.faiss_id])
                assert c.dense_score == pytest.approx(float(vecs[0] @ qv), abs=1e-5)
            dense = r.retrieve(coll, q, mode="dense")
            hits = coll.search(qv, 3)
            assert [c.chunk_id for c in dense.chunks] == [h.chunk_id for h in hits]

    def test_cjk_query_finds_cjk_chunk(self, tiny_ws, tmp_path) -> None:
        files = [
            _write(tmp_path / "docs" / "zh.txt", "东京大学是日本最著名的国立大学之一，位于东京都文京区。"),
            _write(tmp_path / "docs" / "zh2.txt", "长江是中国最长的河流，流经上海。"),
            _write(tmp_path / "docs" / "en.txt", "The University of Tokyo is a public research university."),
        ]
        tiny_ws.ingest(files, "c")
        r = Retriever(tiny_ws.embedder, RetrieverConfig(mode="bm25", k=3))
        with tiny_ws.open("c", readonly=True) as coll:
            ret = r.retrieve(coll, "东京大学在哪里？")
            assert ret.chunks[0].source == str(files[0])
            assert all(c.source != str(files[2]) for c in ret.chunks)
            ret = r.retrieve(coll, "中国最长的河流")
            assert ret.chunks[0].source == str(files[1])


# -- slow: the real bundled embedder on the SQuAD sample ----------------------------------------


class _CachedQueries:
    """The workspace embedder with the benchmark questions embedded once, in one batch."""

    def __init__(self, embedder, questions: list[str]) -> None:
        self.name, self.dim = embedder.name, embedder.dim
        self._inner = embedder
        self._vecs = dict(zip(questions, embedder.embed_documents(questions)))

    def embed_query(self, text: str) -> np.ndarray:
        v = self._vecs.get(text)
        return v if v is not None else self._inner.embed_query(text)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_squad_recall_at_4(tmp_path) -> None:
    from ingest.workspace import Workspace

    ws = Workspace(tmp_path / "home", IngestConfig())
    ws.ingest([SQUAD], "squad")
    from ingest.squad import iter_questions, read_squad

    qas = [
        (q.question, article.title, paragraph.index)
        for article, paragraph, q in iter_questions(read_squad(SQUAD))
        if not q.is_impossible
    ]
    questions = list(dict.fromkeys(q for q, _, _ in qas))
    r = Retriever(_CachedQueries(ws.embedder, questions), RetrieverConfig(k=4))
    recall = {}
    with ws.open("squad", readonly=True) as coll:
        for mode in ("dense", "bm25", "hybrid"):
            hits = 0
            for question, title, paragraph in qas:
                ret = r.retrieve(coll, question, mode=mode)
                hits += any(c.title == title and c.metadata.get("paragraph") == paragraph for c in ret.chunks)
            recall[mode] = hits / len(qas)
    logging.getLogger(__name__).info("SQuAD recall@4 over %d answerable questions: %s", len(qas), recall)
    print(f"recall@4 ({len(qas)} answerable questions): {recall}")
    assert recall["hybrid"] >= 0.85
    assert recall["hybrid"] >= recall["dense"]  # hybrid stays the better default
