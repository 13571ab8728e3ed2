"""Knowledge-base specs: YAML, validated by the JSON schema shipped in this package (the chart's
``values.schema.json`` uses the same one), failing fast with the path of the bad field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from omnirag.core.errors import InvalidInput
from omnirag.indexer.sources import SOURCE, Source

DEFAULT_CHUNK_SIZE = 800
DEFAULT_CHUNK_OVERLAP = 100


class SpecError(InvalidInput):
    code = "invalid_spec"


@cache
def schema() -> dict[str, Any]:
    text = resources.files("omnirag.indexer").joinpath("schema/knowledge-bases.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@dataclass
class KnowledgeBase:
    name: str
    sources: list[Source]
    base_dir: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    index_type: str = "flat"
    schedule: str | None = None
    embedding_model: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "(top level)"


def validate(data: Any) -> None:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        # oneOf errors are vague; the deepest sub-error names the field that is wrong.
        err = errors[0]
        best = jsonschema.exceptions.best_match([err]) if err.context else err
        raise SpecError(f"{_path(best.absolute_path)}: {best.message}")


def parse(data: Any, base_dir: Path) -> list[KnowledgeBase]:
    validate(data)
    kbs: list[KnowledgeBase] = []
    seen: set[str] = set()
    for i, kb in enumerate(data["knowledgeBases"]):
        if kb["name"] in seen:
            raise SpecError(f"knowledgeBases[{i}].name: {kb['name']!r} is declared twice")
        seen.add(kb["name"])
        splitter = kb.get("splitter", {})
        size = splitter.get("chunkSize", DEFAULT_CHUNK_SIZE)
        overlap = splitter.get("chunkOverlap", DEFAULT_CHUNK_OVERLAP)
        if overlap >= size:
            raise SpecError(
                f"knowledgeBases[{i}].splitter.chunkOverlap: {overlap} must be below chunkSize {size}"
            )
        sources: list[Source] = []
        for j, src in enumerate(kb["sources"]):
            for key in ("include", "exclude"):
                for k, pattern in enumerate(src.get(key, [])):
                    try:
                        re.compile(pattern)
                    except re.error as exc:
                        raise SpecError(
                            f"knowledgeBases[{i}].sources[{j}].{key}[{k}]: bad regex: {exc}"
                        ) from exc
            try:
                sources.append(SOURCE.validate_python(src))
            except ValidationError as exc:
                # What the schema lets through and the model does not: 2.0 for an integer, which
                # JSON Schema counts as one and the crawler never took.
                err = exc.errors()[0]
                where = _path(["knowledgeBases", i, "sources", j, *err["loc"][1:]])
                raise SpecError(f"{where}: {err['msg']}") from None
        kbs.append(
            KnowledgeBase(
                name=kb["name"],
                sources=sources,
                base_dir=base_dir,
                chunk_size=size,
                chunk_overlap=overlap,
                index_type=kb.get("index", {}).get("type", "flat"),
                schedule=kb.get("schedule"),
                embedding_model=kb.get("embeddingModel"),
                raw=kb,
            )
        )
    return kbs


def load(path: Path) -> list[KnowledgeBase]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return parse(data, path.resolve().parent)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc.message}") from None
