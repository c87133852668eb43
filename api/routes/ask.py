"""Questions: ``POST /v1/ask`` returns the answer with citations, or streams it as Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, ServiceDep
from api.errors import error_body
from api.ratelimit import QuestionLimit
from api.routes import ERRORS
from api.schemas import AnswerPublic, AskRequest

router = APIRouter(prefix="/v1", tags=["ask"], responses=ERRORS)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


@router.post(
    "/ask",
    response_model=AnswerPublic,
    summary="Answer a question from a collection, with citations",
    dependencies=[QuestionLimit],
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "example": 'event: token\ndata: {"text": "Flat"}\n\n'
                    'event: answer\ndata: {"answer_id": "...", ...}\n\n'
                }
            },
            "description": "The answer; with stream=true, `token` events then one `answer` (or `error`) event.",
        }
    },
)
async def ask(body: AskRequest, service: ServiceDep, key: KeyDep):
    await run_in_threadpool(service.validate_question, key, body.collection, body.question, body.k, body.adapter)
    conversation_id, history = await run_in_threadpool(
        service.open_conversation, key, body.conversation_id, body.collection, body.question
    )
    kw: dict[str, Any] = {"mode": body.mode, "k": body.k, "adapter": body.adapter, "style": body.answer_style}
    kw |= {"conversation_id": conversation_id, "history": history}
    if not body.stream:
        return await service.answer_async(key, body.collection, body.question, **kw)

    async def events() -> AsyncIterator[str]:
        async for kind, payload in service.answer_events(key, body.collection, body.question, **kw):
            if kind == "token":
                yield sse("token", {"text": payload})
            elif kind == "answer":
                yield sse("answer", payload.model_dump())
            else:
                yield sse("error", error_body(payload.code, payload.message))

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
