"""The SSRF guard: address classification, pinning, and the pinned transport against a real server.

Every test runs under ``_only_loopback``: the socket-level connect of httpcore's backend is wrapped so
that an attempt to reach anything but 127.0.0.1 fails the test before a socket exists, and the system
resolver is replaced so that no DNS query leaves the machine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from omnirag.core import netguard
from omnirag.core.netguard import (
    AddressGuard,
    PinnedTransport,
    RefusedURL,
    ResolveError,
    address_refusal,
    url_refusal,
)
from omnirag.core.netguard import system_resolver as real_system_resolver
from omnirag.core.testing import loopback_only


@pytest.fixture(autouse=True)
def connections(monkeypatch) -> Iterator[list[tuple[str, int]]]:
    made = loopback_only(monkeypatch, netguard)
    yield made
    assert all(host == "127.0.0.1" for host, _ in made), made


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """(port, Host headers seen) of a loopback HTTP server that answers every GET with "hello"."""
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hosts.append(self.headers.get("Host", ""))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], hosts
    finally:
        httpd.shutdown()
        httpd.server_close()


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
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("::1", "loopback"),
        ("[::1]", "loopback"),
        ("::", "unspecified"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
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


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_address_refusal_allows_public_addresses(address):
    assert address_refusal(address) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/file", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("data:image/png;base64,AAAA", "scheme"),
        ("http://user:secret@example.com/", "credentials"),
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
    port, hosts = server
    async with client(AddressGuard()) as http:
        with pytest.raises(RefusedURL, match="loopback"):
            await http.get(f"http://127.0.0.1:{port}/")
    assert hosts == [] and connections == []


async def test_pinned_transport_connects_to_the_checked_address_and_keeps_the_name(server, connections):
    port, hosts = server
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
    assert hosts == [f"img.test:{port}"] * 2
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
