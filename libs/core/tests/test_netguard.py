"""The SSRF guard: address classification, pinning, the pinned transport and the guarded fetch
against real servers on 127.0.0.1.

Every test runs under ``_only_loopback``: the socket-level connect of httpcore's backend is wrapped so
that an attempt to reach anything but 127.0.0.1 fails the test before a socket exists, and the system
resolver is replaced so that no DNS query leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
import ssl
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from omnirag_harness.http_server import Site, send, serve_site
from omnirag_harness.servers import loopback_only

from omnirag.core import netguard
from omnirag.core.netguard import (
    AddressGuard,
    BodyTooLarge,
    FetchFailed,
    FetchTimeout,
    GuardedClient,
    PinnedTransport,
    RefusedURL,
    ResolveError,
    TooManyRedirects,
    address_refusal,
    url_refusal,
)
from omnirag.core.netguard import system_resolver as real_system_resolver


@pytest.fixture(autouse=True)
def connections(monkeypatch) -> Iterator[list[tuple[str, int]]]:
    made = loopback_only(monkeypatch, netguard)
    yield made
    assert all(host == "127.0.0.1" for host, _ in made), made


@pytest.fixture
def server() -> Iterator[Site]:
    """A loopback HTTP server that answers every GET with "hello"."""
    with serve_site(Site(fallback=lambda h: send(h, 200, b"hello", "text/plain"))) as site:
        yield site


def hosts(site: Site) -> list[str]:
    """The Host header of every request ``site`` got."""
    return [r.headers.get("Host", "") for r in site.requests]


def client(guard: AddressGuard) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=PinnedTransport(guard), trust_env=False, timeout=5)


# ------------------------------------------------------------------------------- pure classification


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.5.6.7", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.64.0.1", "not globally routable"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("::1", "loopback"),
        ("[::1]", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("2001:db8::1", "private"),  # documentation range
        ("not-an-ip", "not an IP address"),
    ],
)
def test_address_refusal_of_non_public_addresses(address, reason):
    refusal = address_refusal(address)
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2001:4860:4860::8888"]
)
def test_address_refusal_allows_public_addresses(address):
    assert address_refusal(address) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/file", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("data:image/png;base64,AAAA", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("http://user:secret@example.com/", "credentials"),
        ("https://token@example.com/", "credentials"),
        ("http://example.com:99999/", "port"),
        ("http:///nohost", "without host"),
    ],
)
def test_url_refusal(url, reason):
    refusal = url_refusal(url)
    assert refusal is not None and reason in refusal


def test_url_refusal_accepts_plain_http_urls():
    assert url_refusal("https://docs.example.com/a?b=1") is None
    assert url_refusal("HTTP://[2606:4700::1]:8080/") is None
    assert url_refusal("http://[2606:4700::1]:8080/") is None


# ------------------------------------------------------------------------------------------- guard


async def test_guard_refuses_a_host_if_any_address_is_private_and_pins_the_answer():
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return {"mixed.test": ["93.184.216.34", "10.1.2.3"], "public.test": ["93.184.216.34"]}[host]

    guard = AddressGuard([], resolver)
    with pytest.raises(RefusedURL, match=r"mixed\.test resolves to 10\.1\.2\.3, private"):
        await guard.addresses("mixed.test", 80)
    assert await guard.addresses("public.test", 443) == ["93.184.216.34"]
    assert await guard.addresses("PUBLIC.test", 443) == ["93.184.216.34"]
    assert await guard.addresses("PUBLIC.test.", 443) == ["93.184.216.34"]
    with pytest.raises(RefusedURL):
        await guard.addresses("mixed.test", 80)
    assert calls == ["mixed.test", "public.test"]  # one lookup per host per guard


async def test_guard_allow_hosts_and_the_setting_named_in_refusals():
    async def resolver(host: str, port: int) -> list[str]:
        return {"intranet.test": ["10.0.0.7"], "evil.test": ["169.254.169.254"], "gone.test": []}[host]

    guard = AddressGuard(["intranet.test", "evil.test", "192.168.0.9", "[::1]"], resolver)
    assert guard.is_allowed_host("Intranet.Test")
    assert await guard.addresses("intranet.test", 80) == ["10.0.0.7"]
    assert await guard.addresses("192.168.0.9", 80) == ["192.168.0.9"]
    assert await guard.addresses("::1", 80) == ["::1"]
    with pytest.raises(RefusedURL, match="metadata"):  # an allowed name still may not lead to metadata
        await guard.addresses("evil.test", 80)
    with pytest.raises(ResolveError, match="no addresses"):
        await guard.addresses("gone.test", 80)
    assert await AddressGuard(["169.254.169.254"], resolver).addresses("169.254.169.254", 80)

    named = AddressGuard([], resolver, allow_setting="GATEWAY_IMAGE_FETCH_ALLOW_HOSTS")
    with pytest.raises(RefusedURL, match="loopback address; list the host in GATEWAY_IMAGE_FETCH_ALLOW"):
        await named.addresses("127.0.0.1", 80)


async def test_guard_uses_the_system_resolver_by_default(monkeypatch):
    async def fake(host: str, port: int) -> list[str]:
        return ["10.9.9.9"]

    monkeypatch.setattr(netguard, "system_resolver", fake)
    with pytest.raises(RefusedURL, match=r"10\.9\.9\.9"):
        await AddressGuard().addresses("somewhere.test", 80)


async def test_system_resolver_answers_without_dns_for_literals_and_refuses_bad_names():
    # the real resolver (imported before the fixture replaced the module attribute); neither call
    # needs a DNS server: an IP literal, and a label too long to encode
    assert await real_system_resolver("127.0.0.1", 80) == ["127.0.0.1"]
    with pytest.raises(ResolveError, match="cannot resolve"):
        await real_system_resolver("x" * 64 + ".test", 80)


# ------------------------------------------------------------------------------- pinned transport


async def test_pinned_transport_refuses_loopback_without_connecting(server, connections):
    async with client(AddressGuard()) as http:
        with pytest.raises(RefusedURL, match="loopback"):
            await http.get(f"http://127.0.0.1:{server.port}/")
    assert hosts(server) == [] and connections == []


async def test_pinned_transport_connects_to_the_checked_address_and_keeps_the_name(server, connections):
    port = server.port
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])  # a second answer would be a rebinding
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    guard = AddressGuard(["img.test"], resolver)
    for _ in range(2):  # two clients, two pools, two connections: still the one checked answer
        async with client(guard) as http:
            response = await http.get(f"http://img.test:{port}/a.png")
            assert response.text == "hello"
    assert lookups == ["img.test"]
    assert hosts(server) == [f"img.test:{port}"] * 2
    assert connections == [("127.0.0.1", port)] * 2


async def test_pinned_transport_reports_names_that_do_not_resolve():
    async def resolver(host: str, port: int) -> list[str]:
        raise ResolveError(f"cannot resolve {host}: NXDOMAIN")

    async with client(AddressGuard([], resolver)) as http:
        with pytest.raises(ResolveError, match="NXDOMAIN"):
            await http.get("http://gone.test/")


async def test_pinned_transport_refuses_unix_sockets():
    backend = netguard._PinnedBackend(AddressGuard())
    with pytest.raises(RefusedURL, match="unix sockets"):
        await backend.connect_unix_socket("/var/run/docker.sock")


# ----------------------------------------------------------------------------------- guarded fetch


@pytest.fixture
def site() -> Iterator[Site]:
    """A loopback web site of routes (a test adds them); records each request's path and headers."""
    with serve_site() as state:
        yield state


