"""Request and response bodies of the REST API (schema ladder: ``*Create`` in, ``*Public`` out,
lists as ``{data, count}``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors --------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. collection_not_found.")
    message: str = Field(description="What went wrong and what to do.")


class ErrorBody(BaseModel):
    error: ErrorDetail


# -- collections ---------------------------------------------------------------------------
class CollectionCreate(_In):
    name: str = Field(
        description="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.", examples=["docs"]
    )
    index: Literal["flat", "ivf", "hnsw", "ivfpq"] | None = Field(
        None, description="FAISS index kind (default from config)."
    )


class CalibrationPublic(BaseModel):
    """The collection's own abstention threshold (rag/calibration.py), recomputed after every change."""

    min_score: float | None = Field(
        description="Calibrated abstain_min_score: answers abstain when the best evidence cosine is below it "
        "(used unless the server sets qa.abstain_min_score; null: too few answerable queries, threshold off)."
    )
    generation: int = Field(description="Store generation it was computed for.")
    embedder: str
    n_answerable: int = Field(description="Answerable queries (made from sampled chunks of the collection).")
    n_unanswerable: int = Field(description="Unanswerable queries (general-knowledge probe questions).")
    probe_score: float | None = Field(None, description="The probe scores' probe_quantile.")
    cap_score: float | None = Field(None, description="The answerable scores' cap_quantile: min_score's ceiling.")
    probe_quantile: float
    cap_quantile: float
    margin: float
    seconds: float
    computed_at: float


class CollectionPublic(BaseModel):
    name: str
    embedder: str
    dim: int
    index: str = Field(description="Configured FAISS index kind.")
    index_built: str = Field(description="Kind actually built for the current size (small collections stay flat).")
    files: int
    documents: int
    chunks: int
    generation: int = Field(description="Store generation: bumped by every committed change.")
    created_at: float | None = None
    chunking: dict[str, Any] = {}
    calibration: CalibrationPublic | None = Field(None, description="Abstention calibration; null before the first.")


class CollectionsPublic(BaseModel):
    data: list[CollectionPublic]
    count: int


class Deleted(BaseModel):
    deleted: int
    ok: bool = True


# -- documents -----------------------------------------------------------------------------
class DocumentPublic(BaseModel):
    doc_id: str
    source: str
    filename: str = Field(description="File name of the source (the upload's sanitised name).")
    key: str
    title: str
    chunks: int
    chars: int
    created_at: float
    metadata: dict[str, Any] = {}


class DocumentsPublic(BaseModel):
    data: list[DocumentPublic]
    count: int = Field(description="Documents in the collection (or matching the source filter).")


# -- jobs ----------------------------------------------------------------------------------
class JobFile(BaseModel):
    filename: str
    original: str
    size: int
    status: Literal["pending", "added", "replaced", "unchanged", "failed"]
    error: str | None = None
    documents: int = 0
    chunks: int = 0


class JobProgress(BaseModel):
    total: int
    processed: int
    fraction: float
    added: int
    replaced: int
    unchanged: int
    failed: int


class JobPublic(BaseModel):
    job_id: str
    collection: str
    status: Literal["queued", "running", "done", "failed"]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    progress: JobProgress
    files: list[JobFile]
    errors: list[dict[str, Any]] = Field(description="Per-file errors: [{filename, error}].")


class JobAccepted(BaseModel):
    job_id: str
    status: str
    collection: str
    files: int
    url: str = Field(description="Poll this for status and progress.")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


# -- ask -----------------------------------------------------------------------------------
class AskRequest(_In):
    question: str = Field(min_length=1, examples=["Which FAISS index type is exact?"])
    collection: str = Field(examples=["docs"])
    mode: Literal["stuff", "rag-sequence", "rag-token"] | None = Field(None, description="Default from config.")
    k: int | None = Field(None, ge=1, le=1000, description="Chunks retrieved (default from config).")
    adapter: str | None = Field(
        None,
        description="LoRA adapter name; omitted: the collection's default adapter (else the server's, else the "
        "shipped one); 'none': the bare model.",
    )
    stream: bool = Field(False, description="Answer as Server-Sent Events: `token` events, then one `answer` event.")
    answer_style: Literal["short", "full"] | None = Field(
        None,
        description="'full': a few sentences with inline citation markers [n]; 'short': a few words copied from "
        "the context. Default from config ('full').",
    )
    conversation_id: str | None = Field(
        None,
        description="Continue this conversation: the question is made standalone from its history. "
        "Absent: a new conversation starts (its id is in the answer).",
    )


