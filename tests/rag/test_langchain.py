"""LangChain adapters: the retriever and the QA Runnable compose into LangChain chains."""

from __future__ import annotations

import pytest
from langchain_core.runnables import RunnableLambda

from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
from ingest.workspace import Workspace
from rag.config import GeneratorConfig, QAConfig, RetrieverConfig
from rag.generator import Generator
from rag.langchain import RagqaQAChain, RagqaRetriever
from rag.qa import QAPipeline
from rag.retriever import Retriever


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_st_model, tiny_llm):
    root = tmp_path_factory.mktemp("lc")
    (root / "a.txt").write_text("The Normans were a people of Normandy in northern France.")
    (root / "b.txt").write_text("Southern California is a megaregion with ten counties.")
    ws = Workspace(
        root / "home",
        IngestConfig(
            embedder=EmbedderConfig(model=str(tiny_st_model)),
            chunking=ChunkingConfig(chunk_tokens=64, overlap_tokens=8),
        ),
    )
    ws.ingest([root / "a.txt", root / "b.txt"], "c")
    coll = ws.open("c", readonly=True)
    retriever = Retriever(ws.embedder, RetrieverConfig(k=2))
    gen = Generator(GeneratorConfig(model=str(tiny_llm)), root / "home" / "models")
    yield coll, retriever, QAPipeline(retriever, gen, QAConfig(max_new_tokens=4, answer_style="short"))
    coll.close()


def test_retriever_returns_langchain_documents(parts):
    coll, retriever, _ = parts
    lc = RagqaRetriever(retriever=retriever, collection=coll, k=2)
    docs = lc.invoke("Who were the Normans?")
    assert len(docs) == 2
    assert {d.metadata["title"] for d in docs} == {"a", "b"}
    assert sum(d.metadata["posterior"] for d in docs) == pytest.approx(1.0, abs=1e-4)
    # Composes with other runnables.
    chain = lc | RunnableLambda(lambda ds: [d.metadata["source"] for d in ds])
    assert len(chain.invoke("Normandy")) == 2


def test_qa_runnable_invoke_batch_and_stream(parts):
    coll, _, pipeline = parts
    chain = RagqaQAChain(pipeline=pipeline, collection=coll)
    out = chain.invoke({"question": "Who were the Normans?", "mode": "rag-token"})
    assert out["mode"] == "rag-token" and len(out["citations"]) == 2 and "answer" in out
    answers = chain.batch(["Who were the Normans?", "How many counties?"])
    assert len(answers) == 2
    pieces = list(chain.stream("Who were the Normans?"))
    assert "".join(pieces).strip()
    composed = RunnableLambda(lambda q: q.upper()) | chain | RunnableLambda(lambda a: a["abstained"])
    assert composed.invoke("who were the normans?") in (True, False)
    with pytest.raises(ValueError, match="question"):
        chain.invoke({"q": "missing key"})
