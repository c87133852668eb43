"""Issue 18, item 4: the key is checked before the body is read; JSON bodies have a small limit; an upload's
file limit holds while the body streams in (nothing is spooled past it)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio
import pytest
from fastapi.testclient import TestClient

from api.app import PART_OVERHEAD, _PartScanner, create_app
from api.auth import open_key_store
from tests.api.test_app import assert_error, make_settings, wait_job
from tests.api.test_server_e2e import server  # noqa: F401  # the real-server fixture

MB = 1 << 20
BOUNDARY = "----ragqa-test-boundary"


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_st_model, tiny_llm):
    home = tmp_path_factory.mktemp("body-home")
    settings = make_settings(home, tiny_st_model, tiny_llm)  # uploads: 0.05 MB a file, 3 files
    store = open_key_store(home)
    _, admin = store.create("admin")
    old, revoked = store.create("old")
    store.revoke(old.key_id)
    store.close()
    app = create_app(settings)
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {admin}"}
        assert client.post("/v1/collections", json={"name": "docs"}, headers=h).status_code == 201
        yield {"client": client, "app": app, "admin": admin, "revoked": revoked, "settings": settings, "home": home}


class Sent:
    """What a direct ASGI call received and answered."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.receive_calls = 0
        self.bytes_read = 0


def call(app, method: str, path: str, headers: dict[str, str], chunks: Iterator[bytes]) -> Sent:
    """Call the app as the server would, feeding the body from ``chunks`` only as the app asks for it."""
    out = Sent()
    pending = iter(chunks)
    nxt = next(pending, None)

    async def receive():
        nonlocal nxt
        out.receive_calls += 1
        if nxt is None:
            await anyio.sleep(5)
            return {"type": "http.disconnect"}
        body, nxt = nxt, next(pending, None)
        out.bytes_read += len(body)
        return {"type": "http.request", "body": body, "more_body": nxt is not None}

    async def send(message):
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            out.body += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    anyio.run(app, scope, receive, send)
    return out


def endless(chunk: int = MB) -> Iterator[bytes]:
    """An attacker's body that never ends (the test fails if the app reads it all)."""
    block = b"a" * chunk
    for _ in range(400):
        yield block


def test_no_valid_key_gets_401_before_a_byte_of_the_body_is_read(env):
    multipart = f"multipart/form-data; boundary={BOUNDARY}"
    routes = [
        ("POST", "/v1/ask", "application/json"),
        ("POST", "/v1/collections/docs/documents", multipart),
        ("POST", "/v1/chat/completions", "application/json"),
        ("POST", "/v1/collections", "application/json"),
    ]
    credentials = [None, "Bearer ", "Bearer rq_nope_secret", "Basic YWRtaW46YWRtaW4=", f"Bearer {env['revoked']}"]
    for method, path, content_type in routes:
        for auth in credentials:
            headers = {"content-type": content_type, "content-length": str(400 * MB)}
            if auth is not None:
                headers["authorization"] = auth
            sent = call(env["app"], method, path, headers, endless())
            assert sent.status == 401, (path, auth, sent.body)
            assert sent.receive_calls == 0 and sent.bytes_read == 0, (path, auth)
            assert sent.headers.get("www-authenticate") == "Bearer"
            assert b'"unauthorized"' in sent.body


def test_json_routes_have_a_small_body_limit(env):
    c, h = env["client"], {"Authorization": f"Bearer {env['admin']}"}
    big = {"question": "x" * (2 * MB), "collection": "docs"}
    assert_error(c.post("/v1/ask", json=big, headers=h), 413, "payload_too_large")
    # without Content-Length (chunked): refused once the limit is passed, the rest is never read
    headers = {"content-type": "application/json", "authorization": f"Bearer {env['admin']}"}
    sent = call(env["app"], "POST", "/v1/ask", headers, endless(256 * 1024))
    assert sent.status == 413, sent.body
    assert sent.bytes_read <= env["settings"].server.max_json_mb * MB + 256 * 1024


def _part(name: str, data: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    )


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_an_oversized_file_is_refused_while_it_streams_in(env):
    part_limit = int(env["settings"].server.max_upload_mb * MB) + PART_OVERHEAD
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "authorization": f"Bearer {env['admin']}"}

    def body() -> Iterator[bytes]:  # one 400 MB file, no Content-Length: only the stream tells its size
        yield _part("huge.txt", b"")[:-2]
        yield from endless(64 * 1024)

    sent = call(env["app"], "POST", "/v1/collections/docs/documents", headers, body())
    assert sent.status == 413, sent.body
    assert sent.bytes_read <= part_limit + 2 * 64 * 1024  # stopped right after the limit: nothing spooled past it
    assert not list((env["home"] / "uploads").rglob("huge.txt"))


def test_files_below_the_limit_pass_even_when_the_body_is_above_one_file_limit(env):
    per_file = int(env["settings"].server.max_upload_mb * MB) - 1000  # three files: 3x one file's limit in all
    texts = [
        (f"f{i}.txt", (f"Document {i} talks about subject number {i}. " * 2000).encode()[:per_file]) for i in range(3)
    ]
    body = b"".join(_part(n, d) for n, d in texts) + f"--{BOUNDARY}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "authorization": f"Bearer {env['admin']}"}
    sent = call(env["app"], "POST", "/v1/collections/docs/documents", headers, _chunks(body, 7001))  # odd chunks
    assert sent.status == 202, sent.body
    job_id = json.loads(sent.body)["job_id"]
    job = wait_job(env["client"], job_id, {"Authorization": f"Bearer {env['admin']}"})
    assert [f["size"] for f in job["files"]] == [len(d) for _, d in texts]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 16, 1000])
def test_part_scanner_finds_delimiters_across_chunk_boundaries(chunk):
    limit = 100
    ok_body = b"".join(b"--B\r\nh\r\n\r\n" + b"x" * 80 + b"\r\n" for _ in range(5)) + b"--B--\r\n"
    scanner = _PartScanner(b"B", limit)
    assert all(scanner.feed(ok_body[i : i + chunk]) for i in range(0, len(ok_body), chunk))
    bad_body = b"--B\r\nh\r\n\r\n" + b"x" * 80 + b"\r\n--B\r\nh\r\n\r\n" + b"y" * 150
    scanner = _PartScanner(b"B", limit)
    results = [scanner.feed(bad_body[i : i + chunk]) for i in range(0, len(bad_body), chunk)]
    assert results[-1] is False and all(results[: (len(bad_body) - 60) // chunk])


@pytest.mark.integration  # a real `ragqa serve` process
@pytest.mark.timeout(600)
def test_a_real_server_answers_401_to_a_400_mb_announcement_without_waiting_for_it(server):  # noqa: F811
    """The attack of the audit: announce 400 MB, send a few bytes slowly. The 401 must come at once."""
    import socket
    import time
    from urllib.parse import urlparse

    base, _h, _proc = server
    url = urlparse(base)
    for path, content_type in (
        ("/v1/ask", "application/json"),
        ("/v1/collections/docs/documents", f"multipart/form-data; boundary={BOUNDARY}"),
    ):
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {400 * MB}\r\n\r\n"
            )
            t0 = time.monotonic()
            sock.sendall(head.encode() + b"{")
            reply = sock.recv(65536).decode("latin-1")
            assert time.monotonic() - t0 < 5
        assert reply.startswith("HTTP/1.1 401"), reply[:200]
        assert "www-authenticate: bearer" in reply.lower()
