"""Structured logging with a request id that follows a request across services.

The id lives in a context variable: the HTTP middleware sets it from ``X-Request-ID`` (or makes
one), every log record written while serving carries it, and :class:`ServiceClient` sends it on to
the next service, so one grep finds a request's whole path.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

import orjson

REQUEST_ID_HEADER = "X-Request-ID"
request_id_var: ContextVar[str | None] = ContextVar("omnirag_request_id", default=None)

# Accept a caller's id only if it is short and plain, so it cannot forge log lines or headers.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_SKIP = {"color_message"}  # uvicorn duplicates its message with ANSI colours here


_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """Unique per process (random prefix) and per request (counter): 32 hex characters without a
    random-number syscall on every request, which costs tens of microseconds on some VMs."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def accept_request_id(value: str | None) -> str:
    if value and _SAFE_ID.match(value):
        return value
    return new_request_id()


class JSONFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and key not in _SKIP and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + service + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id_var.get()
        extras = {
            k: v
            for k, v in record.__dict__.items()
            if k not in _STD_ATTRS and k not in _SKIP and not k.startswith("_")
        }
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line + (f" [rid={rid}]" if rid else "")


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Route every logger (uvicorn's included) through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(service) if json else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our middleware logs requests with their id; uvicorn's access log would say it twice.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "bm25s", "jieba", "RapidOCR"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
