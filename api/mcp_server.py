"""``ragqa mcp``: the workspace's collections as Model Context Protocol tools, for AI agents.

Three read-only tools over one :class:`~api.factory.RagStack` (the models load on the first
``search`` or ``ask`` and then serve every later call of the server process):

* ``list_collections()`` — the collections, with their document and chunk counts;
* ``search(collection, query, k)`` — the chunks nearest to a query (as ``ragqa search``);
* ``ask(collection, question, mode, k, adapter, style)`` — an answer with its citations (as ``ragqa ask``).

Inputs are bounded by the schema (question length and ``k`` from :class:`api.settings.ServerConfig`,
the same limits as the REST API). A collection or adapter name is only ever looked up among the
workspace's own names, never used as a path; an unknown one is a tool error that names the available
ones. Errors the packages anticipate (:class:`ingest.errors.IngestError`, :class:`rag.errors.RagError`)
become tool errors with their message; anything else is logged with its traceback on stderr.
"""

# No ``from __future__ import annotations`` in this module: the SDK builds each tool's input schema from
# its signature, and the bounds in those annotations are built from the settings inside build_server.

import inspect
import logging
import threading
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from api.factory import RagStack
from ingest.errors import IngestError
from rag.config import QAConfig

logger = logging.getLogger(__name__)

SERVER_NAME = "ragqa"
NAME_MAX_CHARS = 64  # collection (ingest.collection.NAME_RE) and adapter names
SEARCH_DEFAULT_K = 5
Mode = QAConfig.model_fields["mode"].annotation  # Literal["stuff", "rag-sequence", "rag-token"]
Style = Literal["short", "full"]
INSTRUCTIONS = (
    "ragqa answers questions from the user's own document collections. Call list_collections first to see "
    "what is there. Use search to read the passages nearest to a query, and ask for an answer generated "
    "from those passages with numbered citations. An answer with abstained=true means the collection "
    "does not hold the answer: say so rather than guessing."
)


class CollectionInfo(BaseModel):
    name: str
    documents: int | None = Field(None, description="Documents in the collection (None when it cannot be opened).")
    chunks: int | None = Field(None, description="Indexed chunks.")
    error: str | None = Field(None, description="Why the collection cannot be opened, if it cannot.")


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class SearchHitOut(BaseModel):
    rank: int = Field(description="1 = nearest.")
    title: str
    source: str = Field(description="Where the chunk's document came from (a file path or URL as ingested).")
    score: float = Field(description="Cosine similarity between query and chunk.")
    text: str
    chunk_id: str
    doc_id: str


class SearchResult(BaseModel):
    collection: str
    query: str
    hits: list[SearchHitOut]


class CitationOut(BaseModel):
    index: int = Field(description="The number an inline marker [n] in the answer refers to.")
    title: str
    source: str
    score: float = Field(description="Retrieval score of the chunk.")
    contribution: float = Field(description="The chunk's share of the answer (0..1).")
    text: str
    chunk_id: str


class AnswerSentenceOut(BaseModel):
    text: str = Field(description="The sentence without its markers.")
    citations: list[int] = Field(description="Citation indices supporting the sentence.")
    spans: list[tuple[int, int] | None] = Field(
        description="Per cited index: character offsets of the supporting span in that citation's text."
    )
    quoted: bool = Field(False, description="The sentence is quoted as written from its citation, not generated.")


class AskResult(BaseModel):
    collection: str
    question: str
    answer: str = Field(description="The answer; inline markers [n] refer to citations[].index.")
    abstained: bool = Field(description="True when ragqa declined to answer from this collection.")
    abstain_reason: str | None = None
    mode: str
    adapter: str | None = None
    style: str | None = Field(None, description="short or full, where this ragqa has answer styles.")
    citations: list[CitationOut]
    sentences: list[AnswerSentenceOut] | None = Field(
        None, description="The answer's sentences with the citations of each (where this ragqa has answer styles)."
    )
    total_s: float | None = Field(None, description="Seconds spent answering.")


def _answer_errors() -> tuple[type[Exception], ...]:
    """The error roots an answer can anticipate (imported late: rag pulls in torch)."""
    from rag.errors import RagError

    return (IngestError, RagError)


