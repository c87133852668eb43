"""Schemathesis against a real `ragqa serve` process's live /openapi.json (issue 18, "keep it from coming back").

A throw-away workspace, a full-access key, one collection with a document. Every operation of the schema gets a
bounded number of generated requests (valid and invalid ones); each response must be no server error and must
match the schema: a documented status code, a documented content type and a body that validates. (The 401s
among the responses are schemathesis's invalid cases that leave the key out: they must get a documented 401.)
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency: pip install -e '.[dev]'")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.auth import open_key_store  # noqa: E402
from tests.api.server_process import running_server, server_env  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
logger = logging.getLogger(__name__)

#: generated requests per operation and mode (about 25 operations, valid and invalid data): under a minute
MAX_EXAMPLES = 10
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, tiny_st_model, tiny_llm):
    root = tmp_path_factory.mktemp("schemathesis")
    env = server_env(root / "home", tiny_st_model, tiny_llm, RAGQA_SERVER__MAX_UPLOAD_MB="1")
    store = open_key_store(root / "home")  # in-process: quicker than a `ragqa keys create` subprocess
    _, key = store.create("schemathesis")
    store.close()
    with running_server(env, root / "server.log") as (base, _proc):
        h = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{base}/v1/collections", json={"name": "docs"}, headers=h).status_code == 201
        files = [("files", ("a.txt", b"The flat index compares the query with every stored vector."))]
        assert httpx.post(f"{base}/v1/collections/docs/documents", files=files, headers=h).status_code == 202
        yield base, h


def test_live_api_matches_its_schema_and_never_answers_5xx(live_server):
    base, headers = live_server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations, t0 = 0, time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failure is reported as it is
                suppress_health_check=list(HealthCheck),
            )
            def check(case) -> None:
                response = case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=60)
                statuses[response.status_code] += 1

            try:
                check()
            except Unsatisfiable:  # no invalid request exists (an operation without parameters or body)
                continue
            except (Exception, BaseExceptionGroup) as exc:  # a check failed: keep it, go on to the next operation
                failures.append(f"{operation.label} ({mode.value}): {str(exc).strip()[:1500]}")
    logger.info(
        "schemathesis: %d operations, %d requests (statuses %s) in %.1f s, %d failures",
        operations,
        sum(statuses.values()),
        dict(sorted(statuses.items())),
        time.perf_counter() - t0,
        len(failures),
    )
    assert operations >= 15, operations
    assert not failures, "\n\n".join(failures)
