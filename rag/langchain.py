"""LangChain adapters, so LangChain users can compose ragqa into their own chains.

* :class:`RagqaRetriever` — a ``BaseRetriever`` over a collection (hybrid search, filters,
  posterior and scores in each ``Document.metadata``).
* :class:`RagqaQAChain` — a ``Runnable`` for the whole QA pipeline: ``invoke("question")`` or
  ``invoke({"question": ..., "mode": ..., "k": ..., "adapter": ...})`` returns the answer dict;
  ``stream(...)`` yields text pieces as they are generated.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict

from ingest.collection import Collection
from rag.qa import QAPipeline
from rag.retriever import Retriever


class RagqaRetriever(BaseRetriever):
    """LangChain retriever over a ragqa collection."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Retriever
    collection: Collection
    k: int | None = None
    sources: list[str] | None = None
    titles: list[str] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        result = self.retriever.retrieve(self.collection, query, self.k, sources=self.sources, titles=self.titles)
        docs = []
        for c in result.chunks:
            meta = dict(c.metadata)
            meta.update(
                {
                    "chunk_id": c.chunk_id,
                    "doc_id": c.doc_id,
                    "title": c.title,
                    "source": c.source,
                    "score": c.score,
                    "dense_score": c.dense_score,
                    "posterior": c.posterior,
                }
            )
            docs.append(LCDocument(page_content=c.text, metadata=meta))
        return docs


def _request(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"question": value}
    if isinstance(value, dict) and "question" in value:
        return dict(value)
    raise ValueError("RagqaQAChain input is a question string or a dict with a 'question' key")


class RagqaQAChain(RunnableSerializable[Any, dict]):
    """The whole ragqa QA pipeline as a LangChain Runnable."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: QAPipeline
    collection: Collection

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict:
        req = _request(input)
        ans = self.pipeline.answer(
            self.collection,
            req["question"],
            mode=req.get("mode"),
            k=req.get("k"),
            adapter=req.get("adapter"),
        )
        return ans.to_dict()

    # Streams the answer text, not partial output dicts: a deliberate departure from Runnable.stream's signature.
    def stream(  # type: ignore[override]
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[str]:
        """Yield the answer text piece by piece as the generator produces it."""
        req = _request(input)
        pieces: queue.Queue = queue.Queue()
        done = object()
        error: list[BaseException] = []

        def work() -> None:
            try:
                self.pipeline.answer(
                    self.collection,
                    req["question"],
                    mode=req.get("mode"),
                    k=req.get("k"),
                    adapter=req.get("adapter"),
                    on_token=pieces.put,
                )
            except BaseException as exc:  # re-raised in the caller's thread
                error.append(exc)
            finally:
                pieces.put(done)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while (item := pieces.get()) is not done:
            yield item
        thread.join()
        if error:
            raise error[0]
