"""What routes reach through ``Depends`` (the gateway's parts and the caller's API key), and how the
gateway reaches the embedder and the retriever: through a circuit breaker each, and with a 503 and
Retry-After when one is unavailable."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import httpx
from fastapi import Depends, FastAPI, Header, Request
from starlette.responses import Response

from omnirag.core.errors import (
    BadRequest,
    Forbidden,
    NotReady,
    OmniragError,
    Overloaded,
    Unauthorized,
    UpstreamError,
    error_body,
    error_response,
    raises,
)
from omnirag.core.http import CircuitBreaker, CircuitBreakerTransport, CircuitOpen
from omnirag.core.responses import JSONResponse
from omnirag.gateway.auth import ANONYMOUS, USER_HEADER, ApiKey, acting_for, bearer
from omnirag.gateway.llm import env_proxy
from omnirag.gateway.state import GatewayState

if TYPE_CHECKING:
    from omnirag.gateway.config import GatewaySettings
    from omnirag.gateway.metrics import GatewayMetrics

log = logging.getLogger("omnirag.gateway.auth")


def get_gateway(request: Request) -> GatewayState:
    gateway: GatewayState = request.app.state.gateway
    return gateway


@raises(Unauthorized, Forbidden, BadRequest, Overloaded)
async def authenticated(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
    x_omnirag_user: Annotated[
        str | None, Header(alias=USER_HEADER, description="The end user a trusted key acts for.")
    ] = None,
) -> ApiKey:
    """The caller's key, counted against its request budget. Limits fail open when Redis is down:
    refusing every request because the counter is unreachable would turn a Redis outage into a
    full outage."""
    gw = get_gateway(request)
    key = gw.keys.authenticate(bearer(authorization, x_api_key)) if gw.settings.auth_enabled else ANONYMOUS
    # Routes that call this directly (chat) pass no header arguments: read it from the request then.
    user = x_omnirag_user if x_omnirag_user is not None else request.headers.get(USER_HEADER)
    key = acting_for(key, user)  # before the limits: they are counted per user
    try:
        await gw.limiter.check(key)
    except Overloaded:
        raise
    except Exception as exc:
        log.warning(
            "rate limits unavailable; request let through", extra={"error": f"{type(exc).__name__}: {exc}"}
        )
    request.state.api_key = key
    return key


Key = Annotated[ApiKey, Depends(authenticated)]
Gateway = Annotated[GatewayState, Depends(get_gateway)]


async def unavailable_error(request: Request, exc: Exception) -> Response:
    """The error table's answer, plus what it cannot say: an upstream refused by its open circuit
    breaker is 503 ``upstream_unavailable`` (not 502: nothing answered badly, we did not ask),
    and both that and an error carrying ``retry_after`` get a Retry-After header, so a client
    waits out the cool-down instead of hammering."""
    assert isinstance(exc, OmniragError)
    cause = exc.__cause__
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(cause, CircuitOpen):
        retry_after = cause.retry_after
        if not isinstance(exc, NotReady):  # a NotReady is a 503 already, with its own code
            return JSONResponse(
                error_body("upstream_unavailable", f"{cause.upstream} is unavailable for now; retry later"),
                status_code=503,
                headers={"Retry-After": str(retry_after)},
            )
    response = error_response(exc)
    if isinstance(retry_after, int) and "retry-after" not in response.headers:
        response.headers["Retry-After"] = str(max(1, retry_after))
    return response


def install_unavailable_handlers(app: FastAPI) -> None:
    # Looked up along the exception's MRO before the generic OmniragError handler.
    app.add_exception_handler(UpstreamError, unavailable_error)
    app.add_exception_handler(NotReady, unavailable_error)


def upstream_mounts(
    settings: GatewaySettings, metrics: GatewayMetrics, limits: httpx.Limits
) -> dict[str, httpx.AsyncBaseTransport]:
    """Transports for the gateway's client, mounted on the embedder's and the retriever's origins:
    a circuit breaker per upstream, whose state the metrics show (none when ``circuit_failures``
    is 0). Each honours HTTP(S)_PROXY / NO_PROXY for its URL as httpx's own transport would."""
    if settings.circuit_failures == 0:
        return {}
    by_origin: dict[str, dict[str, CircuitBreaker]] = {}
    for name, url in (("embedder", settings.embedder_url), ("retriever", settings.retriever_url)):
        u = httpx.URL(url)
        origin = f"{u.scheme}://{u.host}" + (f":{u.port}" if u.port else "")
        by_origin.setdefault(origin, {})[url] = CircuitBreaker(
            name,
            failures_to_open=settings.circuit_failures,
            cooldown=settings.circuit_cooldown_seconds,
            on_change=metrics.circuit_changed,
        )
    return {
        origin: CircuitBreakerTransport(
            httpx.AsyncHTTPTransport(limits=limits, proxy=env_proxy(origin)), breakers
        )
        for origin, breakers in by_origin.items()
    }
