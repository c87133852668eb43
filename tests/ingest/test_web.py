"""Web pages: fetch, extract (trafilatura), store with the URL as source; crawl limits, robots.txt, per-URL errors.

Every page comes from a local ``http.server`` on 127.0.0.1 serving files the test writes (and the Python docs
when the system has them); nothing leaves the machine.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ingest.config import ChunkingConfig, EmbedderConfig, IngestConfig
from ingest.source_config import WebConfig
from ingest.web import Fetched, FetchError, RobotsRules, ingest_web, is_url, normalise_url, sitemap_urls
from ingest.workspace import Workspace

pytestmark = pytest.mark.integration  # a local HTTP server per test module

PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")


def words(tag: str, n: int = 4) -> str:
    return " ".join(
        f"<p>The {tag} page, paragraph {i}, explains one more detail about {tag} in plain sentences.</p>"
        for i in range(n)
    )


def page(title: str, body: str, head: str = "") -> str:
    return (
        f"<!doctype html><html><head><title>{title}</title>{head}</head><body>"
        f"<nav><a href='/index.html'>Home</a> navigation chrome</nav><main><h1>{title}</h1>{body}</main>"
        "<footer>Copyright footer text</footer></body></html>"
    )


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, *args, log: list[str], **kwargs) -> None:
        self._log = log
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self._log.append(self.path)
        if self.path == "/slow.html":
            time.sleep(2.0)
        if self.path == "/stream.html":  # no Content-Length: the limit is checked while reading
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"<p>" + b"x" * 1024 + b"</p>")
            return
        super().do_GET()

    def log_message(self, format, *args) -> None:  # quiet
        pass


class Site:
    """A folder served over HTTP on 127.0.0.1; ``requests`` lists the paths asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        handler = partial(_Handler, log=self.requests, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def write(self, path: str, text: str) -> None:
        p = self.root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


@pytest.fixture()
def site(tmp_path) -> Iterator[Site]:
    s = Site(tmp_path / "site")
    s.root.mkdir()
    s.write("robots.txt", "User-agent: *\nDisallow: /private/\n")
    s.write(
        "index.html",
        page(
            "Index",
            words("index")
            + "<a href='a.html'>A</a> <a href='b.html#part'>B</a> <a href='private/secret.html'>secret</a> "
            "<a href='http://offsite.invalid/x.html'>elsewhere</a> <a href='missing.html'>gone</a> "
            "<a href='big.html'>big</a> <a href='noindex.html'>noindex</a> <a href='notes.txt'>notes</a>",
        ),
    )
    s.write("a.html", page("Alpha", words("alpha") + "<a href='deep/c.html'>C</a>"))
    s.write("b.html", page("Beta", words("beta")))
    s.write("deep/c.html", page("Gamma", words("gamma") + "<a href='d.html'>D</a>"))
    s.write("deep/d.html", page("Delta", words("delta")))
    s.write("private/secret.html", page("Secret", words("secret")))
    s.write("big.html", page("Big", words("big", 400)))
    s.write(
        "noindex.html",
        page("Hidden", words("hidden") + "<a href='deep/d.html'>D</a>", "<meta name='robots' content='noindex'>"),
    )
    s.write("notes.txt", "Plain text notes about epsilon, served as text/plain.\n\nA second paragraph on epsilon.")
    s.write(
        "sitemap.xml",
        "<?xml version='1.0' encoding='UTF-8'?>"
        "<urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>"
        f"<url><loc>{s.url('a.html')}</loc></url><url><loc>{s.url('b.html')}</loc></url>"
        "<url><loc>http://offsite.invalid/y.html</loc></url></urlset>",
    )
    s.thread.start()
    try:
        yield s
    finally:
        s.server.shutdown()
        s.server.server_close()


@pytest.fixture()
def ws(tmp_path, tiny_st_model) -> Workspace:
    cfg = IngestConfig(
        embedder=EmbedderConfig(model=str(tiny_st_model), backend="torch"),
        chunking=ChunkingConfig(chunk_tokens=48, overlap_tokens=8),
    )
    return Workspace(tmp_path / "home", cfg)


CFG = WebConfig(max_page_mb=0.02, timeout_s=5.0, depth=1, max_pages=50)


def stored(ws: Workspace, name: str = "w") -> dict[str, dict]:
    with ws.open(name, readonly=True) as coll:
        return {r.source: {"title": r.title, "metadata": r.metadata} for r in coll.store.list_documents()}


def failed(report) -> dict[str, str]:
    return {f.path: f.reason for f in report.failed}


class TestSinglePages:
    def test_a_page_is_stored_under_its_url_and_skipped_when_unchanged(self, ws, site):
        url = site.url("a.html")
        rep = ingest_web(ws, [url], "w", CFG)
        assert rep.added == [url] and rep.ok and rep.chunks >= 1
        doc = stored(ws)[url]
        assert doc["title"] == "Alpha" and doc["metadata"]["url"] == url
        assert doc["metadata"]["extractor"] == "trafilatura"
        with ws.open("w", readonly=True) as coll:
            text = "\n".join(r.text for r in coll.store.iter_chunks())
        assert "alpha page, paragraph 3" in text
        assert "navigation chrome" not in text and "Copyright footer" not in text  # main text only
        hits = ws.search("details about alpha", "w", k=2)
        assert hits and hits[0].source == url

        again = ingest_web(ws, [url], "w", CFG)
        assert again.unchanged == [url] and again.chunks_embedded == 0 and not again.added

        site.write("a.html", page("Alpha", words("alpha") + "<p>A new paragraph about zeta particles appears.</p>"))
        changed = ingest_web(ws, [url], "w", CFG)
        assert changed.replaced == [url] and changed.chunks_reused > 0

    def test_per_url_errors_never_sink_the_batch(self, ws, site):
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{sock.getsockname()[1]}/x.html"
        urls = [
            site.url("missing.html"),
            site.url("big.html"),
            "ftp://example.invalid/f.txt",
            closed,
            site.url("b.html"),
        ]
        rep = ingest_web(ws, urls, "w", CFG)
        assert rep.added == [site.url("b.html")]
        errors = failed(rep)
        assert "HTTP 404" in errors[site.url("missing.html")]
        assert "above the limit of 0.02 MB" in errors[site.url("big.html")]
        assert "only http:// and https://" in errors["ftp://example.invalid/f.txt"]
        assert "cannot reach" in errors[closed]
        assert set(stored(ws)) == {site.url("b.html")}

    def test_size_limit_without_content_length_and_timeout(self, ws, site):
        rep = ingest_web(
            ws, [site.url("stream.html"), site.url("slow.html")], "w", CFG.model_copy(update={"timeout_s": 0.5})
        )
        errors = failed(rep)
        assert "above the limit" in errors[site.url("stream.html")]
        assert "timed out after 0.5 s" in errors[site.url("slow.html")]

    def test_robots_txt_disallow_is_honoured(self, ws, site):
        url = site.url("private/secret.html")
        rep = ingest_web(ws, [url], "w", CFG)
        assert "robots.txt" in failed(rep)[url]
        assert "/private/secret.html" not in site.requests and "/robots.txt" in site.requests

    def test_plain_text_page_and_sitemap_without_crawl(self, ws, site):
        rep = ingest_web(ws, [site.url("notes.txt"), site.url("sitemap.xml")], "w", CFG)
        assert rep.added == [site.url("notes.txt")]
        assert "add --crawl" in failed(rep)[site.url("sitemap.xml")]


class TestCrawl:
    def test_depth_limit_robots_and_errors(self, ws, site):
        rep = ingest_web(ws, [site.url("index.html")], "w", CFG, crawl=True, depth=1)
        pages = {site.url(p) for p in ("index.html", "a.html", "b.html", "notes.txt")}
        assert set(rep.added) == pages
        assert set(stored(ws)) == pages  # b.html#part is b.html; c.html is two links away
        assert site.url("private/secret.html") in rep.skipped_robots
        assert "/private/secret.html" not in site.requests  # never even asked for
        assert site.url("noindex.html") in rep.skipped_robots  # fetched, but <meta robots noindex>
        errors = failed(rep)
        assert set(errors) == {site.url("missing.html"), site.url("big.html")}  # other hosts are left alone

        deeper = ingest_web(ws, [site.url("index.html")], "w", CFG, crawl=True, depth=3)
        assert set(deeper.added) == {site.url("deep/c.html"), site.url("deep/d.html")}
        assert set(deeper.unchanged) == pages  # nothing re-embedded

    def test_page_limit(self, ws, site):
        rep = ingest_web(ws, [site.url("index.html")], "w", CFG, crawl=True, depth=3, max_pages=3)
        assert rep.pages_fetched == 3 and rep.not_fetched > 0
        assert len(stored(ws)) <= 3

    def test_sitemap_lists_the_pages(self, ws, site):
        rep = ingest_web(ws, [site.url("sitemap.xml")], "w", CFG, crawl=True, depth=0)
        assert sorted(rep.added) == sorted([site.url("a.html"), site.url("b.html")])
        assert rep.skipped_offsite == ["http://offsite.invalid/y.html"]
        assert "/deep/c.html" not in site.requests  # depth 0: the listed pages only

    @pytest.mark.skipif(not (PYTHON_DOCS / "library" / "json.html").exists(), reason="no Python docs on this system")
    def test_small_crawl_of_the_python_docs(self, ws):
        docs = Site(PYTHON_DOCS)
        docs.thread.start()
        try:
            rep = ingest_web(
                ws,
                [docs.url("library/json.html")],
                "w",
                CFG.model_copy(update={"max_page_mb": 1.0}),  # contents.html (2.5 MB) is over the limit
                crawl=True,
                depth=1,
                max_pages=5,
            )
        finally:
            docs.server.shutdown()
            docs.server.server_close()
        assert rep.pages_fetched == 5 and rep.not_fetched > 0
        assert all("above the limit of 1 MB" in reason for reason in failed(rep).values())
        assert len(rep.added) == 5 - len(rep.failed) >= 3, failed(rep)
        assert all(src.startswith(docs.base) for src in stored(ws))
        titles = {d["title"] for d in stored(ws).values()}
        assert "json — JSON encoder and decoder" in titles, titles  # the <h1>, without its "¶" permalink
        with ws.open("w", readonly=True) as coll:
            assert not any("¶" in r.text for r in coll.store.iter_chunks())
        hits = ws.search("encode a Python object as a JSON string", "w", k=3)
        assert hits and all(h.source.startswith(docs.base) for h in hits)


class TestHelpers:
    def test_urls_and_paths(self):
        assert is_url("https://example.org/a") and is_url("ftp://x/y")
        assert not is_url("docs/a.html") and not is_url("/tmp/x.txt") and not is_url("C:\\docs\\a.txt")
        assert normalise_url("HTTP://Example.ORG/a?b=1#frag") == "http://example.org/a?b=1"
        assert normalise_url("https://example.org") == "https://example.org/"
        with pytest.raises(FetchError, match="no host"):
            normalise_url("http:///path")

    def test_sitemap_index_and_non_sitemaps(self):
        index = Fetched(
            "http://h/sitemap.xml",
            "application/xml",
            None,
            b"<?xml version='1.0'?><sitemapindex xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>"
            b"<sitemap><loc>http://h/s1.xml</loc></sitemap></sitemapindex>",
        )
        assert sitemap_urls(index) == ([], ["http://h/s1.xml"])
        html = Fetched("http://h/a.html", "text/html", None, b"<html><body>urlset</body></html>")
        assert sitemap_urls(html) is None
        entity = Fetched(  # an external entity is never resolved
            "http://h/s.xml",
            "application/xml",
            None,
            b"<?xml version='1.0'?><!DOCTYPE u [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
            b"<urlset><url><loc>http://h/&x;</loc></url></urlset>",
        )
        found = sitemap_urls(entity)
        assert found is not None and not any("root:" in u for u in found[0])

    @pytest.mark.parametrize(
        ("status", "allowed"), [(404, True), (410, True), (401, False), (403, False), (503, False), (None, True)]
    )
    def test_robots_txt_status_rules(self, status, allowed):
        """RFC 9309: a missing robots.txt allows everything; 401/403 and server errors disallow everything."""

        class NoRobots:
            def get(self, url: str) -> Fetched:
                raise FetchError(f"{url}: failed", status=status)

        rules = RobotsRules(NoRobots(), "ragqa")  # type: ignore[arg-type]
        assert rules.allowed("http://h/page.html") is allowed
