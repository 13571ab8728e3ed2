"""The chat models behind the gateway, and which one answers a request.

``GATEWAY_MODELS`` (JSON) or ``GATEWAY_MODELS_FILE`` (YAML or JSON, a mounted ConfigMap in a
cluster) lists them: a name clients ask for, an OpenAI-compatible base URL, the name sent upstream,
a key, and what each model takes (text, vision, audio, video, tools, reasoning). Without either, one
entry is made from the ``GATEWAY_LLM_*`` settings, so a single-model setup needs no list.

A request's ``model`` picks an entry; an unknown name, or one the key may not use, is the same 404
``model_not_found`` (a key cannot probe which models exist). ``model: "omnirag"`` (unless an entry
has that name) means "the gateway chooses", as an omitted ``model`` does: OpenAI clients must send
a model, and the gateway's own name is what its clients have sent since before there were several.
With ``model`` omitted the default
answers if it takes the message's parts (images, audio, video), else the first allowed model that
does. A chosen model that cannot see gets its images read by OCR; one that cannot hear or watch
refuses audio or video with 400 ``unsupported_content``, naming the models that take it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from omnirag.core.errors import BadRequest, NotFound
from omnirag.core.files import TooLarge, read_capped

if TYPE_CHECKING:
    from omnirag.gateway.auth import ApiKey
    from omnirag.gateway.config import GatewaySettings

Capability = Literal["text", "vision", "audio", "video", "tools", "reasoning"]
CAPABILITIES: tuple[Capability, ...] = ("text", "vision", "audio", "video", "tools", "reasoning")
# The content part types that need a capability beyond text.
PART_CAPABILITY: dict[str, Capability] = {"image_url": "vision", "input_audio": "audio", "video_url": "video"}
# What the client reads in a refusal: "audio", not "input_audio".
PART_NOUN = {"image_url": "images", "input_audio": "audio", "video_url": "video"}
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
# The name that lets the gateway choose (see the module doc).
AUTO_MODEL = "omnirag"
MAX_MODELS = 64
# Body fields the gateway itself sets on an answer call: a model's ``sampling`` may not replace them.
SAMPLING_RESERVED = frozenset(
    (
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "temperature",
        "tools",
        "tool_choice",
        "chat_template_kwargs",
    )
)
# A models file or an API key file is small; a mount of the wrong thing must not be read whole.
MAX_FILE_BYTES = 256 * 1024


class ModelNotFound(NotFound):
    """404 in OpenAI's words: ``param`` says which field named the missing model."""

    code = "model_not_found"
    type = "invalid_request_error"
    param = "model"


