"""Documents of a collection: upload (an ingestion job), list, delete by id or source."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile, status
from starlette.concurrency import run_in_threadpool

from api.deps import KeyDep, ServiceDep
from api.ratelimit import UploadLimit
from api.routes import ERRORS
from api.schemas import Deleted, DocumentsPublic, ErrorBody, JobAccepted
from api.service import Upload

#: the largest offset a listing accepts (SQLite integers are 64-bit; beyond this a page is empty anyway)
MAX_OFFSET = 2**31 - 1

router = APIRouter(prefix="/v1/collections/{name}/documents", tags=["documents"], responses=ERRORS)


@router.post(
    "",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Upload files; a background job ingests them (poll GET /v1/jobs/{job_id})",
    dependencies=[UploadLimit],
    responses={413: {"model": ErrorBody}, 415: {"model": ErrorBody}, 507: {"model": ErrorBody}},
)
async def upload_documents(
    name: str,
    files: Annotated[list[UploadFile], File(description="One or more files (txt, md, html, pdf, docx, json, jsonl).")],
    service: ServiceDep,
    key: KeyDep,
) -> JobAccepted:
    uploads = [Upload(f.filename or "", f.file) for f in files]
    try:
        accepted = await run_in_threadpool(service.submit_upload, key, name, uploads)
    finally:
        for f in files:
            await f.close()
    return accepted


@router.get("", response_model=DocumentsPublic, summary="List documents (optionally of one source)")
def list_documents(
    name: str,
    service: ServiceDep,
    key: KeyDep,
    source: Annotated[str | None, Query(description="An uploaded file's name (as listed in `source`).")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DocumentsPublic:
    return service.list_documents(key, name, source, limit, offset)


@router.delete(
    "/{doc_id}",
    response_model=Deleted,
    summary="Delete one document by id (its uploaded file goes with its last document; answers citing it are redacted)",
)
def delete_document(name: str, doc_id: str, service: ServiceDep, key: KeyDep) -> Deleted:
    return Deleted(deleted=service.delete_documents(key, name, [doc_id], []))


@router.delete(
    "",
    response_model=Deleted,
    summary="Delete every document of an uploaded file (by name), the file, and redact answers citing them",
)
def delete_documents_by_source(
    name: str,
    service: ServiceDep,
    key: KeyDep,
    source: Annotated[list[str], Query(description="Uploaded file name, as listed in `source` (repeatable).")],
) -> Deleted:
    return Deleted(deleted=service.delete_documents(key, name, [], source))
