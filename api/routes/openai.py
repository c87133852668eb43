"""OpenAI-compatible chat completions: any OpenAI client can use a collection as its "model".

``model`` is a collection name or ``ragqa:<collection>``; the question is the last user message, and
the messages before it (user questions with the assistant replies) are its conversation: a follow-up
is made standalone from them (:mod:`rag.conversation`). Nothing is stored: the client holds the history.
The reply's content ends with the sources, and the response carries them as ``sources`` too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, ServiceDep
from api.errors import Unprocessable, error_body
from api.ratelimit import QuestionLimit
from api.routes import ERRORS
from api.routes.ask import SSE_HEADERS
from api.schemas import AnswerPublic, ChatCompletionRequest
from rag.conversation import Turn

router = APIRouter(prefix="/v1", tags=["openai"], responses=ERRORS)

PREFIX = "ragqa:"
SOURCES_HEADER = "\n\nSources:\n"


def collection_of(model: str) -> str:
    return model[len(PREFIX) :] if model.startswith(PREFIX) else model


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return content or ""


def question_of(body: ChatCompletionRequest) -> str:
    for msg in reversed(body.messages):
        if msg.role == "user" and isinstance(msg.content, (str, list)):
            return _text(msg.content)
    raise Unprocessable(
        "messages hold no user message with text; the last user message is the question", code="no_question"
    )


def history_of(body: ChatCompletionRequest) -> list[Turn]:
    """The conversation before the last user message: each earlier user message with the assistant
    reply that follows it (its "Sources:" list removed)."""
    last = max(i for i, m in enumerate(body.messages) if m.role == "user")
    turns: list[Turn] = []
    for msg in body.messages[:last]:
        if msg.role == "user":
            turns.append(Turn(_text(msg.content), ""))
        elif msg.role == "assistant" and turns and not turns[-1].answer:
            turns[-1] = Turn(turns[-1].question, _text(msg.content).split(SOURCES_HEADER)[0].strip())
    return [t for t in turns if t.question.strip()]


def sources_of(answer: AnswerPublic) -> list[dict[str, Any]]:
    return [
        {"index": c.index, "title": c.title, "source": c.source, "score": c.score, "text": c.text}
        for c in answer.citations
    ]


def sources_text(answer: AnswerPublic) -> str:
    if not answer.citations:
        return ""
    lines = [f"[{c.index}] {c.title or c.source} ({c.source})" for c in answer.citations]
    return SOURCES_HEADER + "\n".join(lines)


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    obj = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(obj, ensure_ascii=False, default=str)}\n\n"


@router.get("/models", summary="Collections as OpenAI models")
def list_models(service: ServiceDep, key: KeyDep) -> dict[str, Any]:
    data = [
        {"id": f"{PREFIX}{c.name}", "object": "model", "created": int(c.created_at or 0), "owned_by": "ragqa"}
        for c in service.list_collections(key)
    ]
    return {"object": "list", "data": data}


@router.post(
    "/chat/completions", summary="OpenAI-compatible chat completion over a collection", dependencies=[QuestionLimit]
)
async def chat_completions(body: ChatCompletionRequest, service: ServiceDep, key: KeyDep):
    collection = collection_of(body.model)
    question = question_of(body)
    await run_in_threadpool(service.validate_question, key, collection, question, None)
    history = history_of(body)  # bounded by conversation.max_turns / max_history_chars where it is used
    created = int(time.time())
    if not body.stream:
        ans = await service.answer_async(key, collection, question, endpoint="chat", style="full", history=history)
        return {
            "id": f"chatcmpl-{ans.answer_id}",
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ans.answer + sources_text(ans)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 0,
                "completion_tokens": ans.generated_tokens,
                "total_tokens": ans.generated_tokens,
            },
            "sources": sources_of(ans),
            "ragqa": {
                "answer_id": ans.answer_id,
                "abstained": ans.abstained,
                "collection_generation": ans.collection_generation,
                "standalone_question": ans.standalone_question,
            },
        }

    cid = f"chatcmpl-{uuid.uuid4().hex}"

    async def events() -> AsyncIterator[str]:
        yield _chunk(cid, created, body.model, {"role": "assistant", "content": ""})
        async for kind, payload in service.answer_events(
            key, collection, question, endpoint="chat", style="full", history=history
        ):
            if kind == "token":
                yield _chunk(cid, created, body.model, {"content": payload})
            elif kind == "answer":
                yield _chunk(
                    cid,
                    created,
                    body.model,
                    {"content": sources_text(payload)},
                    "stop",
                    sources=sources_of(payload),
                    ragqa={"answer_id": payload.answer_id, "abstained": payload.abstained, "answer": payload.answer},
                )
            else:
                yield f"data: {json.dumps(error_body(payload.code, payload.message))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