class RagTools:
    """What the tools do, on one :class:`RagStack`. Model work is serialised: one call at a time holds the models
    (the SDK runs each call on a worker thread; this also makes the lazy loading of the models happen once)."""

    def __init__(self, rag: RagStack) -> None:
        self.rag = rag
        self._lock = threading.Lock()

    # -- checks -----------------------------------------------------------------------------
    def check_collection(self, name: str) -> str:
        """``name`` when it is one of the workspace's collections; a tool error naming them otherwise."""
        available = self.rag.workspace.list_collections()
        if name not in available:
            listing = ", ".join(available) if available else "none yet (create one with `ragqa ingest PATH -c NAME`)"
            raise ToolError(f"unknown collection {name!r}; available collections: {listing}")
        return name

    def check_adapter(self, name: str | None) -> str | None:
        from rag.adapter_defaults import NO_ADAPTER

        if not name or name == NO_ADAPTER:
            return name or None
        available = self.rag.generator.list_adapters()
        if name not in available:
            listing = ", ".join(available) if available else "none (train one with `ragqa finetune`)"
            raise ToolError(f"unknown adapter {name!r}; available adapters: {listing}")
        return name

    @staticmethod
    def check_text(field: str, text: str) -> str:
        if not text.strip():
            raise ToolError(f"the {field} is empty")
        return text

    # -- tools ------------------------------------------------------------------------------
    def list_collections(self) -> CollectionList:
        ws = self.rag.workspace
        infos = []
        for name in ws.list_collections():
            try:
                with ws.open(name, readonly=True, check_embedder=False) as coll:
                    info = coll.info()
                infos.append(CollectionInfo(name=name, documents=info.get("documents"), chunks=info.get("chunks")))
            except IngestError as exc:
                infos.append(CollectionInfo(name=name, error=str(exc)))
        return CollectionList(collections=infos)

    def search(self, collection: str, query: str, k: int) -> SearchResult:
        self.check_collection(collection)
        self.check_text("query", query)
        try:
            with self._lock:
                hits = self.rag.workspace.search(query, collection, k)
        except IngestError as exc:
            raise ToolError(str(exc)) from exc
        return SearchResult(
            collection=collection,
            query=query,
            hits=[
                SearchHitOut(
                    rank=rank,
                    title=h.title,
                    source=h.source,
                    score=round(float(h.score), 6),
                    text=h.text,
                    chunk_id=h.chunk_id,
                    doc_id=h.doc_id,
                )
                for rank, h in enumerate(hits, 1)
            ],
        )

    def ask(
        self,
        collection: str,
        question: str,
        mode: str | None = None,
        k: int | None = None,
        adapter: str | None = None,
        style: str | None = None,
    ) -> AskResult:
        self.check_collection(collection)
        self.check_text("question", question)
        options: dict[str, Any] = {"mode": mode, "k": k}
        try:
            with self._lock:
                options["adapter"] = self.check_adapter(adapter)
                qa = self.rag.qa
                if style is not None:
                    if "style" not in inspect.signature(qa.answer).parameters:
                        raise ToolError("this ragqa version has no answer styles; leave style out")
                    options["style"] = style
                with self.rag.workspace.open(collection, readonly=True) as coll:
                    ans = qa.answer(coll, question, **options)
        except _answer_errors() as exc:
            raise ToolError(str(exc)) from exc
        sentences = getattr(ans, "sentences", None)
        return AskResult(
            collection=collection,
            question=ans.question,
            answer=ans.answer,
            abstained=ans.abstained,
            abstain_reason=ans.abstain_reason,
            mode=ans.mode,
            adapter=ans.adapter,
            style=getattr(ans, "style", None),
            citations=[
                CitationOut(
                    index=c.index,
                    title=c.title,
                    source=c.source,
                    score=round(float(c.score), 6),
                    contribution=round(float(c.contribution), 6),
                    text=c.text,
                    chunk_id=c.chunk_id,
                )
                for c in ans.citations
            ],
            sentences=None
            if sentences is None
            else [
                AnswerSentenceOut(
                    text=s.text,
                    citations=list(s.citations),
                    spans=[tuple(sp) if sp else None for sp in s.spans],
                    quoted=getattr(s, "quoted", False),
                )
                for s in sentences
            ],
            total_s=ans.timings.get("total_s"),
        )


def build_server(rag: RagStack) -> MCPServer:
    """The MCP server over ``rag``'s workspace (nothing is loaded until the first search or ask)."""
    tools = RagTools(rag)
    limits = rag.settings.server
    max_k = limits.max_k
    read_only = ToolAnnotations(
        read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    )

    CollectionArg = Annotated[
        str, Field(min_length=1, max_length=NAME_MAX_CHARS, description="Collection name (see list_collections).")
    ]
    QueryArg = Annotated[
        str, Field(min_length=1, max_length=limits.max_question_chars, description="What to look for.")
    ]
    QuestionArg = Annotated[
        str, Field(min_length=1, max_length=limits.max_question_chars, description="The question, in plain words.")
    ]
    SearchK = Annotated[int, Field(ge=1, le=max_k, description=f"How many chunks (1..{max_k}).")]
    AskK = Annotated[
        int | None,
        Field(ge=1, le=max_k, description=f"Chunks retrieved as evidence (1..{max_k}; default from config)."),
    ]
    ModeArg = Annotated[
        Mode | None,  # type: ignore[valid-type]
        Field(description="Generation mode (default from config): stuff, rag-sequence or rag-token."),
    ]
    AdapterArg = Annotated[
        str | None, Field(max_length=NAME_MAX_CHARS, description="A trained LoRA adapter's name (default: none).")
    ]
    StyleArg = Annotated[
        Style | None, Field(description="short: a few words; full: a few sentences with [n] markers (default: config).")
    ]

    server: MCPServer = MCPServer(SERVER_NAME, title="ragqa", instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(annotations=read_only)
    def list_collections() -> CollectionList:
        """List the document collections this ragqa workspace can search and answer from."""
        return tools.list_collections()

    @server.tool(annotations=read_only)
    def search(collection: CollectionArg, query: QueryArg, k: SearchK = min(SEARCH_DEFAULT_K, max_k)) -> SearchResult:
        """Find the passages of a collection nearest to a query, with title, source, similarity score and text."""
        return tools.search(collection, query, k)

    @server.tool(annotations=read_only)
    def ask(
        collection: CollectionArg,
        question: QuestionArg,
        mode: ModeArg = None,
        k: AskK = None,
        adapter: AdapterArg = None,
        style: StyleArg = None,
    ) -> AskResult:
        """Answer a question from a collection's documents, with numbered citations (index, title, source, score,
        contribution, text). abstained=true means the collection does not hold the answer."""
        return tools.ask(collection, question, mode=mode, k=k, adapter=adapter, style=style)

    return server
