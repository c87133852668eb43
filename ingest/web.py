"""Web pages as documents: ``ragqa ingest URL`` and ``ragqa ingest --crawl URL``.

A page is fetched over http(s) (:class:`Fetcher`: a timeout per URL, a size limit read as the body arrives,
redirects only to http(s)), its main text extracted with ``trafilatura`` as Markdown (headings become the
document's sections, tables stay tables), and stored with the URL as its source. The content hash covers
the extracted title and text, so a re-ingest of an unchanged page embeds nothing.

A crawl starts from each given URL (a page, or a sitemap: ``<urlset>`` / ``<sitemapindex>``), follows links
within the start URL's host up to ``depth`` links away and stops after ``max_pages`` pages. ``robots.txt``
is respected for every fetch (:mod:`urllib.robotparser`: rules for ragqa's user agent, ``Crawl-delay`` up to
``max_crawl_delay_s``), and so are ``<meta name="robots">`` ``noindex`` and ``nofollow``. Errors are per URL,
like files: a 404, a timeout, an oversize or unsupported page fails alone and the rest goes on.

URL content is never a path: nothing fetched is written to disk or handed to a file loader.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.robotparser
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ingest.chunker import Chunker
from ingest.collection import Collection
from ingest.documents import Chunk, Document
from ingest.errors import IngestError, LoaderError
from ingest.loaders.text import decode_bytes, normalise_text, split_markdown
from ingest.pipeline import EMBED_BATCH_CHUNKS, FileFailure, IngestReport
from ingest.source_config import WebConfig

if TYPE_CHECKING:
    from ingest.workspace import Workspace

logger = logging.getLogger(__name__)

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"text/plain"})
MARKDOWN_TYPES = frozenset({"text/markdown", "text/x-markdown"})
XML_TYPES = frozenset({"application/xml", "text/xml"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
READ_BLOCK = 1 << 16
MAX_REDIRECTS = 5
MAX_SITEMAPS = 20  # sitemap files read per crawl (an index may name many)
DISALLOW_ALL = ["User-agent: *", "Disallow: /"]
# Permalink anchors ("¶" after every Sphinx heading) and copy buttons: never text.
PRUNE_XPATH = ["//a[contains(@class, 'headerlink')]", "//button"]
# trafilatura's Markdown escapes literal underscores and asterisks (``\_\_init\_\_``); the text is for reading
# and embedding, so they are put back as they were on the page.
_MD_ESCAPE = re.compile(r"\\([_*])")


class FetchError(LoaderError):
    """One URL could not be fetched (HTTP error, timeout, too large, unsupported); reported per URL."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def is_url(text: str) -> bool:
    """True for anything with a scheme (``https://...``, ``ftp://...``): not a path."""
    return bool(_SCHEME.match(str(text)))


def normalise_url(url: str) -> str:
    """An http(s) URL without its fragment, scheme and host lower-cased; raises :class:`FetchError` otherwise."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as exc:
        raise FetchError(f"{url}: not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"{url}: only http:// and https:// URLs can be ingested (got {scheme or 'no'} scheme)")
    if not parts.hostname:
        raise FetchError(f"{url}: the URL has no host; write it as https://host/path")
    netloc = parts.netloc.lower() if "@" not in parts.netloc else parts.netloc
    return urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _host(url: str) -> str:
    return (urllib.parse.urlsplit(url).hostname or "").lower()


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# -- fetching ------------------------------------------------------------------------------------


@dataclass
class Fetched:
    """One response: the URL after redirects, the media type (no parameters), its charset and the body."""

    url: str
    content_type: str
    charset: str | None
    body: bytes


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-http(s) URL {newurl!r}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Fetcher:
    """GET with a deadline for the whole response and a size limit checked while reading."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.max_bytes = int(config.max_page_mb * (1 << 20))
        self._opener = urllib.request.build_opener(_HttpOnlyRedirects())

    def get(self, url: str) -> Fetched:
        cfg = self.config
        req = urllib.request.Request(
            url,
            headers={
                "User-Agent": cfg.user_agent,
                "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,text/markdown;q=0.9,"
                "application/xml;q=0.8,*/*;q=0.1",
            },
        )
        deadline = time.monotonic() + cfg.timeout_s
        try:
            with self._opener.open(req, timeout=cfg.timeout_s) as resp:
                length = resp.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    raise self._too_large(url, int(length))
                body = bytearray()
                while chunk := resp.read1(READ_BLOCK):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise self._too_large(url, None)
                    if time.monotonic() > deadline:
                        raise FetchError(f"{url}: timed out after {cfg.timeout_s:g} s (web.timeout_s)")
                content_type = resp.headers.get_content_type().lower()
                charset = resp.headers.get_content_charset()
                final = resp.geturl()
        except urllib.error.HTTPError as exc:
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}", status=exc.code) from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError | socket.timeout):
                raise FetchError(f"{url}: timed out after {cfg.timeout_s:g} s (web.timeout_s)") from exc
            raise FetchError(f"{url}: cannot reach the server ({reason}); check the URL") from exc
        except TimeoutError as exc:
            raise FetchError(f"{url}: timed out after {cfg.timeout_s:g} s (web.timeout_s)") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise FetchError(f"{url}: the download failed ({type(exc).__name__}: {exc})") from exc
        return Fetched(url=final, content_type=content_type, charset=charset, body=bytes(body))

    def _too_large(self, url: str, size: int | None) -> FetchError:
        what = f"{size / (1 << 20):.3g} MB, " if size is not None else ""
        return FetchError(
            f"{url}: the page is {what}above the limit of {self.config.max_page_mb:g} MB (web.max_page_mb); "
            "raise the limit or leave the page out"
        )


