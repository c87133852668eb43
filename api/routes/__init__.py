"""One router per feature; :func:`api.app.create_app` includes them all."""

from typing import Any

from api.schemas import ErrorBody

#: Error responses shared by the routes, for the OpenAPI docs.
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422)}
# any request: a body that cannot be parsed or a bad Content-Length (400), a body above server.max_json_mb (413)
ERRORS[400] = {"model": ErrorBody, "description": "The body could not be parsed (malformed JSON or form data)."}
ERRORS[413] = {"model": ErrorBody, "description": "The body is above the server's limit (server.max_json_mb)."}
