"""One table from error types to HTTP status, and JSON errors with a stable ``code``.

Every error body is ``{"error": {"code": str, "message": str}}`` (plus optional ``details``), the
shape OpenAI clients already know how to print.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from omnirag.core.responses import JSONResponse

log = logging.getLogger("omnirag.errors")


class OmniragError(Exception):
    """Base of every error a service raises on purpose. ``code`` is stable; ``message`` is for people."""

    code = "internal_error"
    # OpenAI's optional error fields: ``type`` (e.g. invalid_request_error) and ``param`` (the
    # request field at fault), which the openai SDK exposes on its exceptions.
    type: str | None = None
    param: str | None = None

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidInput(OmniragError):
    code = "invalid_input"


class BadRequest(OmniragError):
    """A request the service understood but cannot serve as asked (400, as OpenAI answers it)."""

    code = "bad_request"


class PayloadTooLarge(OmniragError):
    code = "payload_too_large"


class NotFound(OmniragError):
    code = "not_found"


class Unauthorized(OmniragError):
    code = "unauthorized"


class Forbidden(OmniragError):
    code = "forbidden"


class Conflict(OmniragError):
    code = "conflict"


class Overloaded(OmniragError):
    """The service is full right now; ``retry_after`` (seconds) becomes the Retry-After header."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class NotReady(OmniragError):
    code = "not_ready"


class UpstreamError(OmniragError):
    """A service we depend on answered badly or not at all."""

    code = "upstream_error"


class ClientGone(OmniragError):
    """The caller disconnected; nobody will read the answer."""

    code = "client_gone"


class RequestBodyError(StarletteHTTPException):
    """A body refused while it is being read or parsed, with its own status and stable ``code``.

    An HTTPException, because FastAPI turns any other exception raised while it reads and parses a
    body (``request.json()``, ``request.form()``, a bounded ``receive``) into a bare 400 "There was
    an error parsing the body"; an HTTPException it lets through untouched.
    """

    code = "bad_request"

    def __init__(self, status_code: int, message: str, *, code: str | None = None) -> None:
        super().__init__(status_code=status_code, detail=message)
        if code is not None:
            self.code = code


class TooDeeplyNested(RequestBodyError):
    """A JSON body nested deeper than a service reads (see omnirag.core.routing.MAX_JSON_DEPTH)."""

    code = "too_deeply_nested"

    def __init__(self, message: str = "the JSON body is nested too deeply") -> None:
        super().__init__(400, message)


# The one table. Lookup walks the MRO, so a subclass inherits its parent's status.
ERROR_STATUS: dict[type[OmniragError], int] = {
    InvalidInput: 422,
    BadRequest: 400,
    PayloadTooLarge: 413,
    NotFound: 404,
    Unauthorized: 401,
    Forbidden: 403,
    Conflict: 409,
    Overloaded: 429,
    ClientGone: 499,
    NotReady: 503,
    UpstreamError: 502,
    OmniragError: 500,
}


def status_for(exc: OmniragError) -> int:
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_body(
    code: str, message: str, details: Any = None, *, type: str | None = None, param: str | None = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if type is not None:
        err["type"] = type
    if param is not None:
        err["param"] = param
    if details is not None:
        err["details"] = details
    return {"error": err}


def error_response(exc: OmniragError) -> JSONResponse:
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details, type=exc.type, param=exc.param),
        status_code=status_for(exc),
        headers=headers,
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "overloaded",
}


def _too_deep_response() -> JSONResponse:
    exc = TooDeeplyNested()
    return JSONResponse(error_body(exc.code, str(exc.detail)), status_code=exc.status_code)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    more = len(errors) - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


# The house error body as an OpenAPI schema (what error_body() builds).
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable, for programs: e.g. not_found."},
                "message": {"type": "string", "description": "For people."},
                "type": {"type": "string", "description": "OpenAI's error type, where it applies."},
                "param": {"type": "string", "description": "The request field at fault, where one is."},
                "details": {"description": "Optional: e.g. the validation errors."},
            },
        }
    },
}


def document_errors(app: FastAPI) -> None:
    """Make the OpenAPI document say what errors look like: every operation's 422 and any other
    error status (``default``) carry the house error body.

    FastAPI documents a 422 of its own shape (``{"detail": [...]}``), which these services never
    send, and no other error status at all, though every route can answer 400 (a body that does not
    parse), 413, 503 and its own 401, 404, 429...: a client generated from the schema, or a
    schema-driven test (tests/api), would call every real error undocumented.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        error = {
            "description": "An error, as JSON with a stable code",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for item in schema.get("paths", {}).values():
            for method, operation in item.items():
                if method not in ("get", "put", "post", "delete", "patch", "options", "head", "trace"):
                    continue
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {**error, "description": "Invalid input"}
                responses.setdefault("default", error)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    document_errors(app)

    @app.exception_handler(OmniragError)
    async def _omnirag(_: Request, exc: OmniragError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return JSONResponse(
            error_body("invalid_input", _describe_validation(errors), errors[:20]), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, RequestBodyError):
            code = exc.code
        elif isinstance(exc.__cause__, RecursionError):
            # FastAPI's own body parsing (the stdlib json) hit the stack on a deeply nested body
            # and says only "There was an error parsing the body"; say what it was.
            return _too_deep_response()
        else:
            code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RecursionError)
    async def _recursion(request: Request, exc: RecursionError) -> JSONResponse:
        # A request handler recurses only into what the client sent (a JSON parser, a validator,
        # an encoder walking the body), so running out of stack means the input was nested too
        # deeply for it: the client's error, whichever parser or route met it first. Logged
        # without the traceback (a thousand identical frames), but with the place it was met.
        log.warning("request nested too deeply", extra={"path": request.url.path, "error": str(exc)})
        return _too_deep_response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The trace goes to the log, never to the caller.
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "internal error; see the service log"), status_code=500
        )
