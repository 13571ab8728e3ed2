"""``OrjsonRoute``: FastAPI routes whose JSON bodies are parsed by orjson, to a bounded depth.

FastAPI reads a JSON body with the standard library's ``json.loads``: about 200 µs for a search
request carrying a 384-float vector, against 26 µs with orjson (measured by bench/retriever.py) —
on a search that costs 1-2 ms over HTTP in all, that is a tenth of it. Validation, error
messages (``orjson.JSONDecodeError`` is a ``json.JSONDecodeError``, which FastAPI turns into a 422)
and the OpenAPI schema are unchanged; only the parser is swapped.

    router = APIRouter(prefix="/v1", route_class=OrjsonRoute)

Depth. A body nested deeper than :data:`MAX_JSON_DEPTH` is refused with 400 ``too_deeply_nested``
(:class:`~omnirag.core.errors.TooDeeplyNested`): no API here takes more than a few levels, and
what reads a deep body later fails far from the parser (pydantic refuses to serialize past ~255
levels, the stdlib json recurses into Python's stack at ~1000) as a 500. Routes that parse a body
themselves call :func:`loads_json` for the same bound.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from omnirag.core.errors import TooDeeplyNested

# Levels of arrays and objects a body may have. OpenAI tool and response-format schemas, the
# deepest JSON any route takes, nest about ten; orjson itself stops at 1024.
MAX_JSON_DEPTH = 64


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) has more than ``limit`` levels of arrays and objects.
    Iterative, so no depth can overflow the check itself."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def loads_json(raw: bytes | str) -> Any:
    """orjson's ``loads`` bounded to :data:`MAX_JSON_DEPTH` levels: raises TooDeeplyNested for a
    deeper body, ``orjson.JSONDecodeError`` (a ``json.JSONDecodeError``) for malformed JSON."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own bound, 1024 levels
            raise TooDeeplyNested(_too_deep_message()) from exc
        raise
    # A body cannot nest deeper than it has brackets: counting them (in C) spares the walk for
    # nearly every request, such as a search with a 384-float vector (two brackets).
    brackets = (
        raw.count(b"[") + raw.count(b"{") if isinstance(raw, bytes) else raw.count("[") + raw.count("{")
    )
    if brackets > MAX_JSON_DEPTH and json_depth_exceeds(value):
        raise TooDeeplyNested(_too_deep_message())
    return value


def _too_deep_message() -> str:
    return f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep"


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_json(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_orjson(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return with_orjson
