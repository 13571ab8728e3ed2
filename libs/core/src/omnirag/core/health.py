"""Readiness: a table of named checks that ``/readyz`` reports whole.

A service sets static checks as its parts come up (``model: loading`` → ``ok``) and may add probes
that run on every ``/readyz`` call (a dependency's health). ``/readyz`` answers 503 until every check
is ok, with a body that says which one is not.

``/readyz`` is public (the kubelet, a load balancer, anyone who reaches the port), so each check has
two texts: ``detail``, a short state for anyone ("loading", "down; answers are degraded"), and
``info``, what an operator needs (URLs, paths, exception text), which goes only to the log (when a
check changes) and to an authenticated admin view (``report(private=True)``). As a safety net, URLs
and absolute paths that reach ``detail`` anyway are masked there and kept in ``info``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

log = logging.getLogger("omnirag.health")


class Check(NamedTuple):
    """A check's outcome: ``detail`` is public, ``info`` (optional) only for operators."""

    ok: bool
    detail: str = "ok"
    info: str | None = None


Probe = Callable[[], Awaitable[tuple[bool, str] | Check]]

# A scheme://… URL, or an absolute path that starts a word (not the "/" of "rpm/tpm" or "1/2").
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()]+")
_PATH = re.compile(r"(?<![\w./~-])/[^\s'\"<>()/:]+(?:/[^\s'\"<>():]*)*")


def public_detail(text: str) -> str:
    """``text`` with URLs and absolute paths masked: what a public answer may show of it."""
    return _PATH.sub("<path>", _URL.sub("<url>", text))


class Readiness:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._probes: dict[str, Probe] = {}
        self._logged: dict[str, Check] = {}

    def set(self, name: str, ok: bool, detail: str = "ok", *, info: str | None = None) -> None:
        self._checks[name] = Check(ok, detail if not ok or detail else "ok", info)

    def add_probe(self, name: str, probe: Probe) -> None:
        self._probes[name] = probe

    def is_ok(self, name: str) -> bool:
        return self._checks.get(name, Check(False, ""))[0]

    async def _run(self, probe: Probe, seconds: float) -> Check:
        try:
            result = await asyncio.wait_for(probe(), seconds)
        except TimeoutError:
            return Check(False, "check timed out", f"no answer within {seconds:g}s")
        except Exception as exc:  # a probe that fails is a check that is not ok
            return Check(False, "check failed", f"{type(exc).__name__}: {exc}")
        if isinstance(result, Check):
            return result
        ok, detail = result
        return Check(ok, detail)

    def _log_change(self, name: str, check: Check) -> None:
        # Logged on change only: the kubelet asks every few seconds, and a steady state needs one line.
        if self._logged.get(name) == check:
            return
        first = name not in self._logged
        self._logged[name] = check
        if first and check.ok and check.info is None:
            return
        log.log(
            logging.INFO if check.ok else logging.WARNING,
            "readiness check %s: %s",
            name,
            "ok" if check.ok else "not ok",
            extra={"check": name, "detail": check.detail, "info": check.info},
        )

    async def report(
        self, probe_seconds: float = 2.0, *, private: bool = False
    ) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)``. The body holds each check's ``ok`` and public ``detail``; ``private``
        adds ``info`` (internal URLs, paths, errors): only for an authenticated admin view."""
        results = dict(self._checks)
        for name, probe in self._probes.items():
            results[name] = await self._run(probe, probe_seconds)
        checks: dict[str, dict[str, Any]] = {}
        for name, check in results.items():
            shown = public_detail(check.detail)
            info = check.info
            if shown != check.detail and info is None:
                info = check.detail
            check = Check(check.ok, shown, info)
            self._log_change(name, check)
            checks[name] = {"ok": check.ok, "detail": check.detail}
            if private:
                checks[name]["info"] = check.info
        ready = bool(checks) and all(c["ok"] for c in checks.values())
        return ready, {"status": "ready" if ready else "not_ready", "checks": checks}