class RobotsRules:
    """robots.txt per origin, read once per run (RFC 9309: a missing file allows all, 401/403 and server
    errors disallow all)."""

    def __init__(self, fetcher: Fetcher, user_agent: str) -> None:
        self.fetcher = fetcher
        self.user_agent = user_agent
        self._parsers: dict[str, urllib.robotparser.RobotFileParser] = {}
        self._last_fetch: dict[str, float] = {}

    def parser(self, url: str) -> urllib.robotparser.RobotFileParser:
        origin = _origin(url)
        rp = self._parsers.get(origin)
        if rp is None:
            rp = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
            try:
                fetched = self.fetcher.get(origin + "/robots.txt")
                text, _ = decode_bytes(fetched.body, origin + "/robots.txt")  # type: ignore[arg-type]
                rp.parse(text.splitlines())
            except FetchError as exc:
                if exc.status in (401, 403) or (exc.status is not None and exc.status >= 500):
                    rp.parse(DISALLOW_ALL)
                else:  # 404 and other client errors: no rules; unreachable: the page fetch reports it
                    rp.parse([])
            except LoaderError:  # not text: no usable rules
                rp.parse([])
            self._parsers[origin] = rp
        return rp

    def allowed(self, url: str) -> bool:
        return self.parser(url).can_fetch(self.user_agent, url)

    def wait_turn(self, url: str, max_delay_s: float) -> None:
        """Sleep out the site's Crawl-delay (capped at ``max_delay_s``) since the last fetch from it."""
        origin = _origin(url)
        raw = self.parser(url).crawl_delay(self.user_agent)
        delay = min(float(raw or 0.0), max_delay_s)
        last = self._last_fetch.get(origin)
        if last is not None and delay > 0:
            left = last + delay - time.monotonic()
            if left > 0:
                time.sleep(left)
        self._last_fetch[origin] = time.monotonic()


# -- extraction ----------------------------------------------------------------------------------


@dataclass
class Page:
    """What a fetched page gives: its document (None for ``noindex``), links to follow, and whether it may be
    followed (``nofollow``)."""

    document: Document | None
    links: list[str] = field(default_factory=list)
    follow: bool = True


def _robots_meta(tree) -> tuple[bool, bool]:
    """``(index, follow)`` from ``<meta name="robots">`` (or ``name="ragqa"``)."""
    index = follow = True
    for meta in tree.iter("meta"):
        if (meta.get("name") or "").lower() in ("robots", "ragqa"):
            words = {w.strip().lower() for w in (meta.get("content") or "").split(",")}
            index = index and not words & {"noindex", "none"}
            follow = follow and not words & {"nofollow", "none"}
    return index, follow


def _links(tree, base: str) -> list[str]:
    base_el = tree.find(".//base")
    if base_el is not None and base_el.get("href"):
        base = urllib.parse.urljoin(base, base_el.get("href"))
    out: list[str] = []
    for a in tree.iter("a"):
        href = (a.get("href") or "").strip()
        if not href or href.startswith(("#", "mailto:", "javascript:", "tel:")):
            continue
        if "nofollow" in (a.get("rel") or "").lower().split():
            continue
        try:
            out.append(normalise_url(urllib.parse.urljoin(base, href)))
        except FetchError:
            continue
    return list(dict.fromkeys(out))


