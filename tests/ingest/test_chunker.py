"""Chunker: sized in the embedder's tokens, sentence/CJK boundaries, headings, deterministic ids."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from ingest.chunker import Chunker
from ingest.config import ChunkingConfig
from ingest.documents import Document
from tests.conftest import bundled_embedder_dir


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_embedder_dir())


def ntok(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=True))


class TestChunker:
    def test_no_chunk_exceeds_the_embedder_limit(self, tokenizer):
        chunker = Chunker.for_tokenizer(
            ChunkingConfig(chunk_tokens=10_000, overlap_tokens=20), tokenizer, max_tokens=256
        )
        text = " ".join(f"Sentence number {i} talks about retrieval and generation." for i in range(400))
        doc = Document(text=text, source="/x.txt", title="X")
        chunks = chunker.chunk(doc)
        assert len(chunks) > 5
        assert max(ntok(tokenizer, c.text) for c in chunks) <= 256
        # Nothing lost: every sentence appears in some chunk.
        joined = " ".join(c.text for c in chunks)
        assert all(f"Sentence number {i} " in joined for i in range(400))

    def test_chunk_size_and_overlap_in_tokens(self, tokenizer):
        chunker = Chunker.for_tokenizer(ChunkingConfig(chunk_tokens=50, overlap_tokens=10), tokenizer, max_tokens=256)
        text = " ".join(f"Fact {i} is here." for i in range(200))
        chunks = chunker.chunk(Document(text=text, source="/y.txt"))
        assert all(ntok(tokenizer, c.text) - 2 <= 50 for c in chunks)
        # Consecutive chunks overlap (the next one starts before the previous one ends).
        starts = [c.metadata["start"] for c in chunks]
        ends = [c.metadata["start"] + len(c.text) for c in chunks]
        assert any(s < e for s, e in zip(starts[1:], ends[:-1]))

    def test_sentence_boundaries_latin_and_cjk(self, tokenizer):
        chunker = Chunker.for_tokenizer(ChunkingConfig(chunk_tokens=24, overlap_tokens=0), tokenizer, max_tokens=256)
        cjk = "检索增强生成结合了检索器和生成器。它先找到相关文档！然后生成答案？这很有用。" * 3
        chunks = chunker.chunk(Document(text=cjk, source="/zh.txt"))
        assert len(chunks) > 1
        assert all(c.text[-1] in "。！？" for c in chunks)
        latin = "The cat sat on the mat. The dog ran away quickly! Did the bird sing a song? " * 4
        chunks = chunker.chunk(Document(text=latin, source="/en.txt"))
        assert len(chunks) > 1 and all(c.text[-1] in ".!?" for c in chunks)

    def test_headings_and_title_in_metadata(self, tokenizer):
        chunker = Chunker.for_tokenizer(ChunkingConfig(chunk_tokens=40, overlap_tokens=0), tokenizer, max_tokens=256)
        doc = Document(
            text="",
            source="/guide.md",
            title="Guide",
            sections=[
                (["Guide"], "Intro text. " * 3),
                (["Guide", "Install"], "Run make demo. " * 20),
                (["Guide", "Use"], "Ask a question. " * 5),
            ],
            metadata={"format": "markdown"},
        )
        chunks = chunker.chunk(doc)
        paths = [c.metadata.get("headings") for c in chunks]
        assert ["Guide", "Install"] in paths and ["Guide", "Use"] in paths
        assert all(c.metadata["title"] == "Guide" and c.metadata["source"] == "/guide.md" for c in chunks)
        assert all(c.metadata["format"] == "markdown" for c in chunks)
        use = [c for c in chunks if c.metadata.get("headings") == ["Guide", "Use"]]
        assert use and all("Ask a question" in c.text for c in use)

    def test_deterministic_ids(self, tokenizer):
        chunker = Chunker.for_tokenizer(ChunkingConfig(chunk_tokens=30, overlap_tokens=5), tokenizer, max_tokens=256)
        doc = Document(text="Alpha beta gamma. " * 50, source="/d.txt")
        a = [(c.chunk_id, c.faiss_id) for c in chunker.chunk(doc)]
        b = [(c.chunk_id, c.faiss_id) for c in chunker.chunk(Document(text="Alpha beta gamma. " * 50, source="/d.txt"))]
        assert a == b and len(set(a)) == len(a)
        other = [c.chunk_id for c in chunker.chunk(Document(text="Alpha beta gamma. " * 50, source="/e.txt"))]
        assert not set(other) & {i for i, _ in a}
        assert all(0 <= f < 2**63 for _, f in a)

    def test_overlap_must_be_smaller(self):
        with pytest.raises(ValueError, match="overlap_tokens"):
            ChunkingConfig(chunk_tokens=32, overlap_tokens=32)
