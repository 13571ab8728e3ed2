"""An async HTTP client for calls between services: timeouts, bounded retries, request ids, and
an optional circuit breaker.

Retries are for what a retry can fix: a connection that failed, a timeout, 429 and 502/503/504.
They back off exponentially with jitter and honour ``Retry-After``, within a total budget, so a
dead dependency costs a caller a bounded time and then a clear :class:`UpstreamError`.

A dependency that is alive but does not answer still costs every caller its whole timeout. A
:class:`CircuitBreaker` stops that: after ``failures_to_open`` consecutive failures (a connection
error, a timeout, 502/503/504) it opens and refuses calls at once with :class:`CircuitOpen`; after
``cooldown`` seconds it lets one probe call through (half-open); the probe's success closes it, its
failure opens it for another cool-down. :class:`CircuitBreakerTransport` puts breakers under any
``httpx.AsyncClient`` (one per upstream base URL); ``ServiceClient(breaker=...)`` uses it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import httpx

from omnirag.core.errors import NotFound, Overloaded, UpstreamError
from omnirag.core.logging import REQUEST_ID_HEADER, request_id_var

log = logging.getLogger("omnirag.http.client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Answers that say the upstream cannot serve at all. A 429 is not one: the upstream is alive and
# pacing us (its own Retry-After covers it). A 500 is not one either: it is one request's bug, and
# counting it would let one repeated bad input open the breaker for everybody.
FAILURE_STATUSES = frozenset({502, 503, 504})

CircuitState = Literal["closed", "open", "half_open"]
# For a gauge: the states in order of how cut off the upstream is.
CIRCUIT_STATE_VALUES: dict[CircuitState, int] = {"closed": 0, "half_open": 1, "open": 2}


class CircuitOpen(httpx.TransportError):
    """Refused without a call: the upstream's breaker is open. A TransportError, so code that
    already treats an unreachable upstream as down (``except httpx.HTTPError``) does the same
    here, only without waiting."""

    def __init__(self, upstream: str, retry_after: float) -> None:
        super().__init__(f"{upstream} is unavailable (circuit open); retry in {math.ceil(retry_after)}s")
        self.upstream = upstream
        # Whole seconds for a Retry-After header; never 0, which would invite an immediate retry.
        self.retry_after = max(1, math.ceil(retry_after))


class CircuitBreaker:
    """Closed → open after ``failures_to_open`` consecutive failures; open → half-open once
    ``cooldown`` seconds have passed, when one probe call is let through while the others are
    still refused; the probe's success closes it, its failure opens it for another cool-down.

    For one event loop: every method is synchronous, so no await can interleave inside one."""

    def __init__(
        self,
        name: str,
        *,
        failures_to_open: int = 5,
        cooldown: float = 10.0,
        on_change: Callable[[str, CircuitState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        if cooldown <= 0:
            raise ValueError("cooldown must be positive")
        self.name = name
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self._on_change = on_change
        self._clock = clock
        self._state: CircuitState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        if on_change is not None:
            on_change(name, "closed")

    @property
    def state(self) -> CircuitState:
        return self._state

    def _set(self, state: CircuitState) -> None:
        if state != self._state:
            self._state = state
            log.warning("circuit of %s is %s", self.name, state.replace("_", "-"))
            if self._on_change is not None:
                self._on_change(self.name, state)

    def retry_after(self) -> float:
        """Seconds until a call may be let through again (0 when one would be now)."""
        if self._state == "closed":
            return 0.0
        if self._state == "half_open":
            # A probe is out; it ends within its caller's timeout, which the breaker does not know.
            return self.cooldown
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def admit(self) -> bool:
        """Before a call: raise :class:`CircuitOpen`, or let it through. True means the call is
        the half-open probe; hand that back to :meth:`record` or :meth:`release`."""
        if self._state == "closed":
            return False
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown:
            self._set("half_open")
        if self._state == "half_open" and not self._probing:
            self._probing = True
            return True
        raise CircuitOpen(self.name, self.retry_after())

    def record(self, ok: bool, probe: bool = False) -> None:
        """After a call that got an answer or failed: ``ok`` False for a connection error, a
        timeout or 502/503/504."""
        if probe:
            self._probing = False
        if ok:
            self._failures = 0
            # Only the probe closes an open breaker: a call let through before it opened says
            # nothing about the upstream now.
            if probe:
                self._set("closed")
            return
        self._failures += 1
        if probe or (self._state == "closed" and self._failures >= self.failures_to_open):
            self._opened_at = self._clock()
            self._set("open")

    def release(self, probe: bool) -> None:
        """After a call that ended with neither (cancelled: its caller left)."""
        if probe:
            self._probing = False


class CircuitBreakerTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each call through the breaker of its upstream, the one
    whose base URL the request's URL starts with (the longest such). Only API paths (``/v1/...``
    under the base URL) go through it: a health probe has its own short timeout and must see the
    upstream as it is, and a live ``/readyz`` must not close a breaker whose searches hang."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        breakers: Mapping[str, CircuitBreaker],
        *,
        api_prefix: str = "/v1/",
    ) -> None:
        self.inner = inner
        routes = []
        for base, breaker in breakers.items():
            url = httpx.URL(base)
            routes.append(((url.scheme, url.host, url.port), url.path.rstrip("/") + api_prefix, breaker))
        self._routes = sorted(routes, key=lambda route: len(route[1]), reverse=True)

    def breaker_for(self, url: httpx.URL) -> CircuitBreaker | None:
        origin = (url.scheme, url.host, url.port)
        for route_origin, prefix, breaker in self._routes:
            if origin == route_origin and url.path.startswith(prefix):
                return breaker
        return None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        breaker = self.breaker_for(request.url)
        if breaker is None:
            return await self.inner.handle_async_request(request)
        probe = breaker.admit()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:  # timeouts included
            breaker.record(False, probe)
            raise
        except BaseException:
            breaker.release(probe)
            raise
        breaker.record(response.status_code not in FAILURE_STATUSES, probe)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class ServiceClient:
    def __init__(
        self,
        base_url: str,
        *,
        name: str = "upstream",
        timeout: float = 30.0,
        connect_timeout: float = 3.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.name = name
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.breaker = breaker
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        if breaker is not None:
            # httpx applies ``limits`` only to the transport it makes itself; this one is ours.
            transport = CircuitBreakerTransport(
                transport or httpx.AsyncHTTPTransport(limits=limits), {base_url: breaker}, api_prefix="/"
            )
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers=headers,
            transport=transport,
            limits=limits,
        )

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = str(response.headers.get("retry-after", ""))
            if after.replace(".", "", 1).isdigit():
                return float(min(float(after), self.max_backoff))
        base = min(self.backoff * (2**attempt), self.max_backoff)
        return float(base * (0.5 + random.random() / 2))

    async def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """Send a request; raise :class:`UpstreamError` (or NotFound / Overloaded) when it fails for good."""
        headers = dict(kwargs.pop("headers", None) or {})
        rid = request_id_var.get()
        if rid:
            headers.setdefault(REQUEST_ID_HEADER, rid)
        attempts = 1 + (self.retries if retry else 0)
        last_error = ""
        response: httpx.Response | None = None
        started = time.monotonic()
        for attempt in range(attempts):
            response = None
            try:
                response = await self._client.request(method, path, headers=headers, **kwargs)
            except CircuitOpen as exc:
                # Retrying cannot help before the cool-down ends, and waiting for it is what the
                # breaker exists to spare the caller.
                raise UpstreamError(
                    f"{self.name} is unavailable (circuit open)",
                    code="upstream_unavailable",
                    details={"retry_after": exc.retry_after},
                ) from exc
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code not in RETRY_STATUSES:
                    return self._check(response)
                last_error = f"HTTP {response.status_code}"
            if attempt + 1 < attempts:
                delay = self._delay(attempt, response)
                log.info(
                    "retrying %s %s after %s",
                    self.name,
                    path,
                    last_error,
                    extra={"attempt": attempt + 1, "delay": round(delay, 3)},
                )
                await asyncio.sleep(delay)
        if response is not None and response.status_code == 429:
            raise Overloaded(f"{self.name} is overloaded", retry_after=int(self._delay(0, response)) or 1)
        elapsed = time.monotonic() - started
        raise UpstreamError(f"{self.name} failed after {attempts} attempt(s) in {elapsed:.1f}s: {last_error}")

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code < 400:
            return response
        message = _error_message(response)
        if response.status_code == 404:
            raise NotFound(f"{self.name}: {message}")
        raise UpstreamError(
            f"{self.name} answered {response.status_code}: {message}",
            details={"status": response.status_code},
        )

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        return (await self.request("GET", path, **kwargs)).json()

    async def post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return (await self.request("POST", path, json=body, **kwargs)).json()


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body["error"]["message"])
    except Exception:
        return response.text[:200] or response.reason_phrase
