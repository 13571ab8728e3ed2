"""The web crawler against real HTTP servers on 127.0.0.1 — and nothing else.

Every test runs under ``_only_local_connections``: the socket-level connect of the crawler's network
backend is wrapped so that any attempt to reach an address other than 127.0.0.1 fails the test, and
the system resolver is replaced so that no DNS query leaves the machine either.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpcore
import pytest
from omnirag_harness.http_server import Site, send, serve_site
from omnirag_harness.servers import loopback_only

from omnirag.indexer.loaders import load_file
from omnirag.indexer.sources import WebSource
from omnirag.indexer.sources import web as web_mod
from omnirag.indexer.sources.web import CrawlConfig, crawl, normalize_url, parse_sitemap

# ------------------------------------------------------------------------------------ test plumbing


@pytest.fixture
def site() -> Iterator[Site]:
    """A tiny web site on loopback (its pages HTML unless said otherwise); records every request."""
    with serve_site(Site(page_type="text/html; charset=utf-8")) as state:
        yield state


@pytest.fixture(autouse=True)
def connections(monkeypatch) -> Iterator[list[tuple[str, int]]]:
    """Every socket the crawler opens; anything but 127.0.0.1 fails the test before connecting."""
    made = loopback_only(monkeypatch, web_mod)
    yield made
    assert all(host == "127.0.0.1" for host, _ in made), made


def from_spec(entry: dict[str, Any], **settings: Any) -> CrawlConfig:
    """The crawl of a spec's ``sources`` entry (camelCase keys), as a knowledge-base run builds it."""
    return CrawlConfig.from_source(WebSource.model_validate(entry), **settings)


def config(
    site: Site, *paths: str, delay: float = 0.0, timeout: float = 5.0, concurrency: int = 4, **spec
) -> CrawlConfig:
    """A spec crawling the test site (127.0.0.1 explicitly allowed); settings fast for tests."""
    max_bytes = spec.pop("max_bytes", 5 * 1024 * 1024)
    spec = {"urls": [site.url(p) for p in paths or ("/",)], "allowHosts": ["127.0.0.1"], **spec}
    return from_spec(spec, delay=delay, timeout=timeout, concurrency=concurrency, max_bytes=max_bytes)


def html_page(title: str, *links: str, body: str = "") -> str:
    anchors = "".join(f'<li><a href="{href}">link {i}</a></li>' for i, href in enumerate(links))
    return (
        f"<html><head><title>{title}</title></head><body><nav><ul>{anchors}</ul></nav>"
        f"<main><h1>{title}</h1><p>{body or 'The page called ' + title + ' has this sentence in it.'}</p>"
        "</main></body></html>"
    )


ARTICLE = """<!doctype html><html><head><title>Pinning sockets | Example docs</title></head><body>
<header><div class="logo">ExampleCorp</div></header>
<nav class="menu"><ul><li><a href="/">Home</a></li><li><a href="/pricing">Pricing NAVIGATION-ONLY</a></li>
<li><a href="/careers">Careers NAVIGATION-ONLY</a></li></ul></nav>
<main><article><h1>Pinning sockets</h1>
<p>A crawler that checks an address and then connects by name can be tricked by a resolver that answers
differently the second time. The fix is to connect to the very address that was checked.</p>
<p>Pinning keeps the host name for the Host header and for TLS, while the socket goes to the checked IP.
This paragraph is long enough for the extractor to treat the article as the main content of the page.</p>
<p>Redirects are followed one hop at a time, and every hop is checked again before it is requested.</p>
</article></main>
<footer>Copyright ExampleCorp FOOTER-ONLY. All rights reserved. Imprint. Privacy.</footer>
</body></html>"""


def by_source(result) -> dict[str, object]:
    return {d.source: d for d in result.documents}


def problems(result) -> dict[str, tuple[str, str]]:
    return {p.source: (p.kind, p.reason) for p in result.problems}


# ------------------------------------------------------------------------------------- pure parts
# (the address and URL checks themselves are netguard's, tested in libs/core)


