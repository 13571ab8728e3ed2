"""``OrjsonRoute``: FastAPI routes whose JSON bodies are parsed by orjson.

FastAPI reads a JSON body with the standard library's ``json.loads``: about 200 µs for a search
request carrying a 384-float vector, against 26 µs with orjson (measured by bench/retriever.py) —
on a search that costs 1-2 ms over HTTP in all, that is a tenth of it. Validation, error
messages (``orjson.JSONDecodeError`` is a ``json.JSONDecodeError``, which FastAPI turns into a 422)
and the OpenAPI schema are unchanged; only the parser is swapped.

    router = APIRouter(prefix="/v1", route_class=OrjsonRoute)
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_orjson(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return with_orjson