def local(*names: str) -> AddressGuard:
    """A guard that allows 127.0.0.1 and resolves ``names`` to it (and nothing else anywhere)."""

    async def resolver(host: str, port: int) -> list[str]:
        if host in names:
            return ["127.0.0.1"]
        if host == "private.test":
            return ["10.0.0.5"]
        raise ResolveError(f"cannot resolve {host}: NXDOMAIN")

    return AddressGuard(["127.0.0.1", *names], resolver)


async def test_fetch_follows_redirects_and_checks_every_hop(site, connections):
    site.redirect("/a", "/b")
    site.redirect("/b", f"http://img.test:{site.port}/c", status=301)
    site.page("/c", b"the end", "text/plain; charset=utf-8", ETag='"c1"')
    hops: list[tuple[str, int]] = []

    async def check_hop(url: str, hop: int) -> dict[str, str]:
        hops.append((url, hop))
        return {"X-Hop": str(hop)}

    async with GuardedClient(local("img.test"), headers={"User-Agent": "test/1"}) as client:
        fetched = await client.fetch(site.url("/a"), max_bytes=100, timeout=5, check_hop=check_hop)
    assert (fetched.url, fetched.status, fetched.body) == (f"http://img.test:{site.port}/c", 200, b"the end")
    assert fetched.content_type == "text/plain" and fetched.headers["etag"] == '"c1"'
    assert hops == [(site.url("/a"), 0), (site.url("/b"), 1), (f"http://img.test:{site.port}/c", 2)]
    assert site.paths() == ["/a", "/b", "/c"]
    assert [r.headers["X-Hop"] for r in site.requests] == ["0", "1", "2"]
    assert {r.headers["User-Agent"] for r in site.requests} == {"test/1"}
    assert (
        site.requests[2].headers["Host"] == f"img.test:{site.port}"
    )  # the name, while the socket went to the IP
    assert {host for host, _ in connections} == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata"),
        ("http://private.test/admin", r"private\.test resolves to 10\.0\.0\.5, private"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("http://user:pw@127.0.0.1/", "credentials"),
    ],
)
async def test_a_redirect_to_a_refused_url_is_never_requested(site, connections, location, reason):
    site.redirect("/hop", location)
    async with GuardedClient(local()) as client:
        with pytest.raises(RefusedURL, match=reason) as caught:
            await client.fetch(site.url("/hop"), max_bytes=100, timeout=5)
    assert caught.value.url == location  # the hop it stopped at
    assert site.paths() == ["/hop"]
    assert connections == [("127.0.0.1", site.port)]


