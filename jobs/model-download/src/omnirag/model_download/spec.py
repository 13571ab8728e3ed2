"""Which models to download: a YAML/JSON spec file, or one model from command-line flags.

```yaml
models:
  - name: llm                          # label in logs and --only; default: the repo id
    source: huggingface                # or modelscope (aliases: hf, ms)
    repo: Qwen/Qwen2.5-7B-Instruct
    revision: main                     # branch, tag or commit; default main (HF) / master (ModelScope)
    dir: Qwen2.5-7B-Instruct           # under MODEL_DOWNLOAD_ROOT (or absolute); default: the repo id
    allowPatterns: ["*.json", "*.safetensors", "tokenizer*"]
    ignorePatterns: ["original/*"]
    endpoint: https://hf-mirror.com    # default: MODEL_DOWNLOAD_HF_ENDPOINT / HF_ENDPOINT
```

Patterns are globs (``fnmatch``, ``*`` crosses ``/``), the same rules as ``snapshot_download``'s
``allow_patterns`` / ``ignore_patterns``. Every string is bounded and checked here, before any
network call, so a typo fails in a second with the field's path instead of after an hour.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from omnirag.core.files import TooLarge, read_capped
from omnirag.model_download.config import ModelDownloadSettings, check_endpoint
from omnirag.model_download.errors import InvalidRequest

Source = Literal["huggingface", "modelscope"]
DEFAULT_REVISION: dict[str, str] = {"huggingface": "main", "modelscope": "master"}
SOURCE_ALIASES = {
    "hf": "huggingface",
    "huggingface": "huggingface",
    "ms": "modelscope",
    "modelscope": "modelscope",
}

MAX_SPEC_BYTES = 1024 * 1024
MAX_MODELS = 32
MAX_PATTERNS = 64
MAX_PATTERN_CHARS = 256

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._\-]{0,95}"
_REPO = re.compile(rf"^(?:{_SEGMENT}/)?{_SEGMENT}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-]{0,127}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-]{0,254}$")


class ModelSpec(BaseModel):
    """One model as written in the spec (camelCase keys)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    name: str | None = Field(None, description="Label in logs, output and --only. Default: the repo id.")
    source: Source = Field("huggingface", description="huggingface (or hf) | modelscope (or ms).")
    repo: str = Field(description="Repository id, owner/name.")
    revision: str | None = Field(None, description="Branch, tag or commit. Default: main / master.")
    dir: str | None = Field(None, description="Destination, relative to the root or absolute.")
    allow_patterns: list[str] = Field(
        default_factory=list, description="Only files matching one of these globs."
    )
    ignore_patterns: list[str] = Field(default_factory=list, description="Skip files matching these globs.")
    endpoint: str | None = Field(None, description="This model's hub or mirror base URL.")

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in SOURCE_ALIASES:
            return SOURCE_ALIASES[value.strip().lower()]
        raise ValueError(f"{str(value)[:40]!r} is not a source: use huggingface (hf) or modelscope (ms)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and (not _NAME.match(value) or ".." in value):
            raise ValueError(f"{value[:80]!r} is not a name: letters, digits, . _ - /, at most 128")
        return value

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not _REPO.match(value) or ".." in value:
            raise ValueError(f"{value[:120]!r} is not a repo id like Qwen/Qwen2.5-7B-Instruct")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and (not _REVISION.match(value) or ".." in value or "//" in value):
            raise ValueError(f"{value[:80]!r} is not a branch, tag or commit name")
        return value

    @field_validator("dir")
    @classmethod
    def _dir(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or len(value) > 1024 or "\x00" in value:
            raise ValueError("must be a non-empty path of at most 1024 characters")
        parts = PurePosixPath(value).parts
        if any(p in (".", "..") for p in value.split("/")) or not parts:
            raise ValueError(f"{value[:80]!r}: no '.' or '..' parts (it must stay where it says)")
        return value

    @field_validator("allow_patterns", "ignore_patterns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_PATTERNS:
            raise ValueError(f"at most {MAX_PATTERNS} patterns")
        for p in value:
            if not p or len(p) > MAX_PATTERN_CHARS or not p.isprintable():
                raise ValueError(f"{p[:40]!r}: a pattern is 1-{MAX_PATTERN_CHARS} printable characters")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)

    @model_validator(mode="after")
    def _modelscope_ids(self) -> ModelSpec:
        if self.source == "modelscope" and "/" not in self.repo:
            raise ValueError(f"repo: ModelScope ids are owner/name, got {self.repo!r}")
        return self


class SpecFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(min_length=1, max_length=MAX_MODELS)


@dataclass(frozen=True)
class ModelRequest:
    """One model with every default applied: what the job downloads and the marker records."""

    name: str
    source: str
    repo: str
    revision: str
    dest: Path
    endpoint: str
    allow_patterns: tuple[str, ...]
    ignore_patterns: tuple[str, ...]


def _describe(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ""
        for p in err.get("loc", ()):
            loc += f"[{p}]" if isinstance(p, int) else f".{p}"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            allowed = ", ".join(f.alias or n for n, f in ModelSpec.model_fields.items())
            msg = f"unknown field (a model takes: {allowed})"
        parts.append(f"{prefix}{loc.lstrip('.') or '(top level)'}: {msg}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def parse(data: Any) -> list[ModelSpec]:
    if not isinstance(data, dict):
        raise InvalidRequest("the spec must be a mapping with a `models:` list")
    try:
        return SpecFile.model_validate(data).models
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc)) from None


def load(path: Path) -> list[ModelSpec]:
    try:
        raw = read_capped(path, MAX_SPEC_BYTES)
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read the spec ({exc.strerror or type(exc).__name__})") from None
    except TooLarge:
        raise InvalidRequest(f"{path}: larger than {MAX_SPEC_BYTES} bytes, not a model spec") from None
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise InvalidRequest(f"{path}: not valid {kind}: {exc}") from None
    try:
        return parse(data)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{path}: {exc.message}") from None


def from_flags(**fields: Any) -> ModelSpec:
    """One model from command-line flags, validated like a spec entry."""
    try:
        return ModelSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc, prefix="--")) from None


def resolve(specs: list[ModelSpec], settings: ModelDownloadSettings) -> list[ModelRequest]:
    """Apply defaults; refuse two models that share a name or write into each other's directory."""
    root = settings.root.expanduser()
    out: list[ModelRequest] = []
    for i, spec in enumerate(specs):
        where = f"models[{i}]" if len(specs) > 1 else "model"
        rel = spec.dir if spec.dir is not None else spec.repo
        dest = Path(rel) if Path(rel).is_absolute() else root / rel
        default_endpoint = (
            settings.hf_endpoint if spec.source == "huggingface" else settings.modelscope_endpoint
        )
        req = ModelRequest(
            name=spec.name or spec.repo,
            source=spec.source,
            repo=spec.repo,
            revision=spec.revision or DEFAULT_REVISION[spec.source],
            dest=Path(dest.resolve()),
            endpoint=spec.endpoint or default_endpoint,
            allow_patterns=tuple(spec.allow_patterns),
            ignore_patterns=tuple(spec.ignore_patterns),
        )
        for j, other in enumerate(out):
            if other.name == req.name:
                raise InvalidRequest(f"{where}.name: {req.name!r} is also models[{j}]'s name")
            a, b = req.dest, other.dest
            if a == b or a in b.parents or b in a.parents:
                raise InvalidRequest(
                    f"{where}.dir: {a} overlaps models[{j}] ({other.name}) at {b}; each model needs its own"
                )
        out.append(req)
    return out