def _title_from(text: str, fallback: str) -> str:
    for line in text.split("\n"):
        if line.startswith("#"):
            return line.lstrip("#").strip() or fallback
    return fallback


def _url_title(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    tail = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return tail or parts.hostname or url


def _decode(fetched: Fetched) -> str:
    if fetched.charset:
        try:
            return fetched.body.decode(fetched.charset)
        except (LookupError, UnicodeDecodeError):
            pass
    text, _ = decode_bytes(fetched.body, fetched.url)  # type: ignore[arg-type]
    return text


def _document(url: str, text: str, title: str, metadata: dict[str, Any], markdown: bool = True) -> Document:
    """The page's document; Markdown text (what trafilatura gives) is split into its heading sections."""
    text = normalise_text(text)
    if not text.strip():
        raise LoaderError(f"{url}: no main text found on the page; nothing to ingest")
    meta = {"format": "web", "url": url, "title": title, **{k: v for k, v in metadata.items() if v}}
    sections = split_markdown(text) if markdown else None
    return Document(text=text, source=url, title=title, metadata=meta, sections=sections)


def extract_page(fetched: Fetched) -> Page:
    """The page's main text as a document (trafilatura for HTML), and its links; raises :class:`LoaderError`."""
    url, ctype = fetched.url, fetched.content_type
    if ctype in HTML_TYPES:
        return _extract_html(fetched)
    if ctype in TEXT_TYPES:
        return Page(_document(url, _decode(fetched), _url_title(url), {"content_type": ctype}, markdown=False))
    if ctype in MARKDOWN_TYPES:
        text = _decode(fetched)
        return Page(_document(url, text, _title_from(text, _url_title(url)), {"content_type": ctype}))
    raise FetchError(
        f"{url}: unsupported content type {ctype!r}; web ingestion reads HTML, plain text and Markdown pages "
        "(download other files and ingest them as files)"
    )


def _extract_html(fetched: Fetched) -> Page:
    import trafilatura

    url = fetched.url
    tree = trafilatura.load_html(fetched.body)
    if tree is None:
        raise LoaderError(f"{url}: cannot parse the HTML page; check that the URL serves HTML")
    index, follow = _robots_meta(tree)
    links = _links(tree, url) if follow else []
    if not index:
        return Page(None, links, follow)
    meta = trafilatura.extract_metadata(tree, default_url=url, extensive=False)  # extensive: date search, slow
    text = trafilatura.extract(
        tree,
        url=url,
        output_format="markdown",
        include_tables=True,
        include_comments=False,
        include_links=False,
        include_images=False,
        favor_recall=True,
        with_metadata=False,
        prune_xpath=PRUNE_XPATH,
    )
    title = (meta.title if meta is not None else None) or _title_from(text or "", _url_title(url))
    title = title.rstrip("¶ ").strip() or _url_title(url)
    text = _MD_ESCAPE.sub(r"\1", text or "")
    extra: dict[str, Any] = {"content_type": fetched.content_type, "extractor": "trafilatura"}
    if meta is not None:
        extra.update({"sitename": meta.sitename, "date": meta.date, "language": getattr(meta, "language", None)})
    return Page(_document(url, text, title, extra), links, follow)


# -- sitemaps ------------------------------------------------------------------------------------


def sitemap_urls(fetched: Fetched) -> tuple[list[str], list[str]] | None:
    """``(page_urls, nested_sitemaps)`` when ``fetched`` is a sitemap, else None."""
    head = fetched.body[:2048].lstrip()
    if fetched.content_type not in XML_TYPES and not head.startswith(b"<?xml"):
        return None
    if b"<urlset" not in fetched.body[:8192] and b"<sitemapindex" not in fetched.body[:8192]:
        return None
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, recover=True)
    try:
        root = etree.fromstring(fetched.body, parser)
    except etree.LxmlError as exc:
        raise LoaderError(f"{fetched.url}: cannot parse the sitemap ({exc})") from exc
    if root is None:
        raise LoaderError(f"{fetched.url}: the sitemap is empty")
    locs = []
    for el in root.iter("{*}loc"):
        try:
            locs.append(normalise_url((el.text or "").strip()))
        except FetchError:
            continue
    if etree.QName(root).localname == "sitemapindex":
        return [], locs
    return locs, []


