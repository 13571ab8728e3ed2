"""The gateway's application state: the parts every route uses, made once in the lifespan
(``omnirag.gateway.app``) and reached through ``Depends`` (``omnirag.gateway.deps.Gateway``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from langchain_openai import ChatOpenAI
from redis.asyncio import Redis

from omnirag.core.clients.embedder import EmbedderClient
from omnirag.extract import OCR
from omnirag.gateway.auth import KeyStore, RateLimiter
from omnirag.gateway.chat.handler import ChatHandler
from omnirag.gateway.config import GatewaySettings
from omnirag.gateway.llm import PassThrough
from omnirag.gateway.memory import History
from omnirag.gateway.metrics import GatewayMetrics
from omnirag.gateway.registry import ModelRegistry, ModelSpec
from omnirag.gateway.tokens import TokenCounter


@dataclass
class GatewayState:
    """What ``app.state.gateway`` holds."""

    settings: GatewaySettings
    metrics: GatewayMetrics
    keys: KeyStore
    redis: Redis
    history: History
    limiter: RateLimiter
    # The embedder's and the retriever's client: the service token, a circuit breaker each.
    http: httpx.AsyncClient
    # The LLMs' client for LangChain (see llm.py).
    llm_http: httpx.AsyncClient
    registry: ModelRegistry
    # One LangChain chat model and one pass-through client per registry entry, by name.
    chat_models: dict[str, ChatOpenAI]
    passthroughs: dict[str, PassThrough]
    ocr: OCR
    # Borrows ``http``: its calls go through the embedder's circuit breaker with the service token.
    embedder: EmbedderClient
    # Each model's token counter (its server's tokenizer), made on first use.
    counters: dict[str, TokenCounter] = field(default_factory=dict)
    # Made from the parts above, with them.
    chat: ChatHandler = field(init=False)

    def __post_init__(self) -> None:
        self.chat = ChatHandler(self)

    def chat_model_for(self, spec: ModelSpec) -> ChatOpenAI:
        return self.chat_models[spec.name]

    def passthrough_for(self, spec: ModelSpec) -> PassThrough:
        return self.passthroughs[spec.name]

    def counter_for(self, spec: ModelSpec) -> TokenCounter:
        counter = self.counters.get(spec.name)
        if counter is None:
            counter = self.counters[spec.name] = TokenCounter(spec, self.llm_http)
        return counter