def test_normalize_url():
    assert normalize_url("HTTP://Example.COM:80/a#frag") == "http://example.com/a"
    assert normalize_url("https://example.com:443") == "https://example.com/"
    assert normalize_url("https://example.com:8443/x?q=1#z") == "https://example.com:8443/x?q=1"
    assert normalize_url("../b/./c", base="http://h.org/a/x/y") == "http://h.org/a/b/c"
    assert normalize_url("//other.org/p", base="https://h.org/") == "https://other.org/p"
    assert normalize_url("https://bücher.de/") == "https://xn--bcher-kva.de/"
    assert normalize_url("http://[::1]:8080/") == "http://[::1]:8080/"
    for bad in ("mailto:a@b.c", "javascript:alert(1)", "tel:123", "data:text/html,hi", "ftp://h/"):
        assert normalize_url(bad, base="http://h.org/") is None
    assert normalize_url("http://") is None and normalize_url("not a url") is None


def test_config_from_source():
    cfg = from_spec({"type": "web", "urls": ["https://docs.example.com/"]})
    assert (cfg.max_depth, cfg.max_pages, cfg.sitemap, cfg.same_host) == (2, 500, False, True)
    assert (cfg.delay, cfg.concurrency, cfg.timeout, cfg.max_bytes) == (0.5, 4, 15.0, 5 * 1024 * 1024)
    assert cfg.user_agent == "omnirag-indexer/0.1 (+https://github.com/omnirag)"
    assert cfg.allow_hosts == [] and cfg.include == [] and cfg.exclude == []
    cfg = from_spec(
        {
            "urls": ["https://docs.example.com/"],
            "maxDepth": 1,
            "maxPages": 10,
            "sitemap": True,
            "include": ["^https://docs\\.example\\.com/"],
            "exclude": ["/changelog/"],
            "allowHosts": ["wiki.internal"],
            "sameHost": False,
        },
        delay=1.5,
        concurrency=2,
    )
    assert (cfg.max_depth, cfg.max_pages, cfg.sitemap, cfg.same_host, cfg.delay, cfg.concurrency) == (
        1,
        10,
        True,
        False,
        1.5,
        2,
    )
    for bad in ({}, {"urls": []}, {"urls": ["x"], "include": ["("]}, {"urls": ["x"], "maxDepth": "2"}):
        with pytest.raises(ValueError):
            from_spec(bad)


def test_parse_sitemap_index_and_urlset():
    index = (
        '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        "<sitemap><loc>https://h.org/s1.xml</loc></sitemap></sitemapindex>"
    )
    assert parse_sitemap(index) == (True, ["https://h.org/s1.xml"])
    urlset = (
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        "<url><loc> https://h.org/a?x=1&amp;y=2 </loc></url><url><loc>https://h.org/b</loc></url></urlset>"
    )
    assert parse_sitemap(urlset) == (False, ["https://h.org/a?x=1&y=2", "https://h.org/b"])


# ------------------------------------------------------------------------------------ real crawling


