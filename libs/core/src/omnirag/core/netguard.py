"""SSRF guard for outgoing HTTP requests to URLs that callers chose (crawled pages, image URLs).

A host is resolved once per :class:`AddressGuard` (``socket.getaddrinfo`` in a thread) and refused
when *any* of its addresses is loopback, private, link-local, multicast, reserved, unspecified, not
globally routable or a cloud-metadata address, unless the host (or that address) is allowed. The
checked addresses are *pinned*: :class:`PinnedTransport` runs httpx on an httpcore network backend
whose ``connect_tcp`` never resolves anything itself — it asks the guard for the host's checked
addresses and opens the TCP socket to one of those IPs. The URL keeps its host name, so the ``Host``
header, TLS SNI and certificate verification all use the name while the socket goes to the checked
IP: a DNS answer that changes between check and connect (rebinding) cannot be used. No proxy is
used (``trust_env=False``); unix sockets are refused.

A guard pins answers for its whole life: make one per unit of work (a crawl, a request), not one per
process, or DNS changes are never seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

__all__ = [
    "METADATA_ADDRESSES",
    "AddressGuard",
    "IPAddress",
    "PinnedTransport",
    "RefusedURL",
    "ResolveError",
    "Resolver",
    "address_refusal",
    "system_resolver",
    "url_refusal",
]

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``async (host, port) -> [address, ...]``; raises :class:`ResolveError` when the name does not resolve."""


class RefusedURL(Exception):
    """A URL or address the guard will not connect to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ResolveError(Exception):
    """The host name did not resolve."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str | IPAddress) -> str | None:
    """Why connecting to ``address`` is refused by default, or None for a public address.

    Pure classification, no network.
    """
    if isinstance(address, str):
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
        except ValueError:
            return f"not an IP address: {address!r}"
    else:
        ip = address
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = address_refusal(embedded)
            if reason:
                return f"{reason} (IPv4 {embedded} inside {ip})"
        if ip.is_site_local:
            return "site-local address"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    for reason, hit in checks:
        if hit:
            return f"{reason} address"
    return None


def url_refusal(url: str) -> str | None:
    """Refusal that needs no DNS: scheme other than http(s), credentials, malformed URL, bad port."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, UnicodeError):
        return "malformed URL"
    if parsed.scheme.lower() not in _DEFAULT_PORTS:
        return f"scheme {parsed.scheme!r} is not http(s)"
    if parsed.userinfo:
        return "URLs with credentials are not fetched"
    if not parsed.raw_host:
        return "URL without host"
    if port is not None and not 0 < port < 65536:
        return "bad port"
    return None


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").lower().rstrip(".")


async def system_resolver(host: str, port: int) -> list[str]:
    """``socket.getaddrinfo`` in a thread; the unique addresses in the resolver's order."""
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolveError(f"cannot resolve {host}: {exc}") from exc
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


class AddressGuard:
    """Resolves each host once, refuses unsafe addresses and pins the checked ones.

    ``allow_hosts`` holds host names or IP addresses allowed although they are not public. Cloud
    metadata addresses stay refused unless that very address is listed. ``allow_setting`` names the
    setting that holds ``allow_hosts``; refusal messages tell the operator to list the host there.
    """

    def __init__(
        self,
        allow_hosts: Iterable[str] = (),
        resolver: Resolver | None = None,
        *,
        allow_setting: str = "allowHosts",
    ) -> None:
        self._allowed_hosts: set[str] = set()
        self._allowed_ips: set[IPAddress] = set()
        for entry in allow_hosts:
            host = _normalise_host(entry)
            self._allowed_hosts.add(host)
            with contextlib.suppress(ValueError):
                self._allowed_ips.add(ipaddress.ip_address(host))
        self._resolver = resolver or system_resolver
        self._allow_setting = allow_setting
        self._pins: dict[str, list[str] | Exception] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def is_allowed_host(self, host: str) -> bool:
        return _normalise_host(host) in self._allowed_hosts

    def refusal(self, host: str, address: str) -> str | None:
        """Why ``host`` may not be reached at ``address`` (None: allowed)."""
        ip = ipaddress.ip_address(address)
        if ip in self._allowed_ips:
            return None
        reason = address_refusal(ip)
        if reason is None:
            return None
        if self.is_allowed_host(host) and ip not in METADATA_ADDRESSES:
            return None
        return reason

    async def addresses(self, host: str, port: int) -> list[str]:
        """The checked, pinned addresses of ``host``; raises RefusedURL or ResolveError."""
        key = _normalise_host(host)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._pins:
                self._pins[key] = await self._check(key, port)
        pinned = self._pins[key]
        if isinstance(pinned, Exception):
            raise pinned
        return pinned

    async def _check(self, host: str, port: int) -> list[str] | Exception:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = await self._resolver(host, port)
            except ResolveError as exc:
                return exc
            if not addresses:
                return ResolveError(f"cannot resolve {host}: no addresses")
        for address in addresses:
            try:
                reason = self.refusal(host, address)
            except ValueError:
                reason = "unparsable address"
            if reason:
                shown = host if host == address else f"{host} resolves to {address},"
                return RefusedURL(f"{shown} {reason}; list the host in {self._allow_setting} to allow it")
        return addresses


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to the addresses the guard checked for the host: no resolution of its own."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._guard.addresses(host, port)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedURL("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool rebuilt on the guard's pinned backend, no proxy.

    Use it with ``httpx.AsyncClient(transport=..., trust_env=False)``. A refused host surfaces as
    :class:`RefusedURL` and an unresolvable one as :class:`ResolveError`, raised from the request
    (httpx does not wrap them).
    """

    def __init__(
        self,
        guard: AddressGuard,
        max_connections: int = 10,
        *,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=_PinnedBackend(guard),
        )
