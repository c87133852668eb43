"""The server's use cases, behind the routes: collections, documents, uploads, questions, feedback.

One :class:`RagService` per app, built in the lifespan by :func:`build_service`: the models load
once (embedder, generator) and are shared by every request; model calls run in worker threads
(the generator serialises itself with its session lock). Every use case returns a typed result
(the response models of :mod:`api.schemas`) or raises an :mod:`api.errors` exception; the routes
only translate HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from api.answers import AnswerLog
from api.auth import ApiKey, KeyStore
from api.backpressure import Deadline, refusal, remaining_s
from api.conversations import ConversationStore, new_conversation_id
from api.db import server_db_path
from api.errors import (
    ApiError,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
    from_core,
)
from api.factory import RagStack
from api.jobs import (
    IngestWorker,
    JobStore,
    UploadStorage,
    WriterGate,
    auto_workers,
    name_key,
    new_job_id,
    sanitize_filename,
)
from api.metrics import Metrics
from api.public_paths import PublicPaths, model_name
from api.readers import ReaderCache
from api.schemas import (
    AdapterPublic,
    AnswerPublic,
    CollectionPublic,
    ConversationDetail,
    ConversationPublic,
    ConversationsPublic,
    DocumentPublic,
    DocumentsPublic,
    FeedbackPublic,
    Health,
    JobAccepted,
    JobPublic,
)
from api.settings import Settings
from ingest.errors import IngestError
from rag.calibration import calibrate_if_stale
from rag.conversation import Turn
from rag.scheduler import RequestCancelledError
from rag.serving_errors import DeadlineExceededError, ServingError

logger = logging.getLogger(__name__)

COPY_BLOCK = 1 << 20


@dataclass
class Upload:
    """One file of an upload request: its client-side name and a binary file object."""

    filename: str
    file: Any  # has .read(n)


@dataclass
class RagService:
    settings: Settings
    workspace: Any
    qa: Any
    readers: ReaderCache
    jobs: JobStore
    worker: IngestWorker
    storage: UploadStorage
    gate: WriterGate
    answers: AnswerLog
    keys: KeyStore
    metrics: Metrics
    conversations: ConversationStore
    started_at: float = field(default_factory=time.time)
    paths: PublicPaths = field(init=False)
    _answer_limiter: anyio.CapacityLimiter | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.paths = PublicPaths(self.storage.root, [self.settings.home])
        self._version: str | None = None

    def core_error(self, exc: Exception) -> ApiError:
        """:func:`~api.errors.from_core` with the server's folders taken out of the message."""
        err = from_core(exc)
        err.message = self.paths.text(err.message) or err.message
        return err

    # -- access -------------------------------------------------------------------------
    def check_access(self, key: ApiKey, collection: str) -> None:
        """Another tenant's collection does not exist for this key: 404, same as a missing one."""
        if not key.allows(collection):
            raise NotFound(f"collection {collection!r} not found", code="collection_not_found")

    # -- collections --------------------------------------------------------------------
    def _info(self, name: str) -> dict[str, Any]:
        try:
            with self.readers.lease(name) as (coll, _gen):
                info = coll.info()
        except IngestError as exc:
            raise self.core_error(exc) from exc
        info["embedder"] = model_name(info["embedder"])  # a folder's name, never the server's path
        if isinstance(info.get("calibration"), dict) and isinstance(info["calibration"].get("embedder"), str):
            info["calibration"] = {**info["calibration"], "embedder": model_name(info["calibration"]["embedder"])}
        return info

    def list_collections(self, key: ApiKey) -> list[CollectionPublic]:
        out = []
        for name in self.workspace.list_collections():
            if not key.allows(name):
                continue
            try:
                out.append(CollectionPublic.model_validate(self._info(name)))
            except NotFound:
                continue  # deleted meanwhile
        return out

    def get_collection(self, key: ApiKey, name: str) -> CollectionPublic:
        self.check_access(key, name)
        return CollectionPublic.model_validate(self._info(name))

    def create_collection(self, key: ApiKey, name: str, index: str | None) -> CollectionPublic:
        from ingest.collection import Collection

        self.check_access(key, name)
        cfg = self.settings.ingest
        index_cfg = cfg.index.model_copy(update={"kind": index}) if index else cfg.index
        emb = self.workspace.embedder
        try:
            coll = Collection.create(
                self.workspace.collections_dir,
                name,
                embedder_name=emb.name,
                dim=emb.dim,
                chunking=cfg.chunking,
                index=index_cfg,
            )
            coll.close()
        except IngestError as exc:
            raise self.core_error(exc) from exc
        return CollectionPublic.model_validate(self._info(name))

    def delete_collection(self, key: ApiKey, name: str) -> None:
        self.check_access(key, name)
        try:
            with self.gate.hold(name, timeout=self.settings.server.writer_wait_s):
                self.readers.drop(name)
                self.workspace.delete(name)
                failed = self.jobs.fail_collection(name, f"collection {name!r} was deleted")
                self.storage.remove_collection(name)
        except IngestError as exc:
            raise self.core_error(exc) from exc
        # What the server kept about the collection goes with it (see README "Data retention").
        redacted = self.answers.redact_collection(name)
        conversations = self.conversations.delete_collection(name)
        if failed:
            logger.info("deleting %s failed %d unfinished job(s)", name, len(failed))
        logger.info(
            "deleted collection %s: %d logged answer(s) redacted, %d conversation(s) deleted",
            name,
            redacted,
            conversations,
        )

    # -- documents ----------------------------------------------------------------------
    def list_documents(self, key: ApiKey, name: str, source: str | None, limit: int, offset: int) -> DocumentsPublic:
        self.check_access(key, name)
        source = self._resolve_source(name, source) if source else None
        try:
            with self.readers.lease(name) as (coll, _gen):
                rows = coll.store.list_documents(source=source, limit=limit, offset=offset)
                total = len(coll.store.list_documents(source=source)) if source else coll.store.count_documents()
        except IngestError as exc:
            raise self.core_error(exc) from exc
        data = [
            DocumentPublic(
                doc_id=r.doc_id,
                source=self.paths.source(r.source),
                filename=self.paths.source(r.source).replace("\\", "/").rsplit("/", 1)[-1],
                key=r.key,
                title=r.title,
                chunks=r.n_chunks,
                chars=r.n_chars,
                created_at=r.created_at,
                metadata=self.paths.metadata(r.metadata),
            )
            for r in rows
        ]
        return DocumentsPublic(data=data, count=total)

    def _resolve_source(self, name: str, source: str) -> str:
        """A source as stored, or an uploaded file's name (mapped to its stable upload path)."""
        if "/" in source or "\\" in source:
            return source
        return str(self.storage.stable_path(name, sanitize_filename(source)))

    def delete_documents(self, key: ApiKey, name: str, doc_ids: list[str], sources: list[str]) -> int:
        self.check_access(key, name)
        if not doc_ids and not sources:
            raise Unprocessable(
                "name what to delete: a document id, or ?source=<source or uploaded file name>",
                code="nothing_to_delete",
            )
        resolved = [self._resolve_source(name, s) for s in sources]
        try:
            with (
                self.gate.hold(name, timeout=self.settings.server.writer_wait_s),
                self.workspace.open(name, check_embedder=False) as coll,
            ):
                gone = coll.store.get_documents(doc_ids) + [r for s in resolved for r in coll.store.list_documents(s)]
                n = coll.delete_documents(doc_ids=doc_ids, sources=resolved)
                if n:
                    calibrate_if_stale(coll, lambda: self.workspace.embedder, quiet=True)
                left = {r.source for r in gone if coll.store.list_documents(r.source, limit=1)}
        except IngestError as exc:
            raise self.core_error(exc) from exc
        if n == 0:
            what = ", ".join(doc_ids + sources)
            raise NotFound(
                f"no document matched {what!r} in {name!r}; list them with GET /v1/collections/{name}/documents",
                code="document_not_found",
            )
        self._forget_documents(name, {r.doc_id for r in gone}, {r.source for r in gone} - left)
        return n

    def _forget_documents(self, name: str, doc_ids: set[str], sources: set[str]) -> None:
        """After documents were deleted: their uploaded files (once no document of the file is left) go from the
        disk, and the logged answers and conversation turns that cited them are redacted."""
        uploads = self.storage.collection_dir(name).resolve()
        for source in sources:
            path = Path(source)
            if path.parent == uploads:
                path.unlink(missing_ok=True)
        redacted = self.answers.redact_citing(name, doc_ids=doc_ids, sources=sources)
        turns = self.conversations.delete_turns_of(redacted)
        logger.info(
            "deleted %d document(s) of %s: %d logged answer(s) redacted, %d conversation turn(s) deleted",
            len(doc_ids),
            name,
            len(redacted),
            turns,
        )

    # -- uploads ------------------------------------------------------------------------
    def submit_upload(self, key: ApiKey, name: str, files: list[Upload]) -> JobAccepted:
        """Stage the files and queue a job; raises 404/413/415/422 before anything is queued."""
        cfg = self.settings.server
        self.check_access(key, name)
        if not (self.workspace.collections_dir / name / "store.sqlite").exists():
            raise NotFound(
                f"collection {name!r} not found; create it with POST /v1/collections", code="collection_not_found"
            )
        if not files:
            raise Unprocessable("no files in the upload; send them as multipart field 'files'", code="no_files")
        if len(files) > cfg.max_files:
            raise PayloadTooLarge(
                f"{len(files)} files in one upload; the limit is {cfg.max_files} (split the upload)",
                code="too_many_files",
            )
        allowed = {s.lower() for s in cfg.allowed_suffixes}
        names: list[str] = []
        for f in files:
            safe = sanitize_filename(f.filename or "")
            suffix = Path(safe).suffix.lower()
            if suffix not in allowed:
                raise UnsupportedMediaType(
                    f"{f.filename!r}: file type {suffix or '(none)'!r} is not accepted; "
                    f"allowed: {', '.join(sorted(allowed))}",
                    code="unsupported_file_type",
                )
            if safe in names:
                raise Unprocessable(
                    f"two files in this upload are both named {safe!r}; rename one", code="duplicate_filename"
                )
            self._check_name_free(name, f.filename or "", safe)
            names.append(safe)
        job_id = new_job_id()
        staging = self.storage.staging_dir(name, job_id)
        staging.mkdir(parents=True, exist_ok=True)
        limit = int(cfg.max_upload_mb * (1 << 20))
        rows = []
        try:
            for f, safe in zip(files, names):
                size = 0
                with open(staging / safe, "xb") as out:
                    while block := f.file.read(COPY_BLOCK):
                        size += len(block)
                        if size > limit:
                            raise PayloadTooLarge(
                                f"{f.filename!r} is larger than the limit of {cfg.max_upload_mb:g} MB",
                                code="file_too_large",
                            )
                        out.write(block)
                if size == 0:
                    raise Unprocessable(f"{f.filename!r} is empty", code="empty_file")
                rows.append({"filename": safe, "original": f.filename or "", "size": size})
            self.jobs.create(job_id, name, rows, key.key_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.worker.submit()
        return JobAccepted(job_id=job_id, status="queued", collection=name, files=len(rows), url=f"/v1/jobs/{job_id}")

    def _check_name_free(self, collection: str, original: str, safe: str) -> None:
        """409 when ``original`` would be stored as ``safe`` but ``safe`` holds (or will hold) a file uploaded
        under another name: the upload would silently replace it. Re-uploading the same name replaces, as ever."""
        stored = (self.storage.collection_dir(collection) / safe).exists()
        others = self.jobs.names_in_use(collection, safe, stored=stored)
        others.discard(name_key(original))
        if others:
            raise Conflict(
                f"{original!r} would be stored as {safe!r}, which already holds {sorted(others)[0]!r} in "
                f"{collection!r}; rename the file, or delete the other one first "
                f"(DELETE /v1/collections/{collection}/documents?source=...)",
                code="filename_conflict",
            )

    def get_job(self, key: ApiKey, job_id: str) -> JobPublic:
        job = self.jobs.get(job_id)
        if job is None or not key.allows(job["collection"]):
            raise NotFound(f"job {job_id!r} not found", code="job_not_found")
        return self._public_job(job)

    def list_jobs(self, key: ApiKey, status: str | None, limit: int) -> list[JobPublic]:
        allowed = None if key.collections is None else set(key.collections)
        return [self._public_job(job) for job in self.jobs.list(allowed, status, limit)]

    def _public_job(self, job: dict[str, Any]) -> JobPublic:
        """A job as the API shows it: errors without the server's folders."""
        text = self.paths.text
        job = {**job, "error": text(job.get("error"))}
        job["files"] = [{**f, "error": text(f.get("error"))} for f in job["files"]]
        job["errors"] = [{**e, "error": text(e.get("error"))} for e in job["errors"]]
        return JobPublic.model_validate(job)

    # -- questions ----------------------------------------------------------------------
    def check_adapter(self, key: ApiKey, adapter: str | None, *, exists: bool = True) -> None:
        """``adapter`` must be a registry name (never a path: 422) and, with ``exists``, one that this key may
        use and that exists (else 404: to a key limited to other adapters, they do not exist; a stream reports
        both alike, as an error event). ``"none"`` asks for the bare model; no adapter at all for the default."""
        from rag.adapter_defaults import NO_ADAPTER

        if not adapter or adapter == NO_ADAPTER:
            return
        from rag.adapter_store import AdapterStore, check_adapter_name
        from rag.errors import AdapterError

        try:
            check_adapter_name(adapter)
            found = not exists or AdapterStore(self.settings.adapters_dir).exists(adapter)
        except AdapterError as exc:
            raise from_core(exc) from exc
        if exists and (not found or not key.allows_adapter(adapter)):
            raise NotFound(
                f"adapter {adapter!r} not found; list the adapters you may use with GET /v1/adapters",
                code="adapter_not_found",
            )

    def validate_question(
        self, key: ApiKey, collection: str, question: str, k: int | None, adapter: str | None = None
    ) -> None:
        cfg = self.settings.server
        self.check_access(key, collection)
        self.check_adapter(key, adapter, exists=False)  # a path is refused before a stream starts
        if len(question) > cfg.max_question_chars:
            raise Unprocessable(
                f"the question has {len(question)} characters; the limit is {cfg.max_question_chars}",
                code="question_too_long",
            )
        if not question.strip():
            raise Unprocessable("the question is empty", code="invalid_question")
        if k is not None and k > cfg.max_k:
            raise Unprocessable(f"k={k} is above the limit {cfg.max_k}", code="k_too_large")
        try:
            with self.readers.lease(collection):
                pass  # 404 / 409 now, before a stream starts
        except IngestError as exc:
            raise self.core_error(exc) from exc

    def answer(
        self,
        key: ApiKey,
        collection: str,
        question: str,
        *,
        mode: str | None = None,
        k: int | None = None,
        adapter: str | None = None,
        endpoint: str = "ask",
        on_token: Callable[[str], None] | None = None,
        style: str | None = None,
        history: list[Turn] | None = None,
        conversation_id: str | None = None,
    ) -> AnswerPublic:
        """Answer (blocking: call from a worker thread); logs the answer and returns its public form.

        ``style``: ``"short"`` / ``"full"`` (None: ``QAConfig.answer_style``). With ``history`` (previous turns)
        the question is first made standalone (:meth:`standalone`); with ``conversation_id`` the turn is
        appended to that conversation."""
        from rag.generator import AdapterError
        from rag.qa import QAError
        from rag.retriever import RetrieverError

        self.check_adapter(key, adapter)
        t0 = time.perf_counter()
        on_token = self.metrics.first_token_timer(on_token, t0, endpoint=endpoint)
        asked = question
        question = self.standalone(question, history) if history else question.strip()
        serving = self.settings.serving
        try:
            left = remaining_s(serving)  # the deadline runs from the request's arrival
            if left <= 0:
                raise DeadlineExceededError(serving.request_timeout_s)
            with self.readers.lease(collection) as (coll, generation):
                ans = self.qa.answer(
                    coll,
                    question,
                    mode=mode,
                    k=k,
                    adapter=adapter,
                    on_token=on_token,
                    deadline_s=left,
                    style=style,
                )
        except (IngestError, QAError, AdapterError, RetrieverError) as exc:
            raise self.core_error(exc) from exc
        except ServingError as exc:  # queue full or deadline passed: 503 / 504
            raise refusal(exc, serving, self.metrics) from exc
        out = ans.to_dict()
        k_used = k if k is not None else self.settings.retriever.k
        self.answers.log(out, generation=generation, k=k_used, endpoint=endpoint, key_id=key.key_id)
        out["citations"] = [self._public_citation(c) for c in out.get("citations", [])]  # logged as they were
        out["model"] = model_name(str(out.get("model", "")))  # the log keeps the full path, the client the name
        out["collection_generation"] = generation
        out["k"] = k_used
        out["timings"] = {**out.get("timings", {}), "server_s": time.perf_counter() - t0}
        if conversation_id is not None or history:
            out.update(question=asked.strip(), standalone_question=question, conversation_id=conversation_id)
        if conversation_id is not None:
            self.conversations.create(key.key_id, collection, asked, conversation_id)  # no-op when it exists
            self.conversations.add_turn(
                conversation_id,
                question=asked.strip(),
                standalone_question=question,
                answer=out["answer"],
                answer_id=out["answer_id"],
                max_turns=self.settings.conversation.max_stored_turns,
            )
        self.metrics.inc(
            "ragqa_answers_total", endpoint=endpoint, mode=out["mode"], abstained=str(out["abstained"]).lower()
        )
        self.metrics.observe("ragqa_answer_duration_seconds", out["timings"]["server_s"], endpoint=endpoint)
        self.metrics.record_generation(out.get("generated_tokens", 0), out["timings"].get("generate_s", 0.0))
        return AnswerPublic.model_validate(out)

    def _public_citation(self, citation: dict[str, Any]) -> dict[str, Any]:
        return {
            **citation,
            "source": self.paths.source(citation.get("source", "")),
            "metadata": self.paths.metadata(citation.get("metadata")),
        }

    async def answer_async(self, key: ApiKey, collection: str, question: str, **kw: Any) -> AnswerPublic:
        """:meth:`answer` on a worker thread of its own pool (``serving.answer_threads``), not anyio's default
        one: answers waiting for the model must not hold the threads that key checks and other routes need."""
        deadline = Deadline(self.settings.serving, self.metrics)  # serving.request_timeout_s: then 504
        work = functools.partial(self.answer, key, collection, question, **kw)
        return await deadline.wait(anyio.to_thread.run_sync(work, limiter=self._answer_threads()))

    def _answer_threads(self) -> anyio.CapacityLimiter:
        """The thread pool of answers, plain and streamed (made on the event loop that serves the app)."""
        if self._answer_limiter is None:
            self._answer_limiter = anyio.CapacityLimiter(self.settings.serving.answer_threads)
        return self._answer_limiter

    async def answer_events(
        self, key: ApiKey, collection: str, question: str, **kw: Any
    ) -> AsyncIterator[tuple[str, Any]]:
        """Stream the events of one answer.

        ``("token", text)`` as the answer is generated, then ``("answer", AnswerPublic)`` or ``("error", ApiError)``.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        left = threading.Event()  # set when the client stops listening

        def token(text: str) -> None:
            if left.is_set():  # raised in the scheduler thread: the answer fails there and frees its rows
                raise RequestCancelledError("the client disconnected")
            put(("token", text))

        def work() -> None:
            try:
                put(("answer", self.answer(key, collection, question, on_token=token, **kw)))
            except Exception as exc:  # reported in the stream: the response has started
                if left.is_set():
                    logger.info("streamed answer stopped: the client disconnected")
                    return
                if not hasattr(exc, "code"):
                    logger.exception("streamed answer failed")
                    exc = from_core(exc)
                if isinstance(exc, ApiError):
                    exc.message = self.paths.text(exc.message) or exc.message
                put(("error", exc))
            finally:
                put(("end", None))

        deadline = Deadline(self.settings.serving, self.metrics)
        # the answer threads, not the loop's default executor (min(32, cores + 4) threads: 6 streams at once here)
        future = asyncio.ensure_future(anyio.to_thread.run_sync(work, limiter=self._answer_threads()))
        try:
            while True:
                try:
                    kind, payload = await deadline.wait(queue.get())
                except ApiError as exc:  # the deadline passed: the stream ends with a 504 error event
                    yield "error", exc
                    break
                if kind == "end":
                    break
                yield kind, payload
        finally:
            if not future.done():  # the client left: stop generating at its next token
                left.set()
                future.add_done_callback(lambda f: f.exception())

    # -- conversations ------------------------------------------------------------------
    def standalone(self, question: str, history: list[Turn]) -> str:
        """``question`` made standalone from ``history`` by the configured method (``conversation.method``)."""
        from rag.conversation import standalone_question

        return standalone_question(question, history, config=self.settings.conversation, generator=self.qa.generator)

    def open_conversation(
        self, key: ApiKey, conversation_id: str | None, collection: str, question: str
    ) -> tuple[str, list[Turn]]:
        """The conversation a question continues (a new one when ``conversation_id`` is None) and the
        recent turns to make it standalone from; another key's conversation is not found (404)."""
        if conversation_id is None:  # created with its first turn (a failed first answer leaves nothing)
            return new_conversation_id(), []
        self._conversation(key, conversation_id)
        cfg = self.settings.conversation
        rows = self.conversations.turns(conversation_id, last=cfg.max_turns) if cfg.max_turns else []
        return conversation_id, [Turn(r["question"], r["answer"]) for r in rows]

    def _conversation(self, key: ApiKey, conversation_id: str) -> dict[str, Any]:
        conv = self.conversations.get(conversation_id, key.key_id)
        if conv is None:
            raise NotFound(
                f"conversation {conversation_id!r} not found; list yours with GET /v1/conversations",
                code="conversation_not_found",
            )
        return conv

    def list_conversations(self, key: ApiKey, limit: int, offset: int) -> ConversationsPublic:
        rows, total = self.conversations.list_for(key.key_id, limit, offset)
        return ConversationsPublic(data=[ConversationPublic.model_validate(r) for r in rows], count=total)

    def get_conversation(self, key: ApiKey, conversation_id: str) -> ConversationDetail:
        conv = self._conversation(key, conversation_id)
        return ConversationDetail.model_validate({**conv, "data": self.conversations.turns(conversation_id)})

    def delete_conversation(self, key: ApiKey, conversation_id: str) -> None:
        if not self.conversations.delete(conversation_id, key.key_id):
            raise NotFound(f"conversation {conversation_id!r} not found", code="conversation_not_found")

    # -- feedback -----------------------------------------------------------------------
    def add_feedback(
        self, key: ApiKey, answer_id: str, rating: str, correction: str | None, comment: str | None
    ) -> FeedbackPublic:
        ans = self.answers.get(answer_id)
        if ans is None or not key.allows(ans["collection"]):
            raise NotFound(f"answer {answer_id!r} not found", code="answer_not_found")
        return FeedbackPublic.model_validate(
            self.answers.add_feedback(answer_id, rating, correction, comment, key.key_id)
        )

    # -- adapters -----------------------------------------------------------------------
    def list_adapters(self) -> list[AdapterPublic]:
        """LoRA adapters in the workspace: folders of ``adapters_dir`` holding ``adapter_config.json``
        (hidden ones, such as an adapter still being written, are skipped), with their base model and
        their ``ragqa_adapter.json`` metadata (kind, training options, metrics) when present, with every server
        path in it shown by its last part (:meth:`~api.public_paths.PublicPaths.tree`)."""
        from rag.adapter_store import AdapterStore

        return [
            AdapterPublic(
                name=e.name,
                base_model=model_name(e.base_model) if e.base_model else None,
                metadata=self.paths.tree(e.meta),  # training data, held-out split, base folder: names only
            )
            for e in AdapterStore(self.settings.adapters_dir).list()
        ]

    # -- health -------------------------------------------------------------------------
    def health(self) -> Health:
        """Liveness, read on the event loop: never waits for the model, the scheduler, a worker thread or a lock
        another thread may hold (the job counts are the last ones read when the job store is busy)."""
        gen = self.qa.generator
        alive = self.worker.alive
        return Health(
            status="ok" if alive else "degraded",
            version=self.version,
            auth=self.settings.server.auth,
            models={
                "embedder": model_name(self.workspace.embedder.name),  # names only: no server paths
                "generator": model_name(str(gen.name)),
                "generator_device": str(gen.device),
                "loaded": gen.loaded,
            },
            worker_alive=alive,
            jobs=self.jobs.counts_nowait(),
            collections=len(self.workspace.list_collections()),
        )

    @property
    def version(self) -> str:
        """The installed ragqa version (read once)."""
        if self._version is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                self._version = version("ragqa")
            except PackageNotFoundError:
                self._version = "unknown"
        return self._version

    def close(self) -> None:
        if self.qa.scheduler is not None:
            self.qa.scheduler.close()
        self.worker.stop()
        self.readers.close()
        for store in (self.jobs, self.answers, self.keys, self.conversations):
            store.close()


def build_service(settings: Settings, *, metrics: Metrics | None = None, start_worker: bool = True) -> RagService:
    """Load the models once and open the server's stores (called by the app's lifespan)."""
    t0 = time.perf_counter()
    stack = RagStack(settings)
    ws = stack.workspace
    ws.collections_dir.mkdir(parents=True, exist_ok=True)
    stack.warm_up()  # load now, not on the first request
    qa, generator = stack.serving_qa, stack.generator
    db = server_db_path(settings.home)
    metrics = metrics or Metrics()
    jobs = JobStore(db, lease_s=settings.server.job_lease_s)
    storage = UploadStorage(settings.home / "uploads")
    gate = WriterGate()

    def count_file(result: str, chunks: int) -> None:
        metrics.inc("ragqa_ingest_files_total", result=result)
        metrics.inc("ragqa_ingest_chunks_total", chunks)

    worker = IngestWorker(
        ws,
        jobs,
        storage,
        gate,
        on_file=count_file,
        on_job=lambda status: metrics.inc("ragqa_ingest_jobs_total", status=status),
        workers=settings.server.ingest_workers or auto_workers(),
        min_free_bytes=int(settings.server.min_free_mb * (1 << 20)),
    )
    metrics.gauge("ragqa_jobs", lambda: {(("status", s),): float(n) for s, n in jobs.counts_nowait().items()})
    if qa.scheduler is not None:
        scheduler = qa.scheduler
        scheduler.on_step = metrics.observe_step
        metrics.watch_scheduler(
            lambda: {**dataclasses.asdict(scheduler.stats()), "queue_capacity": scheduler.max_queue}
        )
    cache = generator.prefix_cache
    metrics.watch_prefix_cache(lambda: {**dataclasses.asdict(cache.stats()), "capacity_bytes": cache.max_bytes})
    logger.info(
        "serving: batching %s (queue %d, %d rows per step), prefix KV cache %.0f MiB",
        "on" if qa.scheduler is not None else "off",
        settings.serving.max_queue,
        settings.serving.max_batch_rows,
        cache.max_bytes / 2**20,
    )
    service = RagService(
        settings=settings,
        workspace=ws,
        qa=qa,
        readers=ReaderCache(ws, settings.server.reader_cache),
        jobs=jobs,
        worker=worker,
        storage=storage,
        gate=gate,
        answers=AnswerLog(db),
        keys=KeyStore(db),
        metrics=metrics,
        conversations=ConversationStore(db),
    )
    _ = service.version  # read now, not on the event loop of the first /healthz
    if start_worker:
        worker.start()
    logger.info(
        "models loaded in %.1f s (embedder %s, generator %s)",
        time.perf_counter() - t0,
        ws.embedder.name,
        generator.name,
    )
    return service
