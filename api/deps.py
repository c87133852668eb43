"""FastAPI dependencies: the shared service and the caller's API key (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import ANONYMOUS, GATE_STATE_KEY, INVALID_KEY, MISSING_KEY, ApiKey
from api.errors import Unauthorized
from api.service import RagService

_bearer = HTTPBearer(auto_error=False, description="An API key from `ragqa keys create`.")


def get_service(request: Request) -> RagService:
    return request.app.state.service


ServiceDep = Annotated[RagService, Depends(get_service)]


def get_key(
    request: Request,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The caller's key; everyone is :data:`~api.auth.ANONYMOUS` when auth is off (``--no-auth``).

    The app's auth gate (:class:`api.app.AuthGateMiddleware`) has already verified it, before the body was
    read, and left it in ``request.state``; a request that did not pass the gate is verified here."""
    if not service.settings.server.auth:
        return ANONYMOUS
    gated = request.scope.get("state", {}).get(GATE_STATE_KEY)
    if isinstance(gated, ApiKey):
        return gated
    if credentials is None or not credentials.credentials:
        raise Unauthorized(MISSING_KEY)
    key = service.keys.verify(credentials.credentials)
    if key is None:
        raise Unauthorized(INVALID_KEY)
    return key


KeyDep = Annotated[ApiKey, Depends(get_key)]