async def test_refusals_and_unknown_names_before_any_connection(site, connections):
    async with GuardedClient(AddressGuard()) as client:
        with pytest.raises(RefusedURL, match="loopback") as caught:
            await client.fetch(site.url("/"), max_bytes=100, timeout=5)
        assert caught.value.url == site.url("/")
        with pytest.raises(RefusedURL, match="scheme"):
            await client.fetch("ftp://example.com/a", max_bytes=100, timeout=5)
    async with GuardedClient(local()) as client:
        with pytest.raises(ResolveError, match="NXDOMAIN") as resolve:
            await client.fetch("http://gone.test/x", max_bytes=100, timeout=5)
    assert resolve.value.url == "http://gone.test/x"
    assert connections == [] and site.paths() == []


async def test_redirects_are_limited(site):
    for n in range(8):
        site.redirect(f"/r{n}", f"/r{n + 1}")
    site.page("/r8", b"end")
    async with GuardedClient(local()) as client:
        with pytest.raises(TooManyRedirects, match="more than 3 redirects"):
            await client.fetch(site.url("/r0"), max_bytes=100, timeout=5, max_redirects=3)
        site.routes["/bare"] = lambda h: send(h, 302)  # no Location: the answer as it is
        assert (await client.fetch(site.url("/bare"), max_bytes=100, timeout=5)).status == 302
    assert site.paths() == ["/r0", "/r1", "/r2", "/r3", "/bare"]


async def test_the_body_is_capped_while_it_streams(site):
    body = bytes(range(256)) * 400  # 100 KB

    def undeclared(h: BaseHTTPRequestHandler) -> None:  # no Content-Length: only counting stops it
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        for start in range(0, len(body), 4096):
            h.wfile.write(body[start : start + 4096])

    site.page("/declared", body)
    site.routes["/undeclared"] = undeclared
    async with GuardedClient(local()) as client:
        with pytest.raises(BodyTooLarge, match="102400 bytes, more than the 10000 allowed"):
            await client.fetch(site.url("/declared"), max_bytes=10_000, timeout=5)
        with pytest.raises(BodyTooLarge, match="more than the 10000 bytes allowed"):
            await client.fetch(site.url("/undeclared"), max_bytes=10_000, timeout=5)
        for path in ("/declared", "/undeclared"):
            cut = await client.fetch(site.url(path), max_bytes=10_000, timeout=5, truncate=True)
            assert cut.body == body[:10_000]
        whole = await client.fetch(site.url("/declared"), max_bytes=len(body), timeout=5)
        assert whole.body == body


