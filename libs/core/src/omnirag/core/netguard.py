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

:meth:`GuardedClient.fetch` is the one fetch loop for such URLs (the crawler's pages, robots.txt and
sitemaps; the gateway's image and video URLs): redirects followed by hand, every hop checked again
before it is requested, the body streamed under a byte cap (compressed bodies decoded within it),
one deadline over the whole fetch, typed errors (:class:`FetchError` and its subclasses).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpcore
import httpx

__all__ = [
    "ACCEPT_ENCODING",
    "METADATA_ADDRESSES",
    "REDIRECT_STATUSES",
    "AddressGuard",
    "BodyTooLarge",
    "FetchError",
    "FetchFailed",
    "FetchTimeout",
    "Fetched",
    "GuardedClient",
    "HopCheck",
    "IPAddress",
    "Pace",
    "PinnedTransport",
    "RefusedURL",
    "ResolveError",
    "Resolver",
    "TooManyRedirects",
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


class FetchError(Exception):
    """A guarded request that did not end in an answer; ``reason`` says why and ``url`` names the
    hop it stopped at ("" where the guard alone refused, before any URL)."""

    def __init__(self, reason: str, url: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.url = url


class RefusedURL(FetchError):
    """A URL or address the guard will not connect to."""


class ResolveError(FetchError):
    """The host name did not resolve."""


class TooManyRedirects(FetchError):
    """More redirects than allowed."""


class BodyTooLarge(FetchError):
    """The body is (or declares to be) larger than the cap; the rest was never read."""


class FetchTimeout(FetchError):
    """The fetch, redirects and retries included, did not end within its deadline."""


class FetchFailed(FetchError):
    """The connection or the HTTP exchange failed (refused, reset, TLS, a body not readable)."""


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


# ------------------------------------------------------------------------------------ guarded fetch


REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# What :meth:`GuardedClient.fetch` can decode within its byte cap (zlib, fed a bounded output size).
ACCEPT_ENCODING = "gzip, deflate"

HopCheck = Callable[[str, int], Awaitable[Mapping[str, str] | None]]
"""``async (url, hop) -> extra request headers or None``, called before each hop (0: the URL asked
for) once the guard has passed it; raising stops the fetch with the caller's own exception."""
Pace = Callable[[str], AbstractAsyncContextManager[Any]]
"""``pace(url)`` is entered around every request (each hop, each retry): a concurrency slot, a
politeness delay. Time spent getting in does not count against the deadline."""


@dataclass(frozen=True)
class Fetched:
    """The answer a guarded fetch ended at: ``url`` after redirects, ``body`` empty unless the status
    was 200 and ``accept`` took the content type."""

    url: str
    status: int
    headers: httpx.Headers
    body: bytes = b""

    @property
    def content_type(self) -> str:
        """The MIME type of ``Content-Type``, lower case, without parameters ("" when absent)."""
        return str(self.headers.get("content-type", "")).split(";", 1)[0].strip().lower()


class _Deadline:
    """Seconds left for one fetch; only the time spent inside :meth:`running` is counted."""

    def __init__(self, seconds: float) -> None:
        self.total = seconds
        self.left = seconds

    @contextlib.asynccontextmanager
    async def running(self, url: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        scope = asyncio.timeout(max(self.left, 0.0))
        try:
            async with scope:
                yield
        except TimeoutError as exc:
            if scope.expired():
                raise FetchTimeout(f"no complete answer within {self.total:g} s", url) from exc
            raise
        finally:
            self.left -= loop.time() - started


def _host_port(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    return parsed.raw_host.decode("ascii"), parsed.port or _DEFAULT_PORTS[parsed.scheme.lower()]


def _with_url(exc: FetchError, url: str) -> FetchError:
    """``exc`` naming ``url``; a new one, since the guard raises its pinned refusal again and again."""
    return exc if exc.url else type(exc)(exc.reason, url)


class GuardedClient:
    """An HTTP client for URLs that someone else chose (a crawled link, an image in a question): it
    connects only where its :class:`AddressGuard` allows, through a :class:`PinnedTransport`, with no
    proxy and no automatic redirects. :meth:`fetch` is the one way in.

    Use it as ``async with GuardedClient(guard) as client``. One client keeps its connections alive
    across fetches (a crawl); the guard pins each host's addresses for its own life.
    """

    def __init__(
        self,
        guard: AddressGuard,
        *,
        max_connections: int = 10,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.guard = guard
        self._client = httpx.AsyncClient(
            transport=PinnedTransport(guard, max_connections, ssl_context=ssl_context),
            trust_env=False,
            follow_redirects=False,
            headers={"Accept-Encoding": ACCEPT_ENCODING, **(headers or {})},
        )

    async def __aenter__(self) -> GuardedClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        timeout: float,  # noqa: ASYNC109 - a deadline over hops and retries, not one call's
        max_redirects: int = 5,
        headers: Mapping[str, str] | None = None,
        accept: Callable[[str], bool] | None = None,
        truncate: bool = False,
        check_hop: HopCheck | None = None,
        pace: Pace | None = None,
        retries: int = 0,
        retry_pause: float = 0.2,
    ) -> Fetched:
        """GET ``url``, following redirects by hand: before every hop its URL is checked (scheme
        http(s), no credentials, a port) and its host resolved and checked by the guard; then
        ``check_hop`` runs. The connection goes to the checked address.

        The body is read only for a 200 whose content type ``accept`` takes (default: any); it is
        streamed and stops past ``max_bytes`` (decoded bytes, gzip and deflate included): raising
        :class:`BodyTooLarge`, or with ``truncate`` keeping the first ``max_bytes``. ``timeout`` is
        the deadline of the whole fetch (hops, retries, bodies; not time spent waiting in ``pace``).
        ``retries``: more tries of a hop that could not connect or answered 5xx / 429 (after the
        last one the 5xx answer is returned). A redirect without ``Location`` is returned as it is.

        Raises :class:`RefusedURL`, :class:`ResolveError`, :class:`TooManyRedirects`,
        :class:`BodyTooLarge`, :class:`FetchTimeout`, :class:`FetchFailed` (all :class:`FetchError`,
        naming the hop in ``url``), and whatever ``check_hop`` or ``pace`` raise.
        """
        deadline = _Deadline(timeout)
        for hop in range(max_redirects + 1):
            reason = url_refusal(url)
            if reason:
                raise RefusedURL(reason, url)
            try:
                async with deadline.running(url):
                    await self.guard.addresses(*_host_port(url))
            except (RefusedURL, ResolveError) as exc:
                raise _with_url(exc, url) from exc
            extra = await check_hop(url, hop) if check_hop is not None else None
            request_headers = {**(headers or {}), **(extra or {})}
            fetched = await self._hop(
                url, request_headers, deadline, pace, retries, retry_pause, max_bytes, accept, truncate
            )
            location = fetched.headers.get("location")
            if fetched.status not in REDIRECT_STATUSES or not location:
                return fetched
            try:
                url = urljoin(url, location.strip())
            except ValueError as exc:
                raise FetchFailed(f"bad redirect location {location[:200]!r}", url) from exc
        raise TooManyRedirects(f"more than {max_redirects} redirects", url)

    async def _hop(
        self,
        url: str,
        headers: Mapping[str, str],
        deadline: _Deadline,
        pace: Pace | None,
        retries: int,
        retry_pause: float,
        max_bytes: int,
        accept: Callable[[str], bool] | None,
        truncate: bool,
    ) -> Fetched:
        for attempt in range(retries + 1):
            last = attempt == retries
            slot = pace(url) if pace is not None else contextlib.nullcontext()
            async with slot, deadline.running(url):
                fetched = await self._request(url, headers, deadline, max_bytes, accept, truncate, last=last)
            if fetched is not None:
                return fetched
            async with deadline.running(url):
                await asyncio.sleep(retry_pause)
        raise AssertionError("the last attempt always answers")

    async def _request(
        self,
        url: str,
        headers: Mapping[str, str],
        deadline: _Deadline,
        max_bytes: int,
        accept: Callable[[str], bool] | None,
        truncate: bool,
        *,
        last: bool,
    ) -> Fetched | None:
        """One request; None when it is worth another try and this is not the last."""
        # httpx's own timeouts no shorter than the deadline, which is what bounds the whole fetch
        timeout = httpx.Timeout(max(deadline.left, 0.001))
        try:
            async with self._client.stream("GET", url, headers=headers, timeout=timeout) as response:
                status = response.status_code
                if (status >= 500 or status == 429) and not last:
                    return None
                fetched = Fetched(url, status, response.headers)
                if status != 200 or (accept is not None and not accept(fetched.content_type)):
                    return fetched
                body = await _read_body(response, url, max_bytes, truncate)
                return Fetched(url, status, response.headers, body)
        except (RefusedURL, ResolveError) as exc:  # the pinned backend's, raised through httpx
            raise _with_url(exc, url) from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if not last:
                return None
            raise FetchFailed(f"cannot connect: {exc}", url) from exc
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc}", url) from exc


async def _read_body(response: httpx.Response, url: str, max_bytes: int, truncate: bool) -> bytes:
    """The body, decoded (gzip / deflate) and capped while it streams in."""
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"{declared} bytes, more than the {max_bytes} allowed", url)
    encoding = response.headers.get("content-encoding", "").strip().lower()
    decoder: Any = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        # zlib with a bound on each output: a gzip bomb never expands past the cap in memory.
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    elif encoding not in ("", "identity"):
        raise FetchFailed(f"content-encoding {encoding[:50]!r} is not read", url)
    chunks: list[bytes] = []
    size = 0

    def keep(piece: bytes) -> bool:
        """Add ``piece``; False once the cap is reached (with ``truncate``)."""
        nonlocal size
        size += len(piece)
        if size <= max_bytes:
            chunks.append(piece)
            return True
        if not truncate:
            raise BodyTooLarge(f"more than the {max_bytes} bytes allowed", url)
        chunks.append(piece[: len(piece) - (size - max_bytes)])
        return False

    try:
        async for raw in response.aiter_raw():
            if decoder is None:
                if not keep(raw):
                    break
                continue
            data = raw
            while data:
                if not keep(decoder.decompress(data, max_bytes - size + 1)):
                    return b"".join(chunks)
                data = decoder.unconsumed_tail
        else:
            if decoder is not None:
                keep(decoder.flush())
    except zlib.error as exc:
        raise FetchFailed(f"the {encoding} body is corrupt: {exc}", url) from exc
    return b"".join(chunks)
