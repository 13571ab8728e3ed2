"""The local stack's two chores around ``honcho``.

``python scripts/local_stack.py env``: make sure ``.env`` (git-ignored) holds a development API key
for the gateway, creating a random one the first time, so ``make run`` never ships a fixed secret.

``python scripts/local_stack.py wait``: a Procfile process that waits until every service answers
ready, prints the URLs and the key once, then stays up (honcho stops the whole stack when any of
its processes exits).
"""

from __future__ import annotations

import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ENV_FILE = Path(".env")
KEY_VAR = "GATEWAY_DEV_KEY"

SERVICES = [
    ("embedder", "http://127.0.0.1:8001/readyz"),
    ("retriever", "http://127.0.0.1:8002/readyz"),
    ("llm", "http://127.0.0.1:6006/v1/models"),
    ("gateway", "http://127.0.0.1:8000/readyz"),
    ("ui", "http://127.0.0.1:7860/readyz"),
]


def read_key() -> str | None:
    if not ENV_FILE.exists():
        return None
    for line in ENV_FILE.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("=")
        if name.strip() == KEY_VAR and value.strip():
            return value.strip().strip('"')
    return None


def ensure_env() -> str:
    key = read_key()
    if key is None:
        key = "omni-dev-" + secrets.token_urlsafe(24)
        with ENV_FILE.open("a", encoding="utf-8") as fh:
            fh.write(
                "# Development API key for the local gateway (make run); not for production.\n"
                f"{KEY_VAR}={key}\n"
            )
        ENV_FILE.chmod(0o600)
    return key


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - fixed loopback URLs
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait(timeout: float) -> int:
    key = read_key() or "(none: set GATEWAY_DEV_KEY in .env)"
    deadline = time.monotonic() + timeout
    waiting = [name for name, _ in SERVICES]
    last_report = 0.0
    while waiting and time.monotonic() < deadline:
        waiting = [name for name, url in SERVICES if not ready(url)]
        if waiting and time.monotonic() - last_report > 15:
            print(f"waiting for: {', '.join(waiting)}", flush=True)
            last_report = time.monotonic()
        if waiting:
            time.sleep(3)  # each poll is a logged 503 in the services that are not ready yet
    if waiting:
        print(f"not ready after {timeout:.0f}s: {', '.join(waiting)} (see their lines above)", flush=True)
    else:
        print(
            "\n".join(
                [
                    "",
                    "omnirag is ready:",
                    "  ui        http://127.0.0.1:7860      (the chat, in a browser; it uses the key below)",
                    "  gateway   http://127.0.0.1:8000/v1   (OpenAI-compatible; docs at /docs)",
                    "  embedder  http://127.0.0.1:8001      retriever http://127.0.0.1:8002",
                    "  llm       http://127.0.0.1:6006/v1   (SmolLM2-135M, a demo model: see GATEWAY_LLM_*)",
                    "  redis     redis://127.0.0.1:6379",
                    f"  API key   {key}",
                    "try:",
                    "  curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Authorization: Bearer "
                    + key
                    + "' -H 'Content-Type: application/json' "
                    '-d \'{"messages":[{"role":"user","content":"Which port does the gateway use?"}]}\'',
                    "",
                ]
            ),
            flush=True,
        )
    while True:  # honcho ends the stack when a process exits; this one just stays
        time.sleep(3600)


def main(argv: list[str]) -> int:
    if argv[:1] == ["env"]:
        ensure_env()
        return 0
    if argv[:1] == ["wait"]:
        return wait(float(argv[1]) if len(argv) > 1 else 600.0)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
