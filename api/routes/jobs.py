"""Upload jobs: status, progress and per-file errors."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.deps import KeyDep, ServiceDep
from api.routes import ERRORS
from api.schemas import JobPublic, JobsPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS)


@router.get("", response_model=JobsPublic, summary="Recent jobs of the collections this key may read")
def list_jobs(
    service: ServiceDep,
    key: KeyDep,
    status: Annotated[Literal["queued", "running", "done", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JobsPublic:
    data = service.list_jobs(key, status, limit)
    return JobsPublic(data=data, count=len(data))


@router.get("/{job_id}", response_model=JobPublic, summary="A job's status, progress and per-file errors")
def get_job(job_id: str, service: ServiceDep, key: KeyDep) -> JobPublic:
    return service.get_job(key, job_id)
