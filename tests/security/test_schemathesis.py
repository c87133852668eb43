"""Schemathesis against a real `ragqa serve` process's live /openapi.json (issue 18, "keep it from coming back").

A throw-away workspace, a full-access key, one collection with a document. Every operation of the schema gets a
bounded number of generated requests (valid and invalid ones); each response must be no server error and must
match the schema: a documented status code, a documented content type and a body that validates.
"""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency: pip install -e '.[dev]'")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.test_server_e2e import create_key, running_server, server_env  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: generated requests per operation (about 25 operations): the whole run stays well under a minute
MAX_EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, tiny_st_model, tiny_llm):
    root = tmp_path_factory.mktemp("schemathesis")
    env = server_env(root / "home", tiny_st_model, tiny_llm, RAGQA_SERVER__MAX_UPLOAD_MB="1")
    key = create_key(env, "schemathesis")
    with running_server(env, root / "server.log") as (base, _proc):
        h = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{base}/v1/collections", json={"name": "docs"}, headers=h).status_code == 201
        files = [("files", ("a.txt", b"The flat index compares the query with every stored vector."))]
        assert httpx.post(f"{base}/v1/collections/docs/documents", files=files, headers=h).status_code == 202
        yield base, h


@pytest.fixture(scope="module")
def live_schema(live_server):
    base, _ = live_server
    return schemathesis.openapi.from_url(f"{base}/openapi.json")


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_live_api_matches_its_schema_and_never_answers_5xx(case, live_server):
    base, headers = live_server
    case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=60)
