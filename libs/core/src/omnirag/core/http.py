"""An async HTTP client for calls between services: timeouts, bounded retries, request ids.

Retries are for what a retry can fix: a connection that failed, a timeout, 429 and 502/503/504.
They back off exponentially with jitter and honour ``Retry-After``, within a total budget, so a
dead dependency costs a caller a bounded time and then a clear :class:`UpstreamError`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import httpx

from omnirag.core.errors import NotFound, Overloaded, UpstreamError
from omnirag.core.logging import REQUEST_ID_HEADER, request_id_var

log = logging.getLogger("omnirag.http.client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})


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
    ) -> None:
        self.name = name
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            headers=headers,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = response.headers.get("retry-after", "")
            if after.replace(".", "", 1).isdigit():
                return min(float(after), self.max_backoff)
        base = min(self.backoff * (2**attempt), self.max_backoff)
        return base * (0.5 + random.random() / 2)

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
