"""FastAPI dependencies: the shared service and the caller's API key (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import ANONYMOUS, ApiKey
from api.errors import Unauthorized
from api.service import RagService

_bearer = HTTPBearer(auto_error=False, description="An API key from `ragqa keys create`.")


def get_service(request: Request) -> RagService:
    return request.app.state.service


ServiceDep = Annotated[RagService, Depends(get_service)]


def get_key(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    """The caller's key; everyone is :data:`~api.auth.ANONYMOUS` when auth is off (``--no-auth``)."""
    if not service.settings.server.auth:
        return ANONYMOUS
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (create one with `ragqa keys create NAME`)"
        )
    key = service.keys.verify(credentials.credentials)
    if key is None:
        raise Unauthorized("invalid or revoked API key; create a new one with `ragqa keys create NAME`")
    return key


KeyDep = Annotated[ApiKey, Depends(get_key)]