async def test_compressed_bodies_are_decoded_within_the_cap(site):
    text = ("A sentence that compresses well. " * 300).encode()
    bomb = gzip.compress(bytes(20 * 1024 * 1024))  # 20 MB of zeros in about 20 KB
    site.page("/gzip", gzip.compress(text), Content_Encoding="gzip")
    site.page("/deflate", zlib.compress(text), Content_Encoding="deflate")
    site.page("/bomb", bomb, Content_Encoding="gzip")
    site.page("/br", b"\x0b\x02\x80hi\x03", Content_Encoding="br")
    async with GuardedClient(local()) as client:
        for path in ("/gzip", "/deflate"):
            assert (await client.fetch(site.url(path), max_bytes=len(text), timeout=5)).body == text
        with pytest.raises(BodyTooLarge):
            await client.fetch(site.url("/gzip"), max_bytes=len(text) - 1, timeout=5)
        with pytest.raises(BodyTooLarge):
            await client.fetch(site.url("/bomb"), max_bytes=1024 * 1024, timeout=5)
        cut = await client.fetch(site.url("/bomb"), max_bytes=1000, timeout=5, truncate=True)
        assert cut.body == bytes(1000)
        with pytest.raises(FetchFailed, match="content-encoding 'br' is not read"):
            await client.fetch(site.url("/br"), max_bytes=100, timeout=5)
    assert site.requests[0].headers["Accept-Encoding"] == "gzip, deflate"  # only what can be decoded


async def test_one_deadline_over_the_fetch_but_not_over_the_callers_pace(site):
    def drip(h: BaseHTTPRequestHandler) -> None:  # every read succeeds, the whole never arrives
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.end_headers()
        for _ in range(20):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.1)

    site.routes["/drip"] = drip
    site.page("/quick", b"quick")
    waited: list[str] = []

    @contextlib.asynccontextmanager
    async def pace(url: str) -> AsyncIterator[None]:
        waited.append(url)
        await asyncio.sleep(0.6)  # a politeness delay longer than the deadline
        yield

    async with GuardedClient(local()) as client:
        started = time.perf_counter()
        with pytest.raises(FetchTimeout, match=r"no complete answer within 0\.5 s") as caught:
            await client.fetch(site.url("/drip"), max_bytes=100, timeout=0.5)
        assert time.perf_counter() - started < 1.2 and caught.value.url == site.url("/drip")
        fetched = await client.fetch(site.url("/quick"), max_bytes=100, timeout=0.5, pace=pace)
        assert fetched.body == b"quick" and waited == [site.url("/quick")]


async def test_retries_of_server_errors(site):
    answers = iter([503, 200])
    site.routes["/flaky"] = lambda h: send(h, next(answers), b"body", "text/plain")
    site.routes["/down"] = lambda h: send(h, 500, b"broken")
    async with GuardedClient(local()) as client:
        assert (await client.fetch(site.url("/flaky"), max_bytes=100, timeout=5, retries=1)).body == b"body"
        down = await client.fetch(site.url("/down"), max_bytes=100, timeout=5, retries=1, retry_pause=0)
    assert (down.status, down.body) == (500, b"")  # the last answer, for the caller to judge
    assert site.paths() == ["/flaky", "/flaky", "/down", "/down"]


async def test_only_accepted_bodies_are_read_and_a_hook_can_stop_the_fetch(site):
    site.page("/page", b"<html>" * 10_000, "text/html")
    site.redirect("/elsewhere", "/page")

    class Stop(Exception):
        pass

    async def veto(url: str, hop: int) -> None:
        if hop:
            raise Stop(url)

    async with GuardedClient(local()) as client:
        fetched = await client.fetch(
            site.url("/page"), max_bytes=100, timeout=5, accept=lambda t: t.startswith("image/")
        )
        assert (fetched.status, fetched.content_type, fetched.body) == (200, "text/html", b"")
        with pytest.raises(Stop, match="/page"):
            await client.fetch(site.url("/elsewhere"), max_bytes=100, timeout=5, check_hop=veto)
    assert site.paths() == ["/page", "/elsewhere"]


@pytest.fixture
def self_signed(tmp_path) -> tuple[str, str]:
    """(cert, key) of a self-signed certificate for docs.test."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=docs.test"]
    command += ["-addext", "subjectAltName=DNS:docs.test"]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


async def test_https_pins_the_ip_but_keeps_sni_and_certificate_checks_on_the_name(self_signed, connections):
    """TLS to a name resolved to 127.0.0.1: the socket goes to the IP, SNI says the name, and the
    certificate is verified for the name (a self-signed one fails: no silent downgrade)."""
    cert, key = self_signed
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)

    with serve_site(tls=context) as server:
        async with GuardedClient(local("docs.test")) as client:
            with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await client.fetch(f"https://docs.test:{server.port}/", max_bytes=100, timeout=5)
    assert names and set(names) == {"docs.test"}
    assert {host for host, _ in connections} == {"127.0.0.1"}
