"""The web crawler behind ``type: web`` sources: safe, polite, bounded, incremental.

Safety (SSRF). Every request goes through core's :meth:`~omnirag.core.netguard.GuardedClient.fetch`
(the one guarded fetch loop, shared with the gateway's image URLs): every host is resolved once per
crawl and refused when *any* of its addresses is loopback, private, link-local, multicast, reserved,
unspecified, not globally routable or a cloud-metadata address, unless the host (or that address) is
listed in ``allowHosts``; the checked addresses are pinned for the connection (the ``Host`` header,
TLS SNI and certificate checks keep the name); no proxy; redirects are followed by hand (at most 5)
and every hop is checked again (scheme, credentials, addresses, then robots.txt and scope here)
before it is requested; refused URLs are reported as ``SourceProblem(kind="refused")`` and never
fetched. Bodies are capped while they stream (compressed ones within the cap too), and each fetch
has one deadline (``timeout``), which the wait for a host's turn does not count against.

Text. Pages are decoded and read by :mod:`omnirag.extract` (charset from the header, the ``<meta>``
tag, a BOM, else UTF-8 or GB18030; main text and title of HTML; Markdown titles), as local files
are: the same page gives the same text from disk and from the web.

Politeness. robots.txt is fetched once per origin through the same fetcher (unreachable or 5xx →
allow everything, 401/403 → disallow everything, other 4xx → allow); ``Crawl-delay`` (whole seconds,
as the stdlib parser reads it, capped at :data:`MAX_CRAWL_DELAY`) raises the per-host delay. Requests
to one host start at least ``delay`` seconds apart (a source's ``delaySeconds``); at most
``concurrency`` requests (a source's ``concurrency``) are in flight at once, over all hosts.

Incremental. ``previous`` (URL → validators of the last run) turns requests into conditional ones;
304 answers land in :attr:`CrawlResult.unchanged`. Validators of HTML pages also carry the page's
links (``"links"``) and ``"content_type"``, so that links of an unchanged page are still followed on
the next run; a previous entry without ``"links"`` is not used for pages whose links are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import html
import io
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin
from urllib.robotparser import RobotFileParser

import httpx

from omnirag.core.netguard import (
    AddressGuard,
    BodyTooLarge,
    Fetched,
    FetchError,
    FetchTimeout,
    GuardedClient,
    HopCheck,
    RefusedURL,
    ResolveError,
    Resolver,
    system_resolver,
    url_refusal,
)
from omnirag.extract import decode_text, html_document, markdown_document, mime_of, normalize_text
from omnirag.extract.text import HTML_TYPES
from omnirag.indexer.sources import WebSource
from omnirag.indexer.types import SourceDocument, SourceProblem

logger = logging.getLogger(__name__)

USER_AGENT = "omnirag-indexer/0.1 (+https://github.com/omnirag)"
MAX_REDIRECTS = 5
MAX_CRAWL_DELAY = 30.0
ROBOTS_MAX_BYTES = 512 * 1024
MAX_SITEMAP_FILES = 50
MAX_SITEMAP_NESTING = 3
RETRY_PAUSE = 0.2

TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/x-markdown"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Links to these are never worth a request: nothing here turns into text.
_SKIP_EXTENSIONS = (
    *(".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".ico", ".bmp", ".tif", ".tiff", ".avif"),
    *(".mp3", ".mp4", ".m4a", ".ogg", ".wav", ".webm", ".avi", ".mov"),
    *(".zip", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".tar", ".exe", ".dmg", ".iso", ".bin"),
    *(".woff", ".woff2", ".ttf", ".otf", ".eot", ".css", ".js", ".mjs", ".map", ".wasm"),
)

# --------------------------------------------------------------------------------------------- config


@dataclass
class CrawlConfig:
    """One ``type: web`` source plus the crawler settings (delay, concurrency, timeout, size cap)."""

    urls: list[str]
    max_depth: int = 2
    max_pages: int = 500
    sitemap: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    allow_hosts: list[str] = field(default_factory=list)
    same_host: bool = True
    delay: float = 0.5
    concurrency: int = 4
    timeout: float = 15.0
    max_bytes: int = 5 * 1024 * 1024
    user_agent: str = USER_AGENT
    max_redirects: int = MAX_REDIRECTS
    retries: int = 1

    _include_re: list[re.Pattern[str]] = field(init=False, repr=False, compare=False)
    _exclude_re: list[re.Pattern[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.urls or not all(isinstance(u, str) and u for u in self.urls):
            raise ValueError("web source: 'urls' must be a non-empty list of URLs")
        if self.max_depth < 0:
            raise ValueError("web source: 'maxDepth' must be >= 0")
        if self.max_pages < 1:
            raise ValueError("web source: 'maxPages' must be >= 1")
        if self.concurrency < 1 or self.timeout <= 0 or self.max_bytes < 1 or self.delay < 0:
            raise ValueError("crawler settings: concurrency, timeout and max_bytes must be positive")
        self._include_re = _compile(self.include, "include")
        self._exclude_re = _compile(self.exclude, "exclude")

    @classmethod
    def from_source(cls, source: WebSource, **settings: Any) -> CrawlConfig:
        """The crawl of a ``type: web`` source. ``settings`` set the crawler's own fields by name
        (``delay=``, ``concurrency=``, ``timeout=``, ``max_bytes=``...); a source's own
        ``delaySeconds`` / ``concurrency`` win, because the author of the spec knows what the site
        it crawls can take."""
        values: dict[str, Any] = {
            "urls": list(source.urls),
            "max_depth": source.max_depth,
            "max_pages": source.max_pages,
            "sitemap": source.sitemap,
            "include": list(source.include),
            "exclude": list(source.exclude),
            "allow_hosts": list(source.allow_hosts),
            "same_host": source.same_host,
        }
        if source.delay_seconds is not None:
            values["delay"] = float(source.delay_seconds)
        if source.concurrency is not None:
            values["concurrency"] = source.concurrency
        return cls(**(settings | values))


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"web source: bad {what} pattern {pattern!r}: {exc}") from exc
    return compiled


@dataclass
class CrawlResult:
    documents: list[SourceDocument] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    problems: list[SourceProblem] = field(default_factory=list)
    validators: dict[str, dict[str, Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- URLs


def normalize_url(url: str, base: str | None = None) -> str | None:
    """Absolute http(s) URL with lowercase scheme/host, no default port, no fragment; else None."""
    url = url.strip()
    if base is not None:
        try:
            url = urljoin(base, url)
        except ValueError:
            return None
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, UnicodeError):
        return None
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.raw_host:
        return None
    if port is not None and not 0 < port < 65536:
        return None
    host = parsed.raw_host.decode("ascii").lower()
    netloc = f"[{host}]" if ":" in host else host
    if parsed.userinfo:
        netloc = f"{parsed.userinfo.decode('ascii')}@{netloc}"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    path = parsed.raw_path.decode("ascii") or "/"
    return f"{scheme}://{netloc}{path}"


def _host_port(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    return parsed.raw_host.decode("ascii").lower(), parsed.port or _DEFAULT_PORTS[parsed.scheme]


def _origin(url: str) -> str:
    """scheme://host[:port] of a normalised URL."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