# -- ingestion -----------------------------------------------------------------------------------


@dataclass
class WebReport(IngestReport):
    """An :class:`IngestReport` for URLs (sources are URLs) and what the crawl left out."""

    pages_fetched: int = 0
    skipped_robots: list[str] = field(default_factory=list)
    skipped_offsite: list[str] = field(default_factory=list)
    not_fetched: int = 0  # links found but past --max-pages

    def to_dict(self) -> dict:
        return {
            **super().to_dict(),
            "pages_fetched": self.pages_fetched,
            "skipped_robots": len(self.skipped_robots),
            "skipped_offsite": len(self.skipped_offsite),
            "not_fetched": self.not_fetched,
        }


def page_digest(doc: Document) -> str:
    """The content hash of a page: its extracted title and text (markup and chrome changes do not count)."""
    h = hashlib.sha256(b"web\x1f")
    h.update(doc.title.encode("utf-8"))
    h.update(b"\x1f")
    h.update(doc.text.encode("utf-8"))
    return h.hexdigest()


@dataclass
class _PendingPage:
    source: str
    digest: str
    size: int
    doc: Document
    chunks: list[Chunk]
    vectors: list[np.ndarray | None]
    replaced: bool


class _PageBatch:
    """Pages extracted but not stored yet: embedded together, then stored one transaction per page."""

    def __init__(
        self,
        collection: Collection,
        embed: Callable[[list[str]], np.ndarray],
        chunker: Chunker | Callable[[], Chunker],
        report: WebReport,
    ) -> None:
        self.collection = collection
        self.embed = embed
        self._chunker = chunker if isinstance(chunker, Chunker) else None
        self._factory = None if isinstance(chunker, Chunker) else chunker
        self.report = report
        self.pending: list[_PendingPage] = []
        self.n_new = 0

    def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = self._factory()  # type: ignore[misc]
        return self._chunker

    def stage(self, doc: Document, size: int) -> None:
        source = doc.source
        digest = page_digest(doc)
        old = self.collection.file_hash(source)
        if old == digest:
            self.report.unchanged.append(source)
            return
        chunks = self.chunker().chunk_all([doc])
        reuse = self.collection.store.embeddings_by_text(source) if old is not None else {}
        vectors = [reuse.get(c.text) for c in chunks]
        self.report.chunks_reused += sum(v is not None for v in vectors)
        self.n_new += sum(v is None for v in vectors)
        self.pending.append(_PendingPage(source, digest, size, doc, chunks, vectors, replaced=old is not None))

    def commit(self) -> None:
        pending, self.pending, self.n_new = self.pending, [], 0
        todo = [(p, i) for p in pending for i, v in enumerate(p.vectors) if v is None]
        if todo:
            try:
                vecs = self.embed([p.chunks[i].text for p, i in todo])
            except Exception as exc:  # these pages fail, the run goes on
                logger.exception("embedding failed")
                self.report.failed.extend(FileFailure(p.source, f"embedding failed: {exc}") for p in pending)
                return
            for (p, i), v in zip(todo, vecs):
                p.vectors[i] = v
            self.report.chunks_embedded += len(todo)
        for p in pending:
            try:
                if p.vectors:
                    matrix = np.stack([v for v in p.vectors if v is not None])
                else:
                    matrix = np.zeros((0, self.collection.dim), np.float32)
                self.collection.replace_file(p.source, p.digest, p.size, [p.doc], p.chunks, matrix)
            except Exception as exc:  # one page's failure must not sink the batch
                logger.exception("could not store %s", p.source)
                self.report.failed.append(FileFailure(p.source, f"could not store: {exc}"))
                continue
            (self.report.replaced if p.replaced else self.report.added).append(p.source)
            self.report.documents += 1
            self.report.chunks += len(p.chunks)


