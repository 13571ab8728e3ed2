"""What routes reach through ``Depends``: the gateway's parts and the caller's API key."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from omnirag.core.errors import Overloaded
from omnirag.gateway.auth import ANONYMOUS, ApiKey, bearer

log = logging.getLogger("omnirag.gateway.auth")


def get_gateway(request: Request) -> Any:
    return request.app.state.gateway


async def authenticated(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> ApiKey:
    """The caller's key, counted against its request budget. Limits fail open when Redis is down:
    refusing every request because the counter is unreachable would turn a Redis outage into a
    full outage."""
    gw = request.app.state.gateway
    key = gw.keys.authenticate(bearer(authorization, x_api_key)) if gw.settings.auth_enabled else ANONYMOUS
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
Gateway = Annotated[Any, Depends(get_gateway)]
