"""The local stack's chores around ``honcho``.

``python scripts/local_stack.py env``: make sure ``.env`` (git-ignored) holds a development API key
for the gateway, the UI's local login password and the key that signs its login cookie, creating
random ones the first time, so ``make run`` never ships a fixed secret. The gateway gives its
development key ``act_for_users``: the UI names the logged-in user with it. It also lists the local
llama.cpp model as the gateway's one chat model (``GATEWAY_MODELS``, ``GATEWAY_DEFAULT_MODEL``), the
same list a cluster gives it for its vLLM models: add an entry there to serve another model beside it.

``python scripts/local_stack.py wait``: a Procfile process that waits until every service answers
ready, prints the URLs, the key and the UI's one-click login link once, then stays up (honcho stops
the whole stack when any of its processes exits).

``python scripts/local_stack.py redis``: the Procfile's Redis (it becomes redis-server), on the port
of the gateway's default ``redis_url``, keeping an append-only file in ``data/redis``.
``python scripts/local_stack.py url NAME``: the local address of a service (or ``redis``).

Every address is a default of the services' settings (omnirag_harness.processes reads them there).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import quote

from omnirag_harness.processes import SERVICES, http_get, local_redis_port, local_url, redis_argv

ENV_FILE = Path(".env")
KEY_VAR = "GATEWAY_DEV_KEY"
# The UI's local single-user mode: its password (also the token of the printed login link) and the
# key of its login cookie, kept so that a restart of make run does not log the browser out.
PASSWORD_VAR = "UI_LOCAL_PASSWORD"  # noqa: S105 - the variable's name, not a password
SESSION_VAR = "UI_SESSION_SECRET"
UI_URL = local_url("ui")
LOCAL_MODEL = "smollm2-135m-instruct"
# The llama.cpp server of the Procfile: text and tools (its chat template handles tool calls). Its
# window is the server's n_ctx (LLM_CTX, 4096). SmolLM2-135M at temperature 0 often loops until its
# cap: answers get 128 tokens (384 for how / why / list questions) instead of the gateway's 256, and
# a repeat penalty over the server's default 1.1 (measured here: it ends a run-on English answer
# after ~90 tokens instead of 400; a Chinese loop longer than its 64-token window still runs to the
# cap, which is what the cap is for).
LOCAL_MODELS = [
    {
        "name": LOCAL_MODEL,
        "base_url": local_url("llm"),
        "capabilities": ["text", "tools"],
        "context_tokens": 4096,
        "answer_tokens": 128,
        "sampling": {"repeat_penalty": 1.3},
        # Its Chinese answers never pass the grounding check (measured by make eval-answers): in auto
        # mode a Chinese question gets the extractive answer at once instead of a minute of generation.
        "languages": ["en"],
    }
]
# What earlier versions wrote: replaced by LOCAL_MODELS when .env still holds it unchanged.
OLD_LOCAL_MODELS = [
    [{"name": LOCAL_MODEL, "base_url": local_url("llm"), "capabilities": ["text", "tools"]}],
    [{k: v for k, v in LOCAL_MODELS[0].items() if k != "languages"}],
]

# What `wait` waits for, in the order it reports them.
WAITED = ["embedder", "retriever", "llm", "gateway", "ui"]


def read_key(var: str = KEY_VAR) -> str | None:
    if not ENV_FILE.exists():
        return None
    for line in ENV_FILE.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("=")
        if name.strip() == var and value.strip():
            return value.strip().strip('"')
    return None


def _upgrade(var: str, old: list[str], value: str, *, quote: bool = False) -> None:
    """Replace ``var``'s line in ``.env`` by ``value`` when it still holds one of the ``old``
    defaults as written (JSON compared parsed); a value the user changed is left alone."""
    current = read_key(var)
    if current is None:
        return
    try:
        parsed = json.loads(current.strip("'"))
    except ValueError:
        return
    if not any(parsed == json.loads(o) for o in old):
        return
    written = f"'{value}'" if quote else value
    lines = ENV_FILE.read_text(encoding="utf-8").splitlines()
    out = [f"{var}={written}" if line.partition("=")[0].strip() == var else line for line in lines]
    ENV_FILE.write_text("\n".join(out) + "\n", encoding="utf-8")


def _ensure(var: str, value: str, comment: str, *, quote: bool = False) -> str:
    current = read_key(var)
    if current is None:
        current = value
        # Single quotes keep a JSON value (its double quotes and spaces) whole for both readers of
        # the file: honcho, which exports it to the processes, and pydantic-settings (python-dotenv).
        written = f"'{value}'" if quote else value
        with ENV_FILE.open("a", encoding="utf-8") as fh:
            fh.write(f"# {comment}\n{var}={written}\n")
        ENV_FILE.chmod(0o600)
    return current


def ensure_env() -> str:
    key = _ensure(
        KEY_VAR,
        "omni-dev-" + secrets.token_urlsafe(24),
        "Development API key for the local gateway (make run); not for production.",
    )
    _ensure(
        PASSWORD_VAR,
        secrets.token_urlsafe(18),
        "Password of the UI's local single-user login (make run prints a login link with it).",
    )
    _ensure(SESSION_VAR, secrets.token_urlsafe(32), "Key that signs the UI's login cookie.")
    # The entry of an earlier make run gains the bounds above.
    old = [json.dumps(m) for m in OLD_LOCAL_MODELS]
    _upgrade("GATEWAY_MODELS", old, json.dumps(LOCAL_MODELS), quote=True)
    _ensure(
        "GATEWAY_MODELS",
        json.dumps(LOCAL_MODELS),
        "The gateway's chat models (config/.env.example): the local llama.cpp server.",
        quote=True,
    )
    _ensure("GATEWAY_DEFAULT_MODEL", LOCAL_MODEL, "Model answering requests that name none.")
    # SmolLM2-135M states things its sources do not say: its answers are checked and, when they fail,
    # replaced by the sources' best sentence (GATEWAY_ANSWER_MODE in config/.env.example).
    _ensure("GATEWAY_ANSWER_MODE", "auto", "RAG answers: the model's if checked, else a quote.")
    return key


def login_link() -> str:
    password = read_key(PASSWORD_VAR)
    if password is None:
        return f"{UI_URL}  (no {PASSWORD_VAR} in .env: the UI has no login on loopback)"
    return f"{UI_URL}/auth/local?token={quote(password, safe='')}"


def ready(name: str) -> bool:
    try:
        return http_get(SERVICES[name].ready_url(), timeout=2)[0] == 200
    except OSError:
        return False


def wait(timeout: float) -> int:
    key = read_key() or "(none: set GATEWAY_DEV_KEY in .env)"
    deadline = time.monotonic() + timeout
    waiting = list(WAITED)
    last_report = 0.0
    while waiting and time.monotonic() < deadline:
        waiting = [name for name in WAITED if not ready(name)]
        if waiting and time.monotonic() - last_report > 15:
            print(f"waiting for: {', '.join(waiting)}", flush=True)
            last_report = time.monotonic()
        if waiting:
            time.sleep(3)  # each poll is a logged 503 in the services that are not ready yet
    gateway = local_url("gateway")
    if waiting:
        print(f"not ready after {timeout:.0f}s: {', '.join(waiting)} (see their lines above)", flush=True)
    else:
        print(
            "\n".join(
                [
                    "",
                    "omnirag is ready:",
                    f"  ui        {UI_URL:<26} (the chat, in a browser; it uses the key below)",
                    f"  log in    {login_link()}",
                    f"            (or the password {PASSWORD_VAR} in .env)",
                    f"  gateway   {gateway + '/v1':<26} (OpenAI-compatible; docs at /docs)",
                    f"  embedder  {local_url('embedder'):<26} retriever {local_url('retriever')}",
                    f"  llm       {local_url('llm'):<26} (SmolLM2-135M, a demo model: see GATEWAY_MODELS)",
                    f"  redis     {local_url('redis').removesuffix('/0')}",
                    f"  API key   {key}",
                    "try:",
                    f"  curl -s {gateway}/v1/chat/completions -H 'Authorization: Bearer "
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


def redis() -> None:
    """Become the stack's redis-server: honcho's signals reach it directly."""
    argv = redis_argv(local_redis_port(), "data/redis", appendonly=True)
    os.execv(argv[0], argv)  # noqa: S606 - redis-server from PATH, fixed arguments


def main(argv: list[str]) -> int:
    if argv[:1] == ["env"]:
        ensure_env()
        return 0
    if argv[:1] == ["wait"]:
        return wait(float(argv[1]) if len(argv) > 1 else 600.0)
    if argv[:1] == ["redis"]:
        redis()
    if argv[:1] == ["url"] and len(argv) == 2 and (argv[1] in SERVICES or argv[1] == "redis"):
        print(local_url(argv[1]))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
