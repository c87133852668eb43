"""One router per feature; :func:`api.app.create_app` includes them all."""

from api.schemas import ErrorBody

#: Error responses shared by the routes, for the OpenAPI docs.
ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 409, 422)}