def build_docs_site(site: Site) -> None:
    site.page("/robots.txt", "User-agent: *\nDisallow: /private/\n", "text/plain")
    site.page(
        "/sitemap.xml",
        f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><sitemap>'
        f"<loc>{site.url('/sitemap-pages.xml')}</loc></sitemap></sitemapindex>",
        "application/xml",
    )
    site.page(
        "/sitemap-pages.xml",
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<url><loc>{site.url('/orphan')}</loc></url><url><loc>{site.url('/level1')}</loc></url></urlset>",
        "application/xml",
    )
    site.page(
        "/",
        html_page(
            "Home",
            "/level1",
            "level1#section",
            f"HTTP://127.0.0.1:{site.port}/article",
            "/private/secret",
            "/excluded/page",
            "/big",
            "/big-stream",
            "/to-metadata",
            "/to-private",
            "/moved",
            "/notes.txt",
            "/readme.md",
            "/logo.png",
            "/file.pdf",
            "mailto:someone@example.com",
            "javascript:void(0)",
            "http://example.com/elsewhere",
            "#top",
        ),
    )
    site.page("/level1", html_page("Level one", "/level1/level2"))
    site.page("/level1/level2", html_page("Level two", "/level1/level2/level3"))
    site.page("/level1/level2/level3", html_page("Level three", "/level1/level2/level3/level4"))
    site.page("/level1/level2/level3/level4", html_page("Level four"))
    site.page("/article", ARTICLE)
    site.page("/orphan", html_page("Orphan", body="Only the sitemap knows about this orphan page."))
    site.page("/private/secret", html_page("Secret"))
    site.page("/excluded/page", html_page("Excluded"))
    site.page("/big", "x" * 100_000, "text/plain")

    # No Content-Length: the cap must hold while reading.
    site.stream("/big-stream", b"<p>" + b"y" * 400_000 + b"</p>", "text/html", chunk=10_000)
    site.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/iam/")
    site.redirect("/to-private", "http://10.0.0.1/admin")
    site.redirect("/moved", "/landing", status=301)
    site.page("/landing", html_page("Landing", body="You landed here after a permanent redirect."))
    site.page("/notes.txt", "plain notes\n  kept   as is\n", "text/plain; charset=utf-8")
    site.page("/readme.md", "# Read me\n\nSome *markdown* text.\n", "text/markdown")
    site.page("/logo.png", b"\x89PNG", "image/png")
    site.page("/file.pdf", b"%PDF-1.4", "application/pdf")


async def test_crawl_a_site(site, connections):
    build_docs_site(site)
    seen_pages: list[str] = []
    cfg = config(site, maxDepth=3, sitemap=True, exclude=["/excluded/"], max_bytes=50_000)
    result = await crawl(cfg, on_page=seen_pages.append)

    docs = by_source(result)
    expected = ["/", "/level1", "/level1/level2", "/level1/level2/level3", "/article", "/orphan"]
    expected += ["/landing", "/notes.txt", "/readme.md"]
    assert sorted(docs) == sorted(site.url(p) for p in expected)

    assert docs[site.url("/")].metadata == {"url": site.url("/"), "content_type": "text/html", "depth": 0}
    assert docs[site.url("/level1/level2/level3")].metadata["depth"] == 3
    assert docs[site.url("/orphan")].text.endswith("Only the sitemap knows about this orphan page.")
    assert docs[site.url("/orphan")].metadata["depth"] == 3  # sitemap-only: at the depth limit
    assert docs[site.url("/level1")].metadata["depth"] == 1  # depth is the link depth
    # a redirect: the document is the final URL
    assert docs[site.url("/landing")].title == "Landing"
    # text/plain and markdown are kept as they are
    assert docs[site.url("/notes.txt")].text == "plain notes\n  kept   as is"
    assert docs[site.url("/readme.md")].title == "Read me"
    assert docs[site.url("/readme.md")].metadata["content_type"] == "text/markdown"
    # main text, not the boilerplate around it
    article = docs[site.url("/article")]
    assert "connect to the very address that was checked" in article.text
    assert "every hop is checked again" in article.text
    assert "NAVIGATION-ONLY" not in article.text and "FOOTER-ONLY" not in article.text
    assert article.title.startswith("Pinning sockets")

    found = problems(result)
    assert found[site.url("/private/secret")][0] == "refused"
    assert "robots.txt" in found[site.url("/private/secret")][1]
    assert found[site.url("/big")][0] == "too_large"
    assert found[site.url("/big-stream")][0] == "too_large"
    assert found[site.url("/to-metadata")][0] == "refused"
    assert "169.254.169.254" in found[site.url("/to-metadata")][1]
    assert "metadata" in found[site.url("/to-metadata")][1]
    assert found[site.url("/to-private")][0] == "refused"
    assert found[site.url("/file.pdf")][0] == "unsupported"
    assert found[site.url("/careers")] == ("error", f"{site.url('/careers')}: HTTP 404")  # article's nav
    assert found[site.url("/pricing")][0] == "error"
    assert len(found) == len(result.problems) == 8

    requested = site.paths()
    for never in ("/private/secret", "/excluded/page", "/logo.png", "/level1/level2/level3/level4"):
        assert never not in requested
    assert requested.count("/robots.txt") == 1
    assert requested.count("/level1") == 1  # linked twice and listed in the sitemap: fetched once
    assert {"/sitemap.xml", "/sitemap-pages.xml"} <= set(requested)
    # every socket went to the test server; the refused redirect targets were never connected to
    assert connections and {c for c in connections} == {("127.0.0.1", site.port)}
    assert all(s.headers["User-Agent"] == cfg.user_agent for s in site.requests)
    # on_page: once per page fetched (under the URL that was queued), not for robots-refused ones
    fetched = set(expected) - {"/landing"} | {"/moved", "/big", "/big-stream", "/to-metadata", "/to-private"}
    fetched |= {"/file.pdf", "/careers", "/pricing"}
    assert sorted(seen_pages) == sorted(site.url(p) for p in fetched)


