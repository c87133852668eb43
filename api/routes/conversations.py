"""Conversations of the caller's key: list, read (with the turns), delete. ``POST /v1/ask`` starts and
continues them (``conversation_id``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, ServiceDep
from api.routes import ERRORS
from api.schemas import ConversationDetail, ConversationsPublic

router = APIRouter(prefix="/v1/conversations", tags=["conversations"], responses=ERRORS)


@router.get("", response_model=ConversationsPublic, summary="Your conversations, most recently used first")
async def list_conversations(
    service: ServiceDep,
    key: KeyDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> ConversationsPublic:
    return await run_in_threadpool(service.list_conversations, key, limit, offset)


@router.get("/{conversation_id}", response_model=ConversationDetail, summary="A conversation and its turns")
async def get_conversation(conversation_id: str, service: ServiceDep, key: KeyDep) -> ConversationDetail:
    return await run_in_threadpool(service.get_conversation, key, conversation_id)


@router.delete(
    "/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a conversation and its turns"
)
async def delete_conversation(conversation_id: str, service: ServiceDep, key: KeyDep) -> None:
    await run_in_threadpool(service.delete_conversation, key, conversation_id)
