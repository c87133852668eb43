"""One router per feature; :func:`api.app.create_app` includes them all."""

from typing import Any

from api.schemas import ErrorBody

#: Error responses shared by the routes, for the OpenAPI docs.
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422)}
