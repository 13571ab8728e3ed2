"""Token counts of prompt text as a model's own server counts them, for the answer prompt's budget.

A context window is measured in the model's tokens, and characters are a poor proxy: SmolLM2 reads
English at about 3.6 characters a token, Chinese at about 0.65 (1.5 tokens a character) and digits
at one token each. So the gateway asks the server that runs the model, which serves its tokenizer:

- llama.cpp's server: ``POST {root}/tokenize`` ``{"content": text}`` → ``{"tokens": [...]}``;
- vLLM: ``POST {root}/tokenize`` ``{"model", "prompt"}`` → ``{"count", "tokens", "max_model_len"}``
  (the window too, used when the model's entry gives none);
- llama-cpp-python's server (``make run``'s local LLM): ``POST {root}/extras/tokenize/count``
  ``{"input"}`` → ``{"count"}``.

``{root}`` is the base URL without its ``/v1``. Which one a server speaks is found on the first count
and remembered. Counts are cached (a source retrieved again costs nothing), a prompt's texts are
counted concurrently, and a server that has none of them (a hosted API) gets ``estimate``: an
upper bound from the characters, so a prompt budgeted with it still fits. A server that fails is
asked again only after ``RETRY_SECONDS``; meanwhile, estimates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import httpx

from omnirag.gateway.registry import ModelSpec

log = logging.getLogger("omnirag.gateway.tokens")

Dialect = Literal["llama.cpp", "vllm", "llama-cpp-python", "none"]
CACHE_SIZE = 4096
RETRY_SECONDS = 300.0
TIMEOUT_SECONDS = 5.0
# A text longer than this is estimated, not sent: a prompt's parts are bounded well below it.
MAX_COUNTED_CHARS = 200_000


def estimate(text: str) -> int:
    """Tokens of ``text`` at most, as far as the tokenizers measured here go (SmolLM2's, and the
    Llama / Qwen / DeepSeek BPEs): a letter of a word 0.4 (English words run 3.5-4.5 characters a
    token, rare ones fewer), a digit, a punctuation mark or any letter of a word with digits in it
    (hashes, versions) 1, a whitespace run 1, any other character 2 (Han characters take 0.7-1.9).
    Used only where the server cannot count: it overestimates English about twofold and Chinese by
    a fifth, so the sources get less room, never too much."""
    total = 0.0
    for run in _RUNS.findall(text):
        if run[0].isspace():
            total += 1
        elif run.isascii() and run.isalpha():
            total += len(run) * 0.4
        elif run.isascii():
            total += len(run)  # digits, punctuation, letters mixed with digits: a token a character
        else:
            total += 2 * len(run)
    return math.ceil(total)


# Whitespace runs, ASCII letter-and-digit runs, single ASCII punctuation, runs of anything else.
_RUNS = re.compile(r"\s+|[A-Za-z0-9]+|[\x21-\x7e]|[^\x00-\x7f\s]+")


def server_root(base_url: str) -> str:
    """The server's root: the OpenAI base URL without its trailing ``/v1``."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class TokenCounter:
    """Counts tokens for one model with its server's tokenizer (see the module doc). One per model."""

    def __init__(self, spec: ModelSpec, client: httpx.AsyncClient, *, cache_size: int = CACHE_SIZE) -> None:
        self.client = client
        self.root = server_root(spec.base_url)
        self.model = spec.served
        self.headers = {"Authorization": f"Bearer {spec.api_key.get_secret_value()}"}
        self.dialect: Dialect | None = None  # None: not asked yet
        self.window: int | None = None  # the context window the server reported (vLLM)
        self._retry_at = 0.0
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._cache_size = cache_size
        self._probe = asyncio.Lock()

    async def count(self, text: str) -> int:
        """Tokens of ``text`` (no special tokens added by a template); an estimate when the server
        cannot say."""
        if not text:
            return 0
        if len(text) > MAX_COUNTED_CHARS:
            return estimate(text)
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        counted = await self._ask(text)
        if counted is None:
            return estimate(text)
        self._cache[key] = counted
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return counted

    async def count_many(self, texts: Sequence[str]) -> list[int]:
        """Each text's count, asked concurrently."""
        if self.dialect is None and texts:
            # The first count finds the server's dialect; the rest then ask it directly.
            first = await self.count(texts[0])
            return [first, *await asyncio.gather(*(self.count(t) for t in texts[1:]))]
        return list(await asyncio.gather(*(self.count(t) for t in texts)))

    @property
    def exact(self) -> bool:
        """Whether counts come from the server's tokenizer (not estimates)."""
        return self.dialect not in (None, "none")

    async def _ask(self, text: str) -> int | None:
        if self.dialect is None or (self.dialect == "none" and time.monotonic() >= self._retry_at):
            async with self._probe:
                if self.dialect is None or (self.dialect == "none" and time.monotonic() >= self._retry_at):
                    return await self._find_dialect(text)
        if self.dialect in (None, "none"):
            return None
        try:
            return await self._call(self.dialect, text)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            # Down for now (or no longer speaking it): estimates until it is asked again.
            log.info("token count failed; estimating", extra={"error": f"{type(exc).__name__}: {exc}"})
            self.dialect = "none"
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return None

    async def _find_dialect(self, text: str) -> int | None:
        for dialect in ("llama.cpp", "vllm", "llama-cpp-python"):
            try:
                n = await self._call(dialect, text)
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
            self.dialect = dialect
            log.info("counting tokens with the server's tokenizer", extra={"dialect": dialect})
            return n
        self.dialect = "none"
        self._retry_at = time.monotonic() + RETRY_SECONDS
        log.info("the LLM server counts no tokens; estimating from characters", extra={"root": self.root})
        return None

    async def _call(self, dialect: Dialect, text: str) -> int:
        """One count in ``dialect``; raises when the server does not answer in that shape."""
        path, body = {
            "llama.cpp": ("/tokenize", {"content": text}),
            "vllm": ("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False}),
            "llama-cpp-python": ("/extras/tokenize/count", {"input": text, "model": self.model}),
        }[dialect]
        r = await self.client.post(self.root + path, json=body, headers=self.headers, timeout=TIMEOUT_SECONDS)
        r.raise_for_status()
        data: Any = r.json()
        if dialect == "llama.cpp":
            # vLLM also answers {"content"} bodies on /tokenize with a 400; a 200 without "count" and
            # with a list of tokens is llama.cpp's (which answers [] to a body without "content").
            tokens = data["tokens"]
            if "count" in data or not isinstance(tokens, list) or (text.strip() and not tokens):
                raise ValueError("not llama.cpp's /tokenize")
            return len(data["tokens"])
        count = int(data["count"])
        if dialect == "vllm" and isinstance(data.get("max_model_len"), int) and data["max_model_len"] > 0:
            self.window = int(data["max_model_len"])
        return count