# --------------------------------------------------------------------------------------------- text


def _page_text(body: bytes, content_type: str | None, url: str) -> tuple[str, str]:
    """(title, text) of a text/plain or Markdown page, read as a local file of that type is."""
    text = normalize_text(decode_text(body, content_type))
    title: str | None = None
    if mime_of(content_type) != "text/plain":
        markdown = markdown_document(text)
        title, text = markdown.title, markdown.text
    return title or httpx.URL(url).path.rstrip("/").rsplit("/", 1)[-1] or url, text


_LOC = re.compile(r"<(?:\w+:)?loc>\s*(.*?)\s*</(?:\w+:)?loc>", re.IGNORECASE | re.DOTALL)


def parse_sitemap(text: str) -> tuple[bool, list[str]]:
    """(is a sitemap index, <loc> values) — a regex scan, no XML parser, so no entity expansion."""
    is_index = re.search(r"<(?:\w+:)?sitemapindex[\s>]", text, re.IGNORECASE) is not None
    return is_index, [html.unescape(loc) for loc in _LOC.findall(text)]


# ------------------------------------------------------------------------------------------ crawler


class _Problem(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class _Skip(Exception):
    """The page is left to another queue entry, or the page budget is spent."""


@dataclass
class _Item:
    url: str
    depth: int
    fetched: bool = False  # counted against maxPages


def _is_page_type(content_type: str) -> bool:
    return content_type in HTML_TYPES or content_type in TEXT_TYPES


class _Crawler:
    def __init__(
        self,
        config: CrawlConfig,
        previous: Mapping[str, Mapping[str, Any]] | None,
        on_page: Callable[[str], None] | None,
        resolver: Resolver | None,
    ) -> None:
        self.config = config
        self.previous: dict[str, Mapping[str, Any]] = {}
        for url, entry in (previous or {}).items():
            key = normalize_url(url)
            if key is not None and isinstance(entry, Mapping):
                self.previous[key] = entry
        self.on_page = on_page
        # system_resolver is looked up here, at crawl time, so that tests can replace this module's.
        self.guard = AddressGuard(config.allow_hosts, resolver or system_resolver)
        self.result = CrawlResult()
        self.hosts: set[str] = set()
        self.seen: set[str] = set()
        self.done: set[str] = set()
        self.started = 0
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.semaphore = asyncio.Semaphore(config.concurrency)
        self.host_locks: dict[str, asyncio.Lock] = {}
        self.host_next: dict[str, float] = {}
        self.host_delay: dict[str, float] = {}
        self.robots: dict[str, RobotFileParser] = {}
        self.robots_locks: dict[str, asyncio.Lock] = {}
        self.client = GuardedClient(
            self.guard,
            max_connections=config.concurrency * 2,
            headers={
                "User-Agent": config.user_agent,
                "Accept": "text/html,application/xhtml+xml,text/markdown;q=0.9,text/plain;q=0.8,*/*;q=0.1",
            },
        )

    # ---- scope

    def in_scope(self, url: str, *, check_host: bool = True) -> bool:
        host, _ = _host_port(url)
        if check_host and self.config.same_host and host not in self.hosts:
            return False
        if self.config._include_re and not any(p.search(url) for p in self.config._include_re):
            return False
        if any(p.search(url) for p in self.config._exclude_re):
            return False
        return not httpx.URL(url).path.lower().endswith(_SKIP_EXTENSIONS)

    def enqueue(self, url: str, depth: int, *, seed: bool = False) -> None:
        if url in self.seen or depth > self.config.max_depth or self.started >= self.config.max_pages:
            return
        if not seed and not self.in_scope(url):
            return
        self.seen.add(url)
        self.queue.put_nowait(_Item(url, depth))

    def problem(self, url: str, kind: str, reason: str) -> None:
        logger.info("crawl: %s %s: %s", kind, url, reason)
        self.result.problems.append(SourceProblem(source=url, reason=reason, kind=kind))

    # ---- run

    async def run(self) -> CrawlResult:
        seeds: list[str] = []
        for raw in self.config.urls:
            url = normalize_url(raw)
            if url is None:
                self.problem(raw, "refused", url_refusal(raw) or "not an http(s) URL")
                continue
            seeds.append(url)
            self.hosts.add(_host_port(url)[0])
        async with self.client:
            for url in seeds:
                self.enqueue(url, 0, seed=True)
            workers = [asyncio.create_task(self.worker()) for _ in range(self.config.concurrency)]
            sitemap = asyncio.create_task(self.sitemap_urls(seeds)) if self.config.sitemap else None
            try:
                await self.queue.join()
                if sitemap is not None:
                    # Pages only the sitemap knows, after the link crawl (so depths stay those of the
                    # links), at the depth limit: fetched, their links not followed.
                    for url in await sitemap:
                        self.enqueue(url, self.config.max_depth)
                    await self.queue.join()
            finally:
                for task in [*workers, *([sitemap] if sitemap else [])]:
                    task.cancel()
                await asyncio.gather(*workers, *([sitemap] if sitemap else []), return_exceptions=True)
        return self.result

    async def worker(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                if self.started < self.config.max_pages:
                    await self.process(item)
            except Exception as exc:  # a bug on one page must not hang the crawl
                logger.exception("crawl: unexpected failure on %s", item.url)
                self.problem(item.url, "error", f"unexpected error: {exc!r}")
            finally:
                self.queue.task_done()

    async def process(self, item: _Item) -> None:
        try:
            hop = await self.follow(item)
            if hop is None:
                return
            if hop.status == 304:
                self.unchanged(item, hop)
            else:
                await self.document(item, hop)
        except _Problem as exc:
            self.problem(item.url, exc.kind, exc.reason)
        finally:
            if item.fetched and self.on_page is not None:
                self.on_page(item.url)

    # ---- fetching

    async def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        accept: Callable[[str], bool] | None = None,
        truncate: bool = False,
        check_hop: HopCheck | None = None,
    ) -> Fetched:
        """One guarded fetch (redirects, checks, cap, deadline, retries: see the module doc); its
        failures as _Problem."""
        try:
            return await self.client.fetch(
                url,
                max_bytes=max_bytes,
                timeout=self.config.timeout,
                max_redirects=self.config.max_redirects,
                accept=accept,
                truncate=truncate,
                check_hop=check_hop,
                pace=self.pace,
                retries=max(0, self.config.retries),
                retry_pause=RETRY_PAUSE,
            )
        except RefusedURL as exc:
            where = exc.url or url
            redirected = "redirect refused: " if where != url else ""
            raise _Problem("refused", f"{redirected}{where}: {exc.reason}") from exc
        except BodyTooLarge as exc:
            raise _Problem("too_large", f"{exc.url or url}: {exc.reason}") from exc
        except FetchTimeout as exc:
            raise _Problem("error", f"{exc.url or url}: timed out after {self.config.timeout:g} s") from exc
        except ResolveError as exc:
            raise _Problem("error", exc.reason) from exc
        except FetchError as exc:
            raise _Problem("error", f"{exc.url or url}: {exc.reason}") from exc

    @contextlib.asynccontextmanager
    async def pace(self, url: str) -> AsyncIterator[None]:
        """Around every request: a slot of ``concurrency``, then the host's turn (so the spacing
        is the real one)."""
        async with self.semaphore:
            await self.wait_turn(_host_port(url)[0])
            yield

    async def follow(self, item: _Item) -> Fetched | None:
        """Request a page following redirects; besides the guard's checks every hop is checked for
        scope and robots.txt before it is requested, and asked conditionally when the last run saw
        it. Returns None when the page is left to another queue entry or the page budget is spent;
        raises _Problem.
        """
        sent: dict[str, str] = {}

        async def check_hop(raw: str, hop: int) -> dict[str, str]:
            nonlocal sent
            url = normalize_url(raw)
            if url is None:
                raise _Problem("refused", f"redirect refused: {raw}: not an http(s) URL")
            if hop:
                if url in self.done or url in self.seen:
                    raise _Skip  # another queue entry fetches it
                if not self.in_scope(url):
                    if item.depth == 0 and self.in_scope(url, check_host=False):
                        self.hosts.add(_host_port(url)[0])  # a start URL moving to www. and the like
                    else:
                        raise _Problem("refused", f"redirect to {url}, outside the crawl scope")
                self.seen.add(url)
            robots = await self.robots_for(url)
            if not robots.can_fetch(self.config.user_agent, url):
                raise _Problem("refused", f"{url}: disallowed by robots.txt")
            if not item.fetched:
                if self.started >= self.config.max_pages:
                    raise _Skip
                self.started += 1
                item.fetched = True
            sent = self.conditional_headers(url, item.depth)
            return sent

        try:
            page = await self.fetch(
                item.url, max_bytes=self.config.max_bytes, accept=_is_page_type, check_hop=check_hop
            )
        except _Skip:
            return None
        if page.status == 304 and not sent:
            raise _Problem("error", f"{page.url}: 304 Not Modified to an unconditional request")
        return dataclasses.replace(page, url=normalize_url(page.url) or page.url)

    def conditional_headers(self, url: str, depth: int) -> dict[str, str]:
        entry = self.previous.get(url)
        if not entry:
            return {}
        needs_links = depth < self.config.max_depth and mime_of(entry.get("content_type")) not in TEXT_TYPES
        if needs_links and "links" not in entry:
            return {}
        headers = {}
        if entry.get("etag"):
            headers["If-None-Match"] = str(entry["etag"])
        if entry.get("last_modified"):
            headers["If-Modified-Since"] = str(entry["last_modified"])
        return headers

    async def wait_turn(self, host: str) -> None:
        lock = self.host_locks.setdefault(host, asyncio.Lock())
        loop = asyncio.get_running_loop()
        async with lock:
            wait = self.host_next.get(host, 0.0) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.host_next[host] = loop.time() + self.host_delay.get(host, self.config.delay)

    # ---- robots.txt and sitemaps

    async def robots_for(self, url: str) -> RobotFileParser:
        origin = _origin(url)
        lock = self.robots_locks.setdefault(origin, asyncio.Lock())
        async with lock:
            if origin not in self.robots:
                self.robots[origin] = await self.fetch_robots(origin)
            return self.robots[origin]

    async def fetch_robots(self, origin: str) -> RobotFileParser:
        parser = RobotFileParser(origin + "/robots.txt")
        try:
            hop = await self.follow_plain(origin + "/robots.txt", max_bytes=ROBOTS_MAX_BYTES, truncate=True)
        except _Problem as exc:
            logger.info("crawl: robots.txt of %s unavailable (%s): allowing all", origin, exc.reason)
            hop = None
        if hop is not None and hop.status in (401, 403):
            parser.parse(["User-agent: *", "Disallow: /"])  # like Google: auth-walled robots = no access
        elif hop is None or hop.status != 200:
            parser.parse([])  # missing or unreachable: everything allowed
        else:
            parser.parse(decode_text(hop.body, hop.headers.get("content-type")).splitlines())
            delay = parser.crawl_delay(self.config.user_agent)
            if delay:
                host, _ = _host_port(origin)
                wanted = min(float(delay), MAX_CRAWL_DELAY)
                self.host_delay[host] = max(self.host_delay.get(host, self.config.delay), wanted)
        parser.modified()  # can_fetch() answers False until the parser counts as read
        return parser

    async def follow_plain(self, url: str, *, max_bytes: int, truncate: bool = False) -> Fetched:
        """GET with checked redirects, no robots/scope (robots.txt, sitemaps)."""
        return await self.fetch(url, max_bytes=max_bytes, truncate=truncate)

    async def sitemap_urls(self, seeds: list[str]) -> list[str]:
        """Page URLs listed by /sitemap.xml (and robots.txt Sitemap: lines) of the start hosts."""
        pending: list[tuple[str, int]] = []
        for origin in dict.fromkeys(_origin(u) for u in seeds):
            pending.append((origin + "/sitemap.xml", 0))
            robots = await self.robots_for(origin + "/")  # a refused origin's: allows all, lists none
            for extra in robots.site_maps() or []:
                normalised = normalize_url(extra)
                if normalised is not None:
                    pending.append((normalised, 0))
        fetched: set[str] = set()
        found: list[str] = []
        while pending and len(fetched) < MAX_SITEMAP_FILES and len(found) < self.config.max_pages:
            url, level = pending.pop(0)
            if url in fetched or _host_port(url)[0] not in self.hosts:
                continue
            fetched.add(url)
            try:
                hop = await self.follow_plain(url, max_bytes=self.config.max_bytes)
            except _Problem as exc:
                logger.info("crawl: sitemap %s: %s", url, exc.reason)
                continue
            if hop.status != 200:
                continue
            body = hop.body
            if body[:2] == b"\x1f\x8b":
                try:
                    with gzip.GzipFile(fileobj=io.BytesIO(body)) as unzipped:
                        body = unzipped.read(self.config.max_bytes + 1)
                except (OSError, EOFError):
                    continue
                if len(body) > self.config.max_bytes:
                    continue
            is_index, locs = parse_sitemap(decode_text(body, hop.headers.get("content-type")))
            for loc in locs:
                normalised = normalize_url(loc)
                if normalised is None:
                    continue
                if is_index:
                    if level + 1 < MAX_SITEMAP_NESTING:
                        pending.append((normalised, level + 1))
                elif normalised not in found:
                    found.append(normalised)
        return found[: self.config.max_pages]

    # ---- results

    def validators(self, hop: Fetched) -> dict[str, Any]:
        return {"etag": hop.headers.get("etag"), "last_modified": hop.headers.get("last-modified")}

    def unchanged(self, item: _Item, hop: Fetched) -> None:
        if hop.url in self.done:
            return
        self.done.add(hop.url)
        self.result.unchanged.append(hop.url)
        entry = dict(self.previous.get(hop.url, {}))
        entry.update({k: v for k, v in self.validators(hop).items() if v})
        self.result.validators[hop.url] = entry
        if item.depth < self.config.max_depth:
            for raw in entry.get("links") or []:
                link = normalize_url(raw) if isinstance(raw, str) else None
                if link is not None:
                    self.enqueue(link, item.depth + 1)

    async def document(self, item: _Item, hop: Fetched) -> None:
        if hop.status != 200:
            raise _Problem("error", f"{hop.url}: HTTP {hop.status}")
        if not _is_page_type(hop.content_type):
            raise _Problem("unsupported", f"{hop.url}: content type {hop.content_type or 'unknown'!r}")
        if hop.url in self.done:
            return
        self.done.add(hop.url)
        robots_header = hop.headers.get("x-robots-tag", "").lower()
        links: list[str] = []
        if hop.content_type in HTML_TYPES:
            markup = decode_text(hop.body, hop.headers.get("content-type"))
            page = await asyncio.to_thread(html_document, markup, hop.url)
            title, text = page.title or hop.url, page.text
            meta = ",".join(page.meta.get(name, "") for name in ("robots", "omnirag-indexer"))
            directives = {t.strip().lower() for t in f"{meta},{robots_header}".split(",")}
            if "nofollow" not in directives and "none" not in directives:
                base = normalize_url(page.base, base=hop.url) if page.base else None
                for href in page.links:
                    link = normalize_url(href, base=base or hop.url)
                    if link is not None and link not in links:
                        links.append(link)
            if "noindex" in directives or "none" in directives:
                return
        else:
            title, text = _page_text(hop.body, hop.headers.get("content-type"), hop.url)
        validators = self.validators(hop)
        if any(validators.values()):
            validators["content_type"] = hop.content_type
            if hop.content_type in HTML_TYPES:
                validators["links"] = links
            self.result.validators[hop.url] = validators
        if item.depth < self.config.max_depth:
            for link in links:
                self.enqueue(link, item.depth + 1)
        if not text:
            raise _Problem("unsupported", f"{hop.url}: no text")
        self.result.documents.append(
            SourceDocument(
                source=hop.url,
                title=title,
                text=text,
                metadata={"url": hop.url, "content_type": hop.content_type, "depth": item.depth},
            )
        )


async def crawl(
    config: CrawlConfig,
    *,
    previous: Mapping[str, Mapping[str, Any]] | None = None,
    on_page: Callable[[str], None] | None = None,
    resolver: Resolver | None = None,
) -> CrawlResult:
    """Crawl a web source. Problems are reported in the result, never raised.

    ``previous``: URL → validators from the last run's :attr:`CrawlResult.validators` (persist the
    whole entries: they also carry the links of HTML pages). ``on_page`` is called with each page
    URL once its fetch is done. ``resolver`` replaces the system DNS lookup (tests, custom DNS).
    """
    return await _Crawler(config, previous, on_page, resolver).run()
