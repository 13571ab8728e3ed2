"""Readiness: a table of named checks that ``/readyz`` reports whole.

A service sets static checks as its parts come up (``model: loading`` → ``ok``) and may add probes
that run on every ``/readyz`` call (a dependency's health). ``/readyz`` answers 503 until every check
is ok, with a body that says which one is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Probe = Callable[[], Awaitable[tuple[bool, str]]]


class Readiness:
    def __init__(self) -> None:
        self._checks: dict[str, tuple[bool, str]] = {}
        self._probes: dict[str, Probe] = {}

    def set(self, name: str, ok: bool, detail: str = "ok") -> None:
        self._checks[name] = (ok, detail if not ok or detail else "ok")

    def add_probe(self, name: str, probe: Probe) -> None:
        self._probes[name] = probe

    def is_ok(self, name: str) -> bool:
        return self._checks.get(name, (False, ""))[0]

    async def report(self, probe_seconds: float = 2.0) -> tuple[bool, dict[str, Any]]:
        checks = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in self._checks.items()}
        for name, probe in self._probes.items():
            try:
                ok, detail = await asyncio.wait_for(probe(), probe_seconds)
            except Exception as exc:  # a probe that fails is a check that is not ok
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            checks[name] = {"ok": ok, "detail": detail}
        ready = bool(checks) and all(c["ok"] for c in checks.values())
        return ready, {"status": "ready" if ready else "not_ready", "checks": checks}