class ModelSpec(BaseModel):
    """One served model (an entry of ``GATEWAY_MODELS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=MODEL_NAME, description="What clients ask for in 'model'.")
    base_url: str = Field(min_length=1, max_length=2048, description="OpenAI-compatible base URL (…/v1).")
    upstream_model: str | None = Field(
        None, min_length=1, max_length=256, description="Name sent upstream (vLLM's --served-model-name)."
    )
    api_key: SecretStr = Field(SecretStr("not-needed"), description="Key sent upstream.")
    api_key_file: Path | None = Field(None, description="File holding the key (a mounted secret).")
    capabilities: tuple[Capability, ...] = Field(("text",), min_length=1)
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    thinking_off: dict[str, Any] | None = Field(
        None, description="chat_template_kwargs that turn thinking off; null: it cannot be turned off."
    )
    reasoning_budget: int = Field(
        1024,
        ge=0,
        le=65536,
        description="Extra tokens a call gets when thinking cannot be turned off, so an answer still "
        "follows the reasoning.",
    )
    answer_tokens: int | None = Field(
        None,
        ge=16,
        le=65536,
        description="Cap of an answer to a question asking for a fact (explanations, steps and lists get "
        "GATEWAY_ANSWER_OPEN_FACTOR times it); null: GATEWAY_ANSWER_TOKENS. A small model that rambles "
        "wants it low.",
    )
    context_tokens: int | None = Field(
        None,
        ge=256,
        le=10_000_000,
        description="The model's context window in tokens (vLLM's --max-model-len, llama.cpp's n_ctx): the "
        "prompt's sources get what the answer's cap and the rest of the prompt leave of it. Null: what "
        "the server reports (vLLM's /tokenize), else GATEWAY_CONTEXT_TOKENS.",
    )
    sampling: dict[str, Any] | None = Field(
        None,
        max_length=32,
        description="Extra body of every answer call, in the server's own words: llama.cpp's "
        "repeat_penalty, vLLM's repetition_penalty, top_p... (the rewrite does not get it: it must "
        "repeat the conversation's words).",
    )

    languages: tuple[Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")], ...] | None = Field(
        None,
        max_length=64,
        description="Languages the model answers well, as ISO 639-1 codes ('en', 'zh'); null: any. In "
        "auto mode a question in another language gets the extractive answer at once, without a "
        "generation that would fail its check (a small English model asked in Chinese).",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"model {self.name!r}: base_url must be an http(s) URL")
        if self.name == AUTO_MODEL:  # it means "the gateway chooses": a model of that name is unreachable
            raise ValueError(
                f"model name {AUTO_MODEL!r} is reserved (a request naming it lets the gateway choose)"
            )
        if len(set(self.capabilities)) != len(self.capabilities):
            raise ValueError(f"model {self.name!r}: capabilities are listed twice")
        reserved = sorted(set(self.sampling or ()) & SAMPLING_RESERVED)
        if reserved:
            raise ValueError(
                f"model {self.name!r}: sampling may not set {', '.join(reserved)} (the gateway does)"
            )
        return self

    def answers_in(self, lang: str) -> bool:
        """Whether the model answers questions in ``lang`` well (``languages`` null: any)."""
        return self.languages is None or lang in self.languages

    @property
    def served(self) -> str:
        """The model name the upstream knows."""
        return self.upstream_model or self.name

    @property
    def reasoning(self) -> bool:
        return "reasoning" in self.capabilities

    def takes(self, part: str) -> bool:
        """Whether the model takes a content part type (``image_url``…) or a capability (``vision``…).
        Text (and refusal) parts every model takes."""
        capability = PART_CAPABILITY.get(part, part)
        if capability in ("text", "refusal"):
            return True
        return capability in self.capabilities

    def public(self, default: bool) -> dict[str, Any]:
        return {"capabilities": list(self.capabilities), "default": default}


def _read(path: Path, what: str) -> str:
    try:
        return read_capped(path, MAX_FILE_BYTES).decode("utf-8")
    except TooLarge:
        raise ValueError(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path}: cannot read it ({type(exc).__name__})") from None


def _entries(data: Any, where: str) -> list[Any]:
    if isinstance(data, dict) and "models" in data:
        data = data["models"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: expected a non-empty list of models")
    if len(data) > MAX_MODELS:
        raise ValueError(f"{where}: {len(data)} models; at most {MAX_MODELS}")
    return data


class ModelRegistry:
    """The served models, their default and the rewrite's model. Built once at start-up."""

    def __init__(
        self, models: Iterable[ModelSpec], default: str | None = None, rewrite: str | None = None
    ) -> None:
        self.models = list(models)
        if not self.models:
            raise ValueError("no chat models configured")
        self._by_name = {m.name: m for m in self.models}
        if len(self._by_name) != len(self.models):
            raise ValueError("model names must be unique")
        for setting, name in (("GATEWAY_DEFAULT_MODEL", default), ("GATEWAY_REWRITE_MODEL", rewrite)):
            if name is not None and name not in self._by_name:
                raise ValueError(f"{setting}={name!r} is not one of the models ({', '.join(self._by_name)})")
        self.default = self._by_name[default] if default else self.models[0]
        self.rewrite = self._by_name[rewrite] if rewrite else self.default

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> ModelRegistry:
        raw: list[Any] | None = None
        if settings.models_file is not None:
            text = _read(settings.models_file, "GATEWAY_MODELS_FILE")
            try:
                loaded = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                # Where, not what: YAML's message quotes the line, which may hold an inline key.
                mark = getattr(exc, "problem_mark", None)
                at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                raise ValueError(f"GATEWAY_MODELS_FILE {settings.models_file} is not YAML{at}") from None
            raw = _entries(loaded, f"GATEWAY_MODELS_FILE {settings.models_file}")
        elif settings.models:
            try:
                parsed = json.loads(settings.models)
            except json.JSONDecodeError as exc:
                raise ValueError(f"GATEWAY_MODELS is not JSON: {exc.msg} at {exc.pos}") from None
            raw = _entries(parsed, "GATEWAY_MODELS")
        if raw is None:
            return cls([single(settings)], settings.default_model, settings.rewrite_model)
        specs = []
        for no, item in enumerate(raw, 1):
            try:
                spec = ModelSpec.model_validate(item)
            except ValidationError as exc:
                # Names the field, never a value (an inline api_key must not reach the log).
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err.get("loc", ()))
                raise ValueError(f"model entry {no}: {loc or 'entry'}: {err['msg']}") from None
            if spec.api_key_file is not None:
                key = _read(spec.api_key_file, f"model {spec.name!r} api_key_file").strip()
                spec = spec.model_copy(update={"api_key": SecretStr(key)})
            specs.append(spec)
        return cls(specs, settings.default_model, settings.rewrite_model)

    def get(self, name: str) -> ModelSpec:
        spec = self._by_name.get(name)
        if spec is None:
            raise _not_found(name)
        return spec

    def allowed(self, key: ApiKey) -> list[ModelSpec]:
        """The models the key may use, in the list's order."""
        return [m for m in self.models if key.may_use(m.name)]

    def choose(self, requested: str | None, parts: set[str], key: ApiKey) -> ModelSpec:
        """The model that answers: the one asked for, else one that takes ``parts`` (content part
        types such as ``image_url``, or capabilities such as ``vision``).

        Raises ModelNotFound (404) for an unknown or forbidden name, BadRequest
        ``unsupported_content`` (400) when the message has audio or video the model cannot take."""
        if requested == AUTO_MODEL:
            requested = None
        if requested is not None:
            spec = self.get(requested)
            if not key.may_use(spec.name):
                raise _not_found(requested)
        else:
            allowed = self.allowed(key)
            if not allowed:
                raise ModelNotFound("this API key may use none of the chat models")
            candidates = ([self.default] if self.default in allowed else []) + allowed
            # Images can still be read by OCR: failing a model that sees, one that takes the rest.
            unseen = {p for p in parts if PART_CAPABILITY.get(p, p) != "vision"}
            spec = next(
                (m for m in candidates if all(m.takes(p) for p in parts)),
                next((m for m in candidates if all(m.takes(p) for p in unseen)), candidates[0]),
            )
        self._check_parts(spec, parts, key)
        return spec

    def _check_parts(self, spec: ModelSpec, parts: set[str], key: ApiKey) -> None:
        for part, capability in PART_CAPABILITY.items():
            if capability == "vision" or not (part in parts or capability in parts) or spec.takes(part):
                continue
            takers = [m.name for m in self.allowed(key) if m.takes(part)]
            where = f"; models that take it: {', '.join(takers)}" if takers else "; no model here takes it"
            raise BadRequest(
                f"the model {spec.name!r} cannot take {PART_NOUN[part]} ({part} parts){where}",
                code="unsupported_content",
                details={"part": part, "models": takers},
            )

    def describe(self) -> list[dict[str, Any]]:
        """Each model for the log and the admin view: no keys, URLs without credentials."""
        from omnirag.gateway.api.admin import without_credentials

        return [
            {
                "name": m.name,
                "base_url": without_credentials(m.base_url),
                "upstream_model": m.served,
                "capabilities": list(m.capabilities),
                "default": m is self.default,
                "rewrite": m is self.rewrite,
            }
            for m in self.models
        ]


def _not_found(name: str) -> ModelNotFound:
    # One message for both: which models exist is not the key's to learn. The name is the
    # client's and unbounded: only its start is echoed.
    shown = name if len(name) <= 128 else name[:125] + "..."
    return ModelNotFound(f"the model {shown!r} does not exist or this API key may not use it")


def single(settings: GatewaySettings) -> ModelSpec:
    """The one model of the ``GATEWAY_LLM_*`` settings (no ``GATEWAY_MODELS`` given)."""
    capabilities: list[Capability] = ["text"]
    if settings.llm_vision:
        capabilities.append("vision")
    if settings.llm_audio:
        capabilities.append("audio")
    if settings.llm_tools:
        capabilities.append("tools")
    return ModelSpec(
        name=settings.llm_model,
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key,
        capabilities=tuple(capabilities),
        max_tokens_param=settings.llm_max_tokens_param,
    )


__all__ = [
    "AUTO_MODEL",
    "CAPABILITIES",
    "PART_CAPABILITY",
    "ModelNotFound",
    "ModelRegistry",
    "ModelSpec",
    "single",
]
