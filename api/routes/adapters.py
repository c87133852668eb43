"""LoRA adapters the generator can use per request (``adapter`` of POST /v1/ask)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, ServiceDep
from api.routes import ERRORS
from api.schemas import AdaptersPublic

router = APIRouter(prefix="/v1/adapters", tags=["adapters"], responses=ERRORS)


@router.get("", response_model=AdaptersPublic, summary="List the LoRA adapters this key may use")
async def list_adapters(service: ServiceDep, key: KeyDep) -> AdaptersPublic:
    data = [a for a in await run_in_threadpool(service.list_adapters) if key.allows_adapter(a.name)]
    return AdaptersPublic(data=data, count=len(data))