def ingest_urls(
    urls: Sequence[str],
    collection: Collection,
    embed: Callable[[list[str]], np.ndarray],
    chunker: Chunker | Callable[[], Chunker],
    config: WebConfig,
    *,
    crawl: bool = False,
    depth: int | None = None,
    max_pages: int | None = None,
    progress: bool = False,
    embed_batch_chunks: int = EMBED_BATCH_CHUNKS,
    fetcher: Fetcher | None = None,
) -> WebReport:
    """Ingest the pages at ``urls`` (with ``crawl``, the pages they link to within their host, up to ``depth``
    links away and ``max_pages`` pages in all) into ``collection``; never raises for a single bad URL."""
    t0 = time.perf_counter()
    depth = depth if depth is not None else config.depth
    max_pages = max_pages if max_pages is not None else config.max_pages
    report = WebReport(collection=collection.name)
    fetcher = fetcher or Fetcher(config)
    robots = RobotsRules(fetcher, config.user_agent)
    batch = _PageBatch(collection, embed, chunker, report)
    queue: deque[tuple[str, int, str, bool]] = deque()  # (url, depth, host, named by the user)
    seen: set[str] = set()
    for raw in urls:
        try:
            url = normalise_url(raw)
        except FetchError as exc:
            report.failed.append(FileFailure(str(raw), str(exc)))
            continue
        if url not in seen:
            seen.add(url)
            queue.append((url, 0, _host(url), True))
    bar = _progress_bar(progress, collection.name)
    sitemaps = 0
    try:
        while queue:
            url, level, host, named = queue.popleft()
            if crawl and report.pages_fetched >= max_pages:
                report.not_fetched += 1
                continue
            if not robots.allowed(url):
                if named:
                    reason = f"{url}: robots.txt of {_origin(url)} does not allow {config.user_agent!r} to fetch it"
                    report.failed.append(FileFailure(url, reason))
                else:
                    report.skipped_robots.append(url)
                continue
            robots.wait_turn(url, config.max_crawl_delay_s)
            try:
                fetched = fetcher.get(url)
            except FetchError as exc:
                report.pages_fetched += 1  # a failed request counts towards --max-pages too
                report.failed.append(FileFailure(url, str(exc)))
                continue
            try:
                final = normalise_url(fetched.url)
                if final != url and (final in seen or (crawl and _host(final) != host)):
                    if _host(final) != host:
                        report.skipped_offsite.append(url)
                    continue  # else: redirected to a page already taken
                seen.add(final)
                fetched.url = final
                found = sitemap_urls(fetched)
                if found is not None:
                    if not crawl:
                        raise LoaderError(f"{url}: this is a sitemap; add --crawl to ingest the pages it lists")
                    sitemaps += 1
                    pages, nested = found
                    for loc in nested[: max(0, MAX_SITEMAPS - sitemaps)] + pages:
                        if loc in seen:
                            continue
                        if _host(loc) != host:
                            report.skipped_offsite.append(loc)
                            continue
                        seen.add(loc)
                        queue.append((loc, 0, host, False))  # the pages a sitemap lists are start pages
                    continue
                report.pages_fetched += 1
                if bar is not None:
                    bar.update(1)
                page = extract_page(fetched)
            except (LoaderError, IngestError, UnicodeError) as exc:
                report.failed.append(FileFailure(url, str(exc)))
                continue
            if crawl and page.follow and level < depth:
                for link in page.links:
                    if link in seen:
                        continue
                    if _host(link) != host:
                        continue  # other hosts are never crawled (not counted: most pages link out)
                    seen.add(link)
                    queue.append((link, level + 1, host, False))
            if page.document is None:
                report.skipped_robots.append(url)  # <meta name="robots" content="noindex">
                continue
            batch.stage(page.document, len(fetched.body))
            if batch.n_new >= embed_batch_chunks:
                batch.commit()
        if batch.pending:
            batch.commit()
    finally:
        if bar is not None:
            bar.close()
        collection.flush()
    report.seconds = time.perf_counter() - t0
    return report


def _progress_bar(enabled: bool, name: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=f"fetch into {name}", unit="page")


def ingest_web(
    workspace: Workspace,
    urls: Sequence[str],
    name: str,
    config: WebConfig,
    *,
    crawl: bool = False,
    depth: int | None = None,
    max_pages: int | None = None,
    progress: bool = False,
) -> WebReport:
    """:func:`ingest_urls` into collection ``name`` of ``workspace`` (created on first use)."""
    with workspace.open_or_create(name) as coll:
        return ingest_urls(
            urls,
            coll,
            lambda texts: workspace.embedder.embed_documents(texts, progress=progress and len(texts) > 64),
            lambda: workspace.chunker_for(coll),
            config,
            crawl=crawl,
            depth=depth,
            max_pages=max_pages,
            progress=progress,
            embed_batch_chunks=max(64, 8 * workspace.config.embedder.batch_size),
        )