async def test_default_policy_refuses_loopback_and_connects_nowhere(site, connections):
    build_docs_site(site)
    cfg = from_spec({"urls": [site.url("/")], "sitemap": True}, delay=0.0)
    result = await crawl(cfg)
    assert result.documents == [] and result.unchanged == []
    assert [(p.source, p.kind) for p in result.problems] == [(site.url("/"), "refused")]
    assert "loopback" in result.problems[0].reason
    assert connections == [] and site.paths() == []


async def test_refused_start_urls_are_reported(site, connections):
    cfg = from_spec(
        {"urls": ["file:///etc/passwd", "http://user:pw@127.0.0.1/", "http://169.254.169.254/"]}, delay=0.0
    )
    result = await crawl(cfg)
    assert [p.kind for p in result.problems] == ["refused"] * 3
    assert connections == []


async def test_conditional_requests_on_the_second_crawl(site):
    def conditional(path: str, etag: str | None = None, modified: str | None = None, body: str = "") -> None:
        def route(h: BaseHTTPRequestHandler) -> None:
            if etag and h.headers.get("If-None-Match") == etag:
                send(h, 304, b"", "text/html", {"ETag": etag})
            elif modified and h.headers.get("If-Modified-Since") == modified:
                send(h, 304, b"", "text/html", {})
            else:
                headers = {"ETag": etag} if etag else {"Last-Modified": modified} if modified else {}
                send(h, 200, body, "text/html; charset=utf-8", headers)

        site.routes[path] = route

    conditional("/", etag='"root-1"', body=html_page("Root", "/a", "/b"))
    conditional("/a", etag='W/"a-1"', body=html_page("A", "/c"))
    conditional("/b", modified="Wed, 21 Oct 2015 07:28:00 GMT", body=html_page("B"))
    conditional("/c", body=html_page("C"))

    first = await crawl(config(site, maxDepth=3))
    assert sorted(by_source(first)) == sorted(site.url(p) for p in ("/", "/a", "/b", "/c"))
    assert first.unchanged == []
    assert first.validators[site.url("/")]["etag"] == '"root-1"'
    assert first.validators[site.url("/b")]["last_modified"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert site.url("/c") not in first.validators

    site.requests.clear()
    second = await crawl(config(site, maxDepth=3), previous=first.validators)
    assert sorted(second.unchanged) == sorted(site.url(p) for p in ("/", "/a", "/b"))
    # /c is reached through the stored links of the unchanged /a
    assert sorted(by_source(second)) == [site.url("/c")]
    assert second.problems == []
    assert set(second.validators) == {site.url(p) for p in ("/", "/a", "/b")}
    headers = {s.path: s.headers for s in site.requests}
    assert headers["/"]["If-None-Match"] == '"root-1"'
    assert headers["/a"]["If-None-Match"] == 'W/"a-1"'
    assert headers["/b"]["If-Modified-Since"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert "If-None-Match" not in headers["/c"]

    # validators without links (e.g. kept by an older pipeline) are not used where links are needed
    bare = {url: {"etag": v["etag"]} for url, v in first.validators.items() if v.get("etag")}
    site.requests.clear()
    third = await crawl(config(site, maxDepth=3), previous=bare)
    assert third.unchanged == [] and len(third.documents) == 4


async def test_depth_and_page_limits(site):
    site.page("/", html_page("Root", "/1"))
    for n in range(1, 6):
        site.page(f"/{n}", html_page(f"P{n}", f"/{n + 1}"))
    result = await crawl(config(site, maxDepth=2))
    assert sorted(by_source(result)) == sorted(site.url(p) for p in ("/", "/1", "/2"))
    assert "/3" not in site.paths()

    site.requests.clear()
    site.page("/", html_page("Root", *[f"/{n}" for n in range(1, 6)]))
    result = await crawl(config(site, maxDepth=5, maxPages=3))
    assert len(result.documents) == 3
    assert len([p for p in site.paths() if p != "/robots.txt"]) == 3


async def test_include_patterns_and_same_host(site):
    site.page("/", html_page("Root", "/docs/a", "/blog/b", "http://127.0.0.2:1/outside"))
    site.page("/docs/a", html_page("A"))
    site.page("/blog/b", html_page("B"))
    result = await crawl(config(site, include=[r"/docs/"]))
    # start URLs are always fetched; links must match include
    assert sorted(by_source(result)) == sorted(site.url(p) for p in ("/", "/docs/a"))
    assert "/blog/b" not in site.paths()


async def test_pinned_connection_keeps_the_host_name(site, connections):
    """A name that resolves to 127.0.0.1: the socket goes to the checked IP, Host stays the name."""
    site.page("/", html_page("Root", "/next"))
    site.page("/next", html_page("Next"))
    answers = iter([["127.0.0.1"]] + [["10.0.0.1"]] * 10)  # the second answer would be a rebinding
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    cfg = from_spec({"urls": [f"http://docs.test:{site.port}/"], "allowHosts": ["docs.test"]}, delay=0.0)
    result = await crawl(cfg, resolver=resolver)
    assert sorted(by_source(result)) == [
        f"http://docs.test:{site.port}/",
        f"http://docs.test:{site.port}/next",
    ]
    assert lookups == ["docs.test"]
    assert {s.headers["Host"] for s in site.requests} == {f"docs.test:{site.port}"}
    assert {host for host, _ in connections} == {"127.0.0.1"}


async def test_name_resolving_to_a_private_address_is_refused(site, connections):
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "192.168.1.20"] if host == "mixed.test" else ["127.0.0.1"]

    site.redirect("/hop", "http://mixed.test/x")
    cfg = from_spec(
        {"urls": ["http://mixed.test/", site.url("/hop")], "allowHosts": ["127.0.0.1"]}, delay=0.0
    )
    result = await crawl(cfg, resolver=resolver)
    found = problems(result)
    assert found["http://mixed.test/"][0] == "refused" and "192.168.1.20" in found["http://mixed.test/"][1]
    assert found[site.url("/hop")][0] == "refused"
    assert {host for host, _ in connections} == {"127.0.0.1"}


async def test_redirect_limit(site):
    for n in range(8):
        site.redirect(f"/r{n}", f"/r{n + 1}")
    site.page("/r8", html_page("End"))
    result = await crawl(config(site, "/r0"))
    assert result.documents == []
    assert result.problems[0].kind == "error" and "redirects" in result.problems[0].reason
    assert "/r6" not in site.paths()


async def test_robots_forbidden_and_unreachable(site):
    site.routes["/robots.txt"] = lambda h: send(h, 403, "no", "text/plain")
    site.page("/", html_page("Root"))
    result = await crawl(config(site))
    assert result.documents == [] and result.problems[0].kind == "refused"
    assert site.paths() == ["/robots.txt"]

    site.requests.clear()
    site.routes["/robots.txt"] = lambda h: send(h, 503, "down", "text/plain")
    result = await crawl(config(site))
    assert [d.source for d in result.documents] == [site.url("/")]


async def test_meta_robots_noindex_nofollow(site):
    site.page(
        "/",
        '<html><head><meta name="robots" content="nofollow"></head><body><p>Root text</p>'
        '<a href="/hidden">x</a></body></html>',
    )
    site.page("/n", '<html><head><meta name="robots" content="noindex"></head><body><p>t</p></body></html>')
    site.page("/hidden", html_page("Hidden"))
    result = await crawl(config(site, "/", "/n"))
    assert [d.source for d in result.documents] == [site.url("/")]
    assert "/hidden" not in site.paths()


async def test_retry_once_on_server_errors(site):
    calls = {"n": 0}

    def flaky(h: BaseHTTPRequestHandler) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            send(h, 503, "busy", "text/plain")
        else:
            send(h, 200, html_page("Flaky"), "text/html")

    site.routes["/flaky"] = flaky
    site.routes["/down"] = lambda h: send(h, 500, "broken", "text/plain")
    result = await crawl(config(site, "/flaky", "/down"))
    assert [d.source for d in result.documents] == [site.url("/flaky")]
    assert problems(result)[site.url("/down")][0] == "error"
    assert "500" in problems(result)[site.url("/down")][1]
    assert site.paths().count("/down") == 2 and site.paths().count("/flaky") == 2


async def test_timeout_per_page(site):
    def slow(h: BaseHTTPRequestHandler) -> None:
        time.sleep(1.0)
        send(h, 200, html_page("Slow"), "text/html")

    site.routes["/slow"] = slow
    site.page("/", html_page("Root", "/slow"))
    started = time.monotonic()
    result = await crawl(config(site, timeout=0.3))
    assert time.monotonic() - started < 1.0
    assert problems(result)[site.url("/slow")][0] == "error"
    assert "timed out" in problems(result)[site.url("/slow")][1]
    assert [d.source for d in result.documents] == [site.url("/")]


async def test_bounded_concurrency(site):
    def slow(h: BaseHTTPRequestHandler) -> None:
        time.sleep(0.2)
        send(h, 200, html_page(h.path), "text/html")

    paths = [f"/p{n}" for n in range(6)]
    site.page("/", html_page("Root", *paths))
    for p in paths:
        site.routes[p] = slow
    result = await crawl(config(site, concurrency=2))
    assert len(result.documents) == 7
    assert site.max_inflight == 2


async def test_per_host_delay_and_crawl_delay(site):
    site.page("/", html_page("Root", "/a", "/b"))
    site.page("/a", html_page("A"))
    site.page("/b", html_page("B"))
    await crawl(config(site, delay=0.25))
    times = [s.at for s in site.requests]
    assert len(times) == 4
    # Arrival times are taken at the server, after its accept and parse: on a loaded machine they
    # jitter by some tens of ms around the client's spacing, hence the margin.
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.2

    # Crawl-delay (1 s) wins over the configured delay (0 s)
    site.requests.clear()
    site.page("/robots.txt", "User-agent: *\nCrawl-delay: 1\n", "text/plain")
    site.page("/", html_page("Root", "/a"))
    await crawl(config(site, delay=0.0))
    page_times = [s.at for s in site.requests if s.path != "/robots.txt"]
    assert len(page_times) == 2 and page_times[1] - page_times[0] >= 0.85


async def test_a_sources_concurrency_bounds_the_requests_in_flight(site):
    """``concurrency`` in the source itself (not a crawler setting) is what the server sees: at most
    that many requests at once, and that many really do overlap."""

    def slow(h: BaseHTTPRequestHandler) -> None:
        time.sleep(0.2)  # holds the request open so that overlapping ones are counted
        send(h, 200, html_page(h.path), "text/html")

    paths = [f"/p{n}" for n in range(6)]
    site.page("/", html_page("Root", *paths))
    for p in paths:
        site.routes[p] = slow
    spec = {"urls": [site.url("/")], "allowHosts": ["127.0.0.1"], "delaySeconds": 0, "concurrency": 3}
    result = await crawl(from_spec(spec))
    assert len(result.documents) == 7
    assert site.max_inflight == 3


async def test_a_sources_delay_spaces_the_requests_to_its_host(site):
    """``delaySeconds`` in the source: arrivals at the server are that far apart (1 s, twice the
    crawler's default of 0.5 s, so a crawler that ignored it would space them half as much; the
    margin is for the server-side jitter of arrival times on a loaded machine)."""
    site.page("/", html_page("Root", "/a"))
    site.page("/a", html_page("A"))
    spec = {"urls": [site.url("/")], "allowHosts": ["127.0.0.1"], "delaySeconds": 1, "concurrency": 4}
    result = await crawl(from_spec(spec))
    assert len(result.documents) == 2
    times = [s.at for s in site.requests]
    assert [s.path for s in site.requests] == ["/robots.txt", "/", "/a"]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.85


def test_a_sources_delay_and_concurrency_win_over_settings_and_are_checked():
    spec = {"urls": ["https://docs.example.com/"], "delaySeconds": 2, "concurrency": 8}
    cfg = from_spec(spec, delay=0.1, concurrency=1, timeout=3.0)
    assert (cfg.delay, cfg.concurrency, cfg.timeout) == (2.0, 8, 3.0)
    cfg = from_spec({"urls": ["https://docs.example.com/"]}, delay=0.1, concurrency=1)
    assert (cfg.delay, cfg.concurrency) == (0.1, 1)
    for bad in (
        {"delaySeconds": -1},
        {"delaySeconds": 61},
        {"delaySeconds": "1"},
        {"delaySeconds": True},
        {"concurrency": 0},
        {"concurrency": 65},
        {"concurrency": 2.5},
        {"concurrency": True},
    ):
        with pytest.raises(ValueError):
            from_spec({"urls": ["https://docs.example.com/"], **bad})


async def test_non_ascii_page_and_charset(site):
    body = (
        "<html><head><meta charset='iso-8859-1'><title>Caf\xe9</title></head><body><p>Cr\xe8me br\xfbl\xe9e."
    )
    body += " A long enough sentence about desserts, so that the page has text to extract.</p></body></html>"
    site.page("/", body.encode("iso-8859-1"), "text/html")
    result = await crawl(config(site))
    doc = result.documents[0]
    assert doc.title == "Café" and "Crème brûlée" in doc.text


ZH_HTML = (
    "<html><head><title>检索增强生成</title></head><body><main><article><h1>检索增强生成</h1>"
    + "<p>"
    + "检索增强生成把检索到的段落交给大模型，索引器会定期抓取并更新向量索引。" * 3
    + "</p>"
    + "<p>GBK 之外的字也要读对：朱镕基、𠀀。</p></article></main></body></html>"
)
ZH_MARKDOWN = "# 检索增强生成\n\n索引器会定期抓取并更新向量索引。\n\nGBK 之外的字也要读对：朱镕基、𠀀。\n"


@pytest.mark.parametrize(
    ("name", "page", "content_type"),
    [
        ("zh.html", ZH_HTML, "text/html"),  # no charset anywhere: was read as UTF-8, into mojibake
        ("zh.html", ZH_HTML, "text/html; charset=gb18030"),
        ("zh.html", ZH_HTML, "text/html; charset=GBK"),  # a GBK label, read as its superset
        ("zh.md", ZH_MARKDOWN, "text/markdown"),
        ("zh.txt", ZH_MARKDOWN, "text/plain"),
    ],
)
async def test_a_gb18030_page_reads_as_the_same_file_from_disk(site, tmp_path, name, page, content_type):
    data = page.encode("gb18030")
    site.page("/" + name, data, content_type)
    result = await crawl(config(site, "/" + name))
    (doc,) = result.documents
    path = tmp_path / name
    path.write_bytes(data)
    local = load_file(path)
    assert doc.text == local.text
    assert "索引器会定期抓取" in doc.text and "朱镕基、𠀀" in doc.text and "\ufffd" not in doc.text
    if not name.endswith(".txt"):  # a text file's title is its name, a page's its URL
        assert doc.title == local.title == "检索增强生成"


def test_tests_cannot_reach_the_network(connections):
    # the fixture itself: a connect to anything but 127.0.0.1 fails before a socket exists
    backend = httpcore.AnyIOBackend()
    with pytest.raises(AssertionError, match=r"10\.0\.0\.1"):
        asyncio.run(backend.connect_tcp("10.0.0.1", 80, timeout=0.01))
    connections.clear()
