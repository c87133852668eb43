"""Collections: create, list, show, delete."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import KeyDep, ServiceDep
from api.routes import ERRORS
from api.schemas import CollectionCreate, CollectionPublic, CollectionsPublic

router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=ERRORS)


@router.get("", response_model=CollectionsPublic, summary="List the collections this key may read")
def list_collections(service: ServiceDep, key: KeyDep) -> CollectionsPublic:
    data = service.list_collections(key)
    return CollectionsPublic(data=data, count=len(data))


@router.post(
    "", response_model=CollectionPublic, status_code=status.HTTP_201_CREATED, summary="Create an empty collection"
)
def create_collection(body: CollectionCreate, service: ServiceDep, key: KeyDep) -> CollectionPublic:
    return service.create_collection(key, body.name, body.index)


@router.get("/{name}", response_model=CollectionPublic, summary="Show a collection: documents, chunks, embedder, index")
def get_collection(name: str, service: ServiceDep, key: KeyDep) -> CollectionPublic:
    return service.get_collection(key, name)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a collection, its uploads and conversations; its logged answers are redacted",
)
def delete_collection(name: str, service: ServiceDep, key: KeyDep) -> None:
    service.delete_collection(key, name)
