"""One table from error types to HTTP status, and JSON errors with a stable ``code``.

Every error body is ``{"error": {"code": str, "message": str}}`` (plus optional ``details``), the
shape OpenAI clients already know how to print.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException

from omnirag.core.responses import JSONResponse

log = logging.getLogger("omnirag.errors")


class OmniragError(Exception):
    """Base of every error a service raises on purpose. ``code`` is stable; ``message`` is for people.

    ``summary`` says what the status means to a client, in the OpenAPI document (see document_errors).
    """

    code = "internal_error"
    summary: ClassVar[str] = "An unexpected failure; the service's log has the details"
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
    summary = "Invalid input: a parameter or a field of the body is not what the route takes"


class BadRequest(OmniragError):
    """A request the service understood but cannot serve as asked (400, as OpenAI answers it)."""

    code = "bad_request"
    summary = "A request that cannot be served as sent (e.g. a body nested too deeply to read)"


class PayloadTooLarge(OmniragError):
    code = "payload_too_large"
    summary = "The body, or a part or a list in it, is larger than the service takes"


class NotFound(OmniragError):
    code = "not_found"
    summary = "What the request names does not exist here"


class Unauthorized(OmniragError):
    code = "unauthorized"
    summary = "Missing or wrong credentials"


class Forbidden(OmniragError):
    code = "forbidden"
    summary = "The credentials do not allow this"


class Conflict(OmniragError):
    code = "conflict"
    summary = "What the request names is in a state that cannot serve it"


class Overloaded(OmniragError):
    """The service is full right now; ``retry_after`` (seconds) becomes the Retry-After header."""

    code = "overloaded"
    summary = "Too many requests right now; retry after Retry-After seconds"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class NotReady(OmniragError):
    code = "not_ready"
    summary = "Not ready: the service, or a part it needs, is starting or down"


class UpstreamError(OmniragError):
    """A service we depend on answered badly or not at all."""

    code = "upstream_error"
    summary = "A service this one depends on answered badly or not at all"


class ClientGone(OmniragError):
    """The caller disconnected; nobody will read the answer."""

    code = "client_gone"
    summary = "The caller disconnected before the answer"


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


def status_of(error: type[OmniragError]) -> int:
    for cls in error.__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def status_for(exc: OmniragError) -> int:
    return status_of(type(exc))


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


_RAISES = "__omnirag_raises__"
_Fn = TypeVar("_Fn", bound=Callable[..., Any])
_METHODS = frozenset({"get", "put", "post", "delete", "patch", "options", "head", "trace"})


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def raises(*errors: type[OmniragError]) -> Callable[[_Fn], _Fn]:
    """Declare the errors a route handler or a dependency raises on purpose: the OpenAPI document
    then lists them on every route that runs it (see document_errors), with the status the table
    gives each. On a dependency it says it once for all its routes (a key check's 401 and 429)."""

    def mark(fn: _Fn) -> _Fn:
        setattr(fn, _RAISES, (*getattr(fn, _RAISES, ()), *errors))
        return fn

    return mark


def error_responses(errors: Iterable[type[OmniragError]]) -> dict[str, dict[str, Any]]:
    """OpenAPI responses for ``errors``: one per status of the table, with the house error body,
    saying what the status means and its stable codes (a route may send more specific ones)."""
    by_status: dict[int, list[type[OmniragError]]] = {}
    for error in errors:
        group = by_status.setdefault(status_of(error), [])
        if error not in group:
            group.append(error)
    responses: dict[str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        summaries = list(dict.fromkeys(error.summary for error in group))
        codes = ", ".join(dict.fromkeys(f"`{error.code}`" for error in group))
        response: dict[str, Any] = {
            "description": f"{'; '.join(summaries)} (code: {codes})",
            "content": _error_content(),
        }
        if any(issubclass(error, Overloaded) for error in group):
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        responses[str(status)] = response
    return responses


def _raised_by(dependant: Dependant) -> Iterable[type[OmniragError]]:
    yield from getattr(dependant.call, _RAISES, ())
    for sub in dependant.dependencies:
        yield from _raised_by(sub)


def declared_errors(app: FastAPI) -> dict[tuple[str, str], tuple[type[OmniragError], ...]]:
    """(path, method) → the errors its handler and its dependencies declare with :func:`raises`."""
    declared: dict[tuple[str, str], tuple[type[OmniragError], ...]] = {}
    # Route contexts, as FastAPI's own OpenAPI walks them: an included router's routes with the
    # prefix and the dependencies of every include on the way.
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.path_format is not None:
            dependant = route.dependant or route.original_route.dependant
            errors = tuple(_raised_by(dependant))
            for method in route.methods or ():
                declared[(route.path_format, method.lower())] = errors
    return declared


def operation_errors(operation: Mapping[str, Any]) -> list[type[OmniragError]]:
    """The errors any operation can answer, by what it takes: a 500 always; 422 when it has
    parameters or a body; 400 (a body that does not parse) and 413 (the body limit) with a body."""
    errors: list[type[OmniragError]] = [OmniragError]
    if operation.get("parameters") or operation.get("requestBody"):
        errors.append(InvalidInput)
    if operation.get("requestBody"):
        errors += [BadRequest, PayloadTooLarge]
    return errors


def document_errors(
    app: FastAPI,
    *,
    every_route: Sequence[type[OmniragError]] = (),
    except_paths: Iterable[str] = (),
) -> None:
    """Make the OpenAPI document list, on every operation, the errors it can answer, each with the
    status the table gives it and the house error body: those any operation can answer
    (:func:`operation_errors`), ``every_route`` (e.g. the service token's 401; not on
    ``except_paths``), and those its handler and dependencies declare with :func:`raises`. Any
    other error status is ``default``, with the same body.

    FastAPI documents a 422 of its own shape (``{"detail": [...]}``), which these services never
    send, and no other error status at all: a client generated from the schema, or a schema-driven
    test (tests/api), would call every real error undocumented. A response a route declares itself
    is kept (``/readyz``'s 503 is its report, not an error), except FastAPI's own 422.
    """
    build = app.openapi
    exempt = frozenset(except_paths)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        declared = declared_errors(app)
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                if method not in _METHODS:
                    continue
                errors = operation_errors(operation) + list(declared.get((path, method), ()))
                if path not in exempt:
                    errors += every_route
                responses = operation.setdefault("responses", {})
                for status, response in error_responses(errors).items():
                    if status == "422" or status not in responses:
                        responses[status] = response
                responses.setdefault(
                    "default",
                    {"description": "An error, as JSON with a stable code", "content": _error_content()},
                )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
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