class CitationPublic(BaseModel):
    index: int
    chunk_id: str
    doc_id: str
    title: str
    source: str
    text: str
    score: float = Field(description="Dense cosine of the chunk to the question.")
    posterior: float = Field(description="p(z|x) of the chunk.")
    contribution: float = Field(description="The chunk's share of the answer.")
    metadata: dict[str, Any] = {}


class AnswerSentencePublic(BaseModel):
    text: str = Field(description="The sentence, without citation markers.")
    citations: list[int] = Field(description="Citation indices (1-based) this sentence cites.")
    spans: list[tuple[int, int] | None] = Field(
        description="Aligned with citations: [start, end) char offsets in that citation's text of the supporting "
        "span, or null."
    )
    quoted: bool = Field(
        False, description="Full style: the sentence is quoted as written from its citation, not generated."
    )


class AnswerPublic(BaseModel):
    answer_id: str
    question: str
    answer: str
    abstained: bool
    abstain_reason: str | None = None
    collection: str
    collection_generation: int
    mode: str
    model: str
    adapter: str | None = Field(None, description="The LoRA adapter that answered (None: the bare model).")
    adapter_source: str = Field(
        "none",
        description="Why that adapter answered: 'request' (named), 'collection' or 'server' (a promoted default), "
        "'shipped' (the bundled model's reader adapter) or 'none' (the bare model).",
    )
    k: int
    citations: list[CitationPublic]
    generated_tokens: int = 0
    mean_token_logprob: float | None = None
    idk_margin: float | None = Field(
        None,
        description="Mean per-token log p(\"I don't know.\") minus the answer's; > 0: the model prefers to abstain.",
    )
    max_retrieval_score: float | None = None
    timings: dict[str, float]
    style: str = Field("short", description="The answer style: 'short' or 'full'.")
    sentences: list[AnswerSentencePublic] = Field(
        [], description="The answer sentence by sentence, with the citations of each (abstentions: none)."
    )
    fallback: Literal["extractive", "abstain"] | None = Field(
        None,
        description="Full style, when the documents support no generated sentence: 'extractive' (the answer quotes "
        "the retrieved sentences that best match the question, with their citation) or 'abstain' (\"I don't "
        "know.\"); null: the answer is the model's own.",
    )
    sentences_left_out: int = Field(
        0, description="Full style: generated sentences left out because the retrieved chunks do not support them."
    )
    conversation_id: str | None = Field(None, description="The conversation this answer is a turn of.")
    standalone_question: str | None = Field(
        None, description="The question as retrieved and answered, made standalone from the conversation's history."
    )


# -- conversations -------------------------------------------------------------------------
class ConversationPublic(BaseModel):
    conversation_id: str
    collection: str
    title: str = Field(description="The first question.")
    turns: int
    created_at: float
    updated_at: float


class ConversationsPublic(BaseModel):
    data: list[ConversationPublic]
    count: int


class TurnPublic(BaseModel):
    question: str
    standalone_question: str
    answer: str
    answer_id: str | None = None
    created_at: float


class ConversationDetail(ConversationPublic):
    data: list[TurnPublic] = Field(description="The turns, oldest first.")


# -- feedback ------------------------------------------------------------------------------
class FeedbackCreate(_In):
    rating: Literal["up", "down"]
    correction: str | None = Field(None, max_length=10000, description="The answer it should have been.")
    comment: str | None = Field(None, max_length=10000)


class FeedbackPublic(BaseModel):
    feedback_id: int
    answer_id: str
    rating: str
    correction: str | None = None
    comment: str | None = None
    created_at: float


# -- adapters ------------------------------------------------------------------------------
class AdapterPublic(BaseModel):
    name: str = Field(description="Pass it as `adapter` to POST /v1/ask.")
    base_model: str | None = Field(
        None, description="The model the adapter was trained on (ragqa_adapter.json, else adapter_config.json)."
    )
    metadata: dict[str, Any] = Field(
        {},
        description="The adapter's ragqa_adapter.json (how it was trained), if any; a server path in it is shown by "
        "its last part (a file or folder name).",
    )


class AdaptersPublic(BaseModel):
    data: list[AdapterPublic]
    count: int


# -- OpenAI-compatible ---------------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's request; unknown fields (temperature, max_tokens, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="A collection name, or 'ragqa:<collection>'.", examples=["ragqa:docs"])
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


# -- health --------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    auth: bool
    models: dict[str, Any]
    worker_alive: bool
    jobs: dict[str, int]
    collections: int
