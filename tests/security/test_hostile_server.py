"""Hostile requests against a real `ragqa serve` process (issue 18, "keep it from coming back").

One server for the module (tiny models, a throw-away workspace, uploads limited to 1 MB a file), three keys: an
admin key, key A limited to collection ``alpha`` and key B limited to ``beta``. Every hostile request must get a
4xx with the API's JSON error (``{"error": {"code", "message"}}``; the few the HTTP layer refuses before the app
are named below) or, for hostile file *content*, a failed job entry with its reason. Meanwhile a thread polls
/healthz: it must stay 200 throughout, and the server's memory (its process and its loader processes) may grow
at most ``RSS_GROWTH_MB``. The last test checks both and logs the figures (BENCHMARKS.md "Reliability"):

    pytest tests/security/test_hostile_server.py -o log_cli=true --log-cli-level=INFO
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import socket
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.auth import open_key_store
from tests.api.server_process import running_server, server_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
logger = logging.getLogger(__name__)

MB = 1 << 20
#: the most the server's memory (its process and loader processes, VmRSS) may grow over the whole suite
RSS_GROWTH_MB = 300
#: /healthz must answer within this many seconds at the 95th percentile while the suite runs
HEALTH_P95_S = 1.0
UPLOAD_MB = 1  # server.max_upload_mb of the server under test
MAX_FILES = 8  # server.max_files
DOC_ALPHA = "The alpha reactor is cooled by heavy water from the northern lake.\n"
DOC_BETA = "Project beta stores its secret launch code in the blue vault.\n"


# -- the server and what the suite measures ---------------------------------------------------
def rss_kb(pid: int) -> int:
    """VmRSS (KiB) of ``pid`` alone, from /proc (0 once it ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def tree_rss_kb(pid: int) -> int:
    """VmRSS (KiB) of ``pid`` and all its descendants (the loader processes), from /proc."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss_kb(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # a loader process that just ended
    return total


class HealthWatch(threading.Thread):
    """Polls /healthz every 0.2 s and keeps each status and latency, and samples the server's memory."""

    def __init__(self, base: str, pid: int) -> None:
        super().__init__(daemon=True)
        self.base, self.pid = base, pid
        self.samples: list[tuple[int, float]] = []
        self.max_rss_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as c:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    status = c.get("/healthz").status_code
                except httpx.HTTPError:
                    status = 0
                self.samples.append((status, time.perf_counter() - t0))
                self.max_rss_kb = max(self.max_rss_kb, tree_rss_kb(self.pid))
                self.stop.wait(0.2)


class Live:
    """The server under test, its keys, and the tally of hostile requests sent."""

    def __init__(self, base: str, proc, keys: dict[str, str], home: Path) -> None:
        self.base, self.proc, self.home = base, proc, home
        self.h = {name: {"Authorization": f"Bearer {k}"} for name, k in keys.items()}
        self.client = httpx.Client(base_url=base, timeout=60)
        self.statuses: Counter[int] = Counter()
        self.t0 = time.perf_counter()
        self.rss0_kb = 0
        self.rss0_own_kb = 0
        self.watch = HealthWatch(base, proc.pid)
        self.ids: dict[str, Any] = {}
        self.rss_trace: list[tuple[str, int, int]] = []  # (test, server KiB, server and loaders KiB)

    def send(self, method: str, path: str, who: str | None = "admin", **kw) -> httpx.Response:
        headers = {**(self.h[who] if who else {}), **kw.pop("headers", {})}
        r = self.client.request(method, path, headers=headers, **kw)
        self.statuses[r.status_code] += 1
        return r

    def count(self, status: int) -> None:
        self.statuses[status] += 1

    def wait_job(self, job_id: str, who: str = "admin", timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}", headers=self.h[who]).json()
            if job["status"] in ("done", "failed"):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish: {job}")


def assert_json_error(r: httpx.Response, *statuses: int) -> dict:
    """A 4xx (one of ``statuses`` when given) with the API's error shape and a message saying what to do."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"code", "message"}, body
    assert body["error"]["code"] and len(body["error"]["message"]) >= 10, body
    assert len(r.content) < 64 * 1024, "an error must not echo a hostile payload back"
    return body["error"]


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_st_model, tiny_llm):
    root = tmp_path_factory.mktemp("hostile")
    home = root / "home"
    env = server_env(
        home,
        tiny_st_model,
        tiny_llm,
        RAGQA_SERVER__MAX_UPLOAD_MB=str(UPLOAD_MB),
        RAGQA_SERVER__MAX_FILES=str(MAX_FILES),
        RAGQA_SERVER__MAX_QUESTION_CHARS="500",
    )
    store = open_key_store(home)  # in-process: quicker than three `ragqa keys create` subprocesses
    keys = {
        "admin": store.create("admin")[1],
        "a": store.create("tenant-a", ["alpha"])[1],
        "b": store.create("tenant-b", ["beta"])[1],
    }
    store.close()
    httpx_logger = logging.getLogger("httpx")  # one INFO line per request would bury the figures
    level = httpx_logger.level
    httpx_logger.setLevel(logging.WARNING)
    with running_server(env, root / "server.log") as (base, proc):
        lv = Live(base, proc, keys, home)
        for name, who, text in (("alpha", "a", DOC_ALPHA), ("beta", "b", DOC_BETA)):
            assert lv.send("POST", "/v1/collections", who=who, json={"name": name}).status_code == 201
            r = lv.send("POST", f"/v1/collections/{name}/documents", who=who, files=[("files", (f"{name}.txt", text))])
            assert r.status_code == 202, r.text
            job = lv.wait_job(r.json()["job_id"], who)
            assert job["status"] == "done", job
            lv.ids[f"job_{name}"] = job["job_id"]
        ans = lv.send("POST", "/v1/ask", who="b", json={"question": "Where is the launch code?", "collection": "beta"})
        assert ans.status_code == 200, ans.text
        lv.ids["answer_b"] = ans.json()["answer_id"]
        lv.ids["conversation_b"] = ans.json()["conversation_id"]
        docs = lv.send("GET", "/v1/collections/beta/documents", who="b").json()["data"]
        lv.ids["doc_b"] = docs[0]["doc_id"]
        lv.statuses.clear()
        lv.rss0_kb = tree_rss_kb(proc.pid)  # after the models loaded and answered once
        lv.rss0_own_kb = rss_kb(proc.pid)
        lv.t0 = time.perf_counter()
        lv.watch.start()
        try:
            yield lv
        finally:
            lv.watch.stop.set()
            lv.watch.join(15)
            lv.client.close()
            httpx_logger.setLevel(level)


@pytest.fixture(autouse=True)
def rss_trace(request, live):
    """The server's memory (its process, and with its loader processes) after each test, for the last test's log."""
    yield
    live.rss_trace.append((request.node.name, rss_kb(live.proc.pid), tree_rss_kb(live.proc.pid)))


# -- authentication --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer rq_",
        "Bearer rq__",
        "Bearer rq_0000_secret",
        "Bearer " + "A" * 8000,
        "Bearer rq_" + "9" * 4000 + "_" + "x" * 3000,
        "Bearer rq_abc_def' OR '1'='1",
        "Token rq_abc_def",
        "Bearer\trq_abc_def",
        "Bearer rq_abc_def rq_abc_def",
    ],
)
def test_abused_authorization_headers_get_401(live, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("GET", "/v1/collections"), ("POST", "/v1/ask"), ("GET", "/v1/jobs")):
        r = live.send(method, path, who=None, headers=headers, json={"question": "x", "collection": "beta"})
        err = assert_json_error(r, 401)
        assert "ragqa keys create" in err["message"] and r.headers.get("www-authenticate") == "Bearer"


def test_a_key_in_the_query_string_or_a_cookie_is_not_a_key(live):
    key = live.h["admin"]["Authorization"].split()[1]
    assert_json_error(live.send("GET", f"/v1/collections?api_key={key}", who=None), 401)
    assert_json_error(live.send("GET", "/v1/collections", who=None, headers={"Cookie": f"Authorization={key}"}), 401)


def test_two_authorization_headers_do_not_lift_a_tenant_limit(live):
    """A second header (the admin's) next to key A's is not read: A still sees only its own collection."""
    raw = [(b"authorization", live.h["a"]["Authorization"].encode()), (b"authorization", b"Bearer rq_x_y")]
    r = live.client.get("/v1/collections", headers=raw)
    live.count(r.status_code)
    if r.status_code == 200:
        assert [c["name"] for c in r.json()["data"]] == ["alpha"]
    else:
        assert_json_error(r, 401)


# -- bodies: size, nesting, encodings, content types -----------------------------------------
def test_oversized_json_bodies_get_413_announced_or_chunked(live):
    big = json.dumps({"question": "q" * (2 * MB), "collection": "beta"}).encode()
    err = assert_json_error(
        live.send("POST", "/v1/ask", content=big, headers={"Content-Type": "application/json"}), 413
    )
    assert "limit" in err["message"]

    def chunks():
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    r = live.send("POST", "/v1/ask", content=chunks(), headers={"Content-Type": "application/json"})  # no length
    assert_json_error(r, 413)


def test_an_oversized_upload_gets_413(live):
    blob = b"a" * (UPLOAD_MB * MB + 200 * 1024)
    r = live.send("POST", "/v1/collections/beta/documents", who="b", files=[("files", ("big.txt", blob))])
    err = assert_json_error(r, 413)
    assert "limit" in err["message"]


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_json_gets_4xx(live, depth):
    for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        wrapped = '{"question": ' + body + ', "collection": "beta"}'
        r = live.send("POST", "/v1/ask", who="b", content=wrapped, headers={"Content-Type": "application/json"})
        assert_json_error(r, 400, 422)
        r = live.send("POST", "/v1/collections", who="b", content=body, headers={"Content-Type": "application/json"})
        assert_json_error(r, 400, 422)


HUGE = "\u00e9" * 300_000  # 600 KB of UTF-8: under the JSON limit, above every field's own limit


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/ask", {"question": HUGE, "collection": "beta"}),
        ("/v1/ask", {"question": "Where?", "collection": HUGE}),
        ("/v1/ask", {"question": "Where?", "collection": "beta", "mode": HUGE}),
        ("/v1/ask", {"question": "Where?", "collection": "beta", "adapter": HUGE}),
        ("/v1/ask", {"question": "Where?", "collection": "beta", "conversation_id": HUGE}),
        ("/v1/ask", {"question": "Where?", "collection": "beta", "answer_style": HUGE}),
        ("/v1/ask", {"question": "Where?", "collection": "beta", HUGE: 1}),
        ("/v1/collections", {"name": HUGE}),
        ("/v1/collections", {"name": "ok", "index": HUGE}),
        ("/v1/chat/completions", {"model": HUGE, "messages": [{"role": "user", "content": "Where?"}]}),
        ("/v1/chat/completions", {"model": "ragqa:beta", "messages": [{"role": "user", "content": HUGE}]}),
        ("/v1/chat/completions", {"model": "ragqa:beta", "messages": [{"role": HUGE, "content": "x"}]}),
        ("/v1/answers/{answer_b}/feedback", {"rating": "down", "correction": HUGE}),
        ("/v1/answers/{answer_b}/feedback", {"rating": "down", "comment": HUGE}),
        ("/v1/answers/{answer_b}/feedback", {"rating": HUGE}),
    ],
)
def test_huge_strings_in_every_field_get_4xx(live, path, body):
    content = json.dumps(body, ensure_ascii=False).encode()  # UTF-8: under the 1 MB JSON limit
    r = live.send(
        "POST", path.format(**live.ids), who="b", content=content, headers={"Content-Type": "application/json"}
    )
    assert_json_error(r)


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/collections/" + "n" * 6000),
        ("GET", "/v1/collections/beta/documents?limit=" + "9" * 400),
        ("GET", "/v1/collections/beta/documents?offset=-1"),
        ("GET", "/v1/jobs/" + "j" * 6000),
        ("GET", "/v1/jobs?limit=" + "9" * 400),
        ("GET", "/v1/conversations/" + "c" * 6000),
        ("DELETE", "/v1/collections/beta/documents/" + "d" * 6000),
    ],
)
def test_huge_path_and_query_values_get_4xx(live, method, path):
    assert_json_error(live.send(method, path, who="b"))


@pytest.mark.parametrize(
    "text",
    [
        "Where is the \x00 launch code?",
        "\x00\x01\x02\x1b[31m\x7f",
        "\ud800 lone surrogate",
        "\udfff\ud800",
        "\u202eedoc hcnual\u202c",
        "\ufeff\u200b\u200d",
        "\U0001f4a3" * 100,
        "A\u0301" * 100,
    ],
)
def test_unicode_nul_and_control_characters_in_questions_and_names(live, text):
    body = json.dumps({"question": text, "collection": "beta"})  # ASCII with \\u escapes: lone surrogates survive
    r = live.send("POST", "/v1/ask", who="b", content=body, headers={"Content-Type": "application/json"})
    if r.status_code == 200:
        assert r.json()["collection"] == "beta"
    else:
        assert_json_error(r, 422)
    body = json.dumps({"name": text})
    r = live.send("POST", "/v1/collections", who="admin", content=body, headers={"Content-Type": "application/json"})
    assert_json_error(r, 422)
    body = json.dumps({"rating": "up", "comment": text})
    path = "/v1/answers/{answer_b}/feedback".format(**live.ids)
    r = live.send("POST", path, who="b", content=body, headers={"Content-Type": "application/json"})
    if r.status_code != 201:
        assert_json_error(r, 422)


@pytest.mark.parametrize(
    "raw_path",
    [
        "/v1/collections/%00",
        "/v1/collections/..%2f..%2fetc",
        "/v1/collections/%2e%2e",
        "/v1/collections/beta%00/documents",
        "/v1/collections/%ff%fe",
        "/v1/collections/beta/documents/..%2f..%2f..%2fserver.sqlite",
        "/v1/jobs/%0d%0aX-Injected:%20yes",
    ],
)
def test_hostile_path_segments_get_4xx(live, raw_path):
    r = live.send("GET", raw_path, who="b")
    assert_json_error(r)
    assert "x-injected" not in r.headers


def test_a_huge_source_filter_matches_nothing(live):
    r = live.send("GET", "/v1/collections/beta/documents?source=" + "s" * 6000, who="b")
    assert r.status_code == 200 and r.json()["count"] == 0, r.text


@pytest.mark.parametrize(
    "content_type, content",
    [
        ("text/plain", b'{"question": "Where?", "collection": "beta"}'),
        ("application/xml", b"<ask><question>Where?</question></ask>"),
        ("application/x-www-form-urlencoded", b"question=Where%3F&collection=beta"),
        ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data; name=q\r\n\r\nx\r\n--zz--\r\n"),
        ("application/json", b"\xff\xfe\x00garbage"),
        ("application/json", b""),
        ("application/json", b"null"),
        ("application/json", b'["question", "collection"]'),
    ],
)
def test_wrong_content_types_and_bodies_on_ask_get_4xx(live, content_type, content):
    r = live.send("POST", "/v1/ask", who="b", content=content, headers={"Content-Type": content_type})
    assert_json_error(r, 400, 415, 422)


def test_compressed_bodies_are_not_inflated(live):
    """A gzip bomb sent as ``Content-Encoding: gzip`` is taken as the bytes it is: a 4xx, no inflation."""
    bomb = gzip.compress(b'{"question": "' + b"a" * (200 * MB) + b'", "collection": "beta"}', compresslevel=9)
    assert len(bomb) < MB
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    assert_json_error(live.send("POST", "/v1/ask", who="b", content=bomb, headers=headers), 400, 415, 422)
    headers = {"Content-Type": "application/gzip", "Content-Encoding": "gzip"}
    r = live.send("POST", "/v1/collections/beta/documents", who="b", content=bomb, headers=headers)
    assert_json_error(r, 400, 415, 422)


@pytest.mark.parametrize(
    "content_type, content",
    [
        ("application/json", b'{"files": ["a.txt"]}'),
        ("text/plain", b"just text"),
        ("multipart/form-data", b"--x\r\n\r\n--x--"),  # no boundary
        ("multipart/form-data; boundary=" + "b" * 200, b"--" + b"b" * 200 + b"--\r\n"),
        ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data; name=files\r\n\r\nx\r\n--zz--"),
        ("multipart/form-data; boundary=zz", b"--zz\r\nno headers at all"),
    ],
)
def test_wrong_content_types_on_uploads_get_4xx(live, content_type, content):
    r = live.send(
        "POST", "/v1/collections/beta/documents", who="b", content=content, headers={"Content-Type": content_type}
    )
    assert_json_error(r, 400, 415, 422)


# -- uploads: names, part counts, archives ----------------------------------------------------
HOSTILE_NAMES = [
    "../../../../etc/passwd.txt",
    "/etc/shadow.txt",
    "..\\..\\windows\\win.ini.txt",
    "C:\\boot.txt",
    "a\x00b.txt",
    "evil.txt\x00.pdf",
    "line\nbreak.txt",
    "\u202eexe.txt",
    ".." + "/" * 40 + "x.txt",
    "n" * 5000 + ".txt",
    "CON.txt",
    "~/.ssh/authorized_keys.txt",
    "%2e%2e%2fescape.txt",
]


def multipart(parts: list[tuple[str, bytes]], boundary: str = "hostile-boundary-7f3a") -> tuple[bytes, str]:
    """A multipart body written by hand, so file names go out byte for byte (NUL and newlines included)."""
    out = io.BytesIO()
    for name, data in parts:
        out.write(f"--{boundary}\r\n".encode())
        out.write(
            f'Content-Disposition: form-data; name="files"; filename="{name}"\r\n'.encode("utf-8", "surrogatepass")
        )
        out.write(b"Content-Type: text/plain\r\n\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def test_path_like_upload_names_stay_in_the_uploads_folder(live):
    outside = {p for p in live.home.parent.rglob("*")} - set(live.home.rglob("*"))
    text = "Hostile name test {}: the door number {} opens at noon.\n"
    names = [HOSTILE_NAMES[i : i + MAX_FILES] for i in range(0, len(HOSTILE_NAMES), MAX_FILES)]
    for b, batch in enumerate(names):
        body, ctype = multipart([(n, text.format(b, i).encode()) for i, n in enumerate(batch)])
        r = live.send("POST", "/v1/collections/beta/documents", who="b", content=body, headers={"Content-Type": ctype})
        if r.status_code != 202:
            assert_json_error(r, 400, 415, 422)
            continue
        job = live.wait_job(r.json()["job_id"], "b")
        for f in job["files"]:
            assert "/" not in f["filename"] and "\\" not in f["filename"] and "\x00" not in f["filename"], f
            assert f["status"] in ("added", "replaced", "unchanged") or f["error"], f
    assert {p for p in live.home.parent.rglob("*")} - set(live.home.rglob("*")) == outside  # nothing written outside
    uploads = (live.home / "uploads").resolve()
    for p in (live.home / "uploads").rglob("*"):
        assert uploads in p.resolve().parents, p
    for d in live.send("GET", "/v1/collections/beta/documents?limit=1000", who="b").json()["data"]:
        assert not d["source"].startswith("/") and ".." not in d["source"].split("/"), d


@pytest.mark.parametrize("parts", [MAX_FILES + 1, 1001, 5000])
def test_many_tiny_multipart_parts_get_4xx(live, parts):
    r = live.send(
        "POST", "/v1/collections/beta/documents", who="b", files=[("files", (f"{i}.txt", b"x")) for i in range(parts)]
    )
    assert_json_error(r, 400, 413, 422)
    if parts <= 1000:  # form fields next to the files are ignored up to the parser's 1000
        return
    fields = {f"f{i}": "x" for i in range(parts)}
    r = live.send("POST", "/v1/collections/beta/documents", who="b", data=fields, files=[("files", ("a.txt", b"x"))])
    assert_json_error(r, 400, 413, 422)


def _docx_bomb(member_mb: int) -> bytes:
    """A .docx whose document.xml inflates to ``member_mb`` MB (a few hundred KB compressed)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="xml" ContentType="application/xml"/></Types>',
        )
        with zf.open("word/document.xml", "w", force_zip64=True) as f:
            f.write(
                b'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>'
            )
            block = b" " * MB
            for _ in range(member_mb):
                f.write(block)
            f.write(b"</w:t></w:r></w:p></w:body></w:document>")
    return buf.getvalue()


def _nested_zip_bomb() -> bytes:
    """A .docx holding many members that each inflate a lot (a 'wide' bomb)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(20):  # each far above ingest.loader.max_zip_ratio (200x)
            zf.writestr(f"word/media/{i}.bin", b"\0" * (5 * MB))
    return buf.getvalue()


def _pdf_flate_bomb(mb: int) -> bytes:
    """A one-page PDF whose content stream inflates to ``mb`` MB."""
    import zlib

    stream = zlib.compress(b"0 0 m " * (mb * MB // 6), 9)
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for i, obj in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref))
    return out.getvalue()


def test_decompression_bombs_fail_their_job_entry_with_a_reason(live):
    files = [
        ("files", ("bomb.docx", _docx_bomb(250))),  # above ingest.loader.max_unzipped_mb (200)
        ("files", ("wide.docx", _nested_zip_bomb())),
        ("files", ("flate.pdf", _pdf_flate_bomb(100))),
        ("files", ("nested.json", ("[" * 200_000 + "]" * 200_000).encode())),
        ("files", ("ok.txt", b"A good file next to the bombs: the yellow key opens the shed.\n")),
    ]
    assert all(len(f[1][1]) <= UPLOAD_MB * MB for f in files), [len(f[1][1]) for f in files]
    r = live.send("POST", "/v1/collections/beta/documents", who="b", files=files)
    assert r.status_code == 202, r.text
    job = live.wait_job(r.json()["job_id"], "b", timeout=300)
    by_name = {f["original"]: f for f in job["files"]}
    assert by_name["ok.txt"]["status"] in ("added", "replaced", "unchanged"), job
    for name in ("bomb.docx", "wide.docx"):
        assert by_name[name]["status"] == "failed" and "zip bomb" in by_name[name]["error"], by_name[name]
    for name in ("flate.pdf", "nested.json"):  # failed with a reason, or read within the limits
        f = by_name[name]
        assert f["status"] != "pending" and (f["status"] != "failed" or f["error"]), f


# -- slow clients ----------------------------------------------------------------------------
def test_slow_bodies_do_not_hold_the_server(live):
    """Twenty clients announce a body and trickle it a byte at a time; questions and /healthz still answer."""
    host, port = live.base.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(20):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(
                b"POST /v1/ask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
                + b"Authorization: "
                + live.h["b"]["Authorization"].encode()
                + b"\r\n\r\n{"
            )
            socks.append(s)
        for _ in range(5):
            for s in socks:
                s.sendall(b" ")
            t0 = time.perf_counter()
            assert httpx.get(f"{live.base}/healthz", timeout=5).status_code == 200
            assert time.perf_counter() - t0 < 1.0
            time.sleep(0.3)
        r = live.send("POST", "/v1/ask", who="b", json={"question": "Where is the launch code?", "collection": "beta"})
        assert r.status_code == 200, r.text
    finally:
        for s in socks:
            s.close()
        live.statuses[0] += len(socks)  # sent, never finished: no answer expected


def test_oversized_headers_are_refused_by_the_http_layer(live):
    """Header blocks beyond the HTTP server's limit are refused before the app (uvicorn answers, not JSON)."""
    host, port = live.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        # the server may cut the connection before the client has sent it all: also a refusal
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(b"GET /v1/collections HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MB) + b"\r\n\r\n")
        try:
            reply = s.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            reply = b""
    status = int(reply.split()[1]) if reply.startswith(b"HTTP/1.1") else 0
    live.count(status or 400)
    assert reply == b"" or 400 <= status < 500, reply[:200]
    assert httpx.get(f"{live.base}/healthz", timeout=5).status_code == 200  # and the server serves on


# -- tenants ---------------------------------------------------------------------------------
def test_key_a_cannot_read_or_change_key_b_data(live):
    ids = live.ids
    probes = [
        ("GET", "/v1/collections/beta", None),
        ("DELETE", "/v1/collections/beta", None),
        ("GET", "/v1/collections/beta/documents", None),
        ("GET", "/v1/collections/beta/documents?source=beta.txt", None),
        ("DELETE", f"/v1/collections/beta/documents/{ids['doc_b']}", None),
        ("DELETE", "/v1/collections/beta/documents?source=beta.txt", None),
        ("GET", f"/v1/jobs/{ids['job_beta']}", None),
        ("GET", f"/v1/conversations/{ids['conversation_b']}", None),
        ("DELETE", f"/v1/conversations/{ids['conversation_b']}", None),
        ("POST", f"/v1/answers/{ids['answer_b']}/feedback", {"rating": "down", "comment": "from A"}),
        ("POST", "/v1/ask", {"question": "Where is the launch code?", "collection": "beta"}),
        ("POST", "/v1/ask", {"question": "And?", "collection": "alpha", "conversation_id": ids["conversation_b"]}),
        ("POST", "/v1/chat/completions", {"model": "ragqa:beta", "messages": [{"role": "user", "content": "Code?"}]}),
        ("POST", "/v1/collections", {"name": "beta"}),
        ("POST", "/v1/collections", {"name": "gamma"}),
    ]
    for method, path, body in probes:
        r = live.send(method, path, who="a", json=body) if body is not None else live.send(method, path, who="a")
        err = assert_json_error(r, 403, 404)
        assert "launch code" not in r.text and "blue vault" not in r.text, (path, err)
    r = live.send("POST", "/v1/collections/beta/documents", who="a", files=[("files", ("x.txt", b"planted by A"))])
    assert_json_error(r, 403, 404)
    # what A may list holds nothing of B's
    assert [c["name"] for c in live.send("GET", "/v1/collections", who="a").json()["data"]] == ["alpha"]
    assert {j["collection"] for j in live.send("GET", "/v1/jobs", who="a").json()["data"]} <= {"alpha"}
    assert ids["conversation_b"] not in live.send("GET", "/v1/conversations", who="a").text
    assert [m["id"] for m in live.send("GET", "/v1/models", who="a").json()["data"]] == ["ragqa:alpha"]
    # and B's data is untouched
    beta = live.send("GET", "/v1/collections/beta/documents", who="b").json()
    assert ids["doc_b"] in {d["doc_id"] for d in beta["data"]}
    assert live.send("GET", f"/v1/conversations/{ids['conversation_b']}", who="b").status_code == 200
    assert live.send("GET", "/v1/collections/gamma", who="admin").status_code == 404


# -- server paths ----------------------------------------------------------------------------
def test_health_and_answers_show_model_names_not_server_paths(live):
    health = httpx.get(f"{live.base}/healthz").json()
    ans = live.send("POST", "/v1/ask", who="b", json={"question": "Where is the launch code?", "collection": "beta"})
    coll = live.send("GET", "/v1/collections/beta", who="b").json()
    for shown in (health["models"]["embedder"], health["models"]["generator"], ans.json()["model"], coll["embedder"]):
        assert "/" not in shown and str(live.home.parent) not in shown, shown
    text = json.dumps(health) + ans.text + json.dumps(coll)
    assert str(live.home.parent) not in text and "/tmp/" not in text


# -- last: the server stayed up, answered /healthz, and kept its memory -----------------------
def test_zz_server_stayed_healthy_within_its_memory_bound(live):
    """Runs last (file order): /healthz 200 throughout and now, RSS growth bounded, and no 5xx anywhere."""
    assert live.proc.poll() is None, "the server died"
    for _ in range(3):
        assert httpx.get(f"{live.base}/healthz", timeout=5).status_code == 200
    rss_kb = tree_rss_kb(live.proc.pid)
    live.watch.stop.set()
    live.watch.join(15)
    samples = live.watch.samples
    latencies = sorted(t for _, t in samples)
    p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else 0.0
    growth_mb = (max(rss_kb, live.watch.max_rss_kb) - live.rss0_kb) / 1024
    sent = sum(live.statuses.values())
    fours = sum(n for s, n in live.statuses.items() if 400 <= s < 500)
    fives = sum(n for s, n in live.statuses.items() if s >= 500)
    logger.info(
        "hostile suite: %d requests (%d 4xx, %d 5xx, statuses %s) in %.1f s; RSS %.0f -> %.0f MiB (max growth "
        "%.0f MiB); /healthz %d polls, %d not 200, p95 %.3f s, max %.3f s",
        sent,
        fours,
        fives,
        dict(sorted(live.statuses.items())),
        time.perf_counter() - live.t0,
        live.rss0_kb / 1024,
        rss_kb / 1024,
        growth_mb,
        len(samples),
        sum(1 for s, _ in samples if s != 200),
        p95,
        latencies[-1] if latencies else 0.0,
    )
    steps, before = [], (live.rss0_own_kb, live.rss0_kb)
    for name, own, tree in live.rss_trace:
        steps.append((tree - before[1], own - before[0], name))
        before = (own, tree)
    logger.info(
        "largest RSS steps (MiB, server and loaders / server alone): %s",
        "; ".join(f"{t / 1024:+.0f} / {o / 1024:+.0f} {n}" for t, o, n in sorted(steps, reverse=True)[:6]),
    )
    assert fives == 0, live.statuses
    assert samples and all(s == 200 for s, _ in samples), [s for s, _ in samples if s != 200]
    assert p95 < HEALTH_P95_S, p95
    assert growth_mb < RSS_GROWTH_MB, growth_mb
