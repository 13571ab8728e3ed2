"""The knowledge-base spec: the bundled example is valid; bad specs fail fast naming the field."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, get_args, get_origin

import annotated_types
import pytest

from omnirag.indexer.sources import LocalSource, WebSource
from omnirag.indexer.spec import SpecError, load, parse, schema

REPO = Path(__file__).resolve().parents[3]


def test_the_bundled_example_is_valid():
    kbs = load(REPO / "config/knowledge-bases.yaml")
    assert [kb.name for kb in kbs] == ["docs"]
    kb = kbs[0]
    assert kb.chunk_size == 800 and kb.chunk_overlap == 100 and kb.schedule == "0 3 * * *"
    source = kb.sources[0]
    assert (
        isinstance(source, LocalSource)
        and source.root(kb.base_dir) == (REPO / "examples/knowledge-base").resolve()
    )


def test_the_design_example_is_valid(tmp_path):
    spec = {
        "knowledgeBases": [
            {
                "name": "docs",
                "sources": [
                    {"type": "local", "path": "./docs", "glob": "**/*.md"},
                    {
                        "type": "web",
                        "urls": ["https://docs.example.com/"],
                        "maxDepth": 2,
                        "maxPages": 500,
                        "sitemap": True,
                        "include": ["^https://docs\\.example\\.com/"],
                        "exclude": ["/changelog/"],
                    },
                ],
                "splitter": {"chunkSize": 800, "chunkOverlap": 100},
                "schedule": "0 3 * * *",
            }
        ]
    }
    local, web = parse(spec, tmp_path)[0].sources
    assert local == LocalSource(path="./docs", glob="**/*.md")
    assert web == WebSource(
        urls=("https://docs.example.com/",),
        max_depth=2,
        max_pages=500,
        sitemap=True,
        include=("^https://docs\\.example\\.com/",),
        exclude=("/changelog/",),
    )
    # What every chunk of a source records as its origin_source.
    assert (local.label, web.label) == ("local:./docs", "web:https://docs.example.com/")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({}, "knowledgeBases"),
        (
            {"knowledgeBases": [{"name": "Bad Name", "sources": [{"type": "local", "path": "x"}]}]},
            "knowledgeBases[0].name",
        ),
        ({"knowledgeBases": [{"name": "a", "sources": []}]}, "knowledgeBases[0].sources"),
        (
            {"knowledgeBases": [{"name": "a", "sources": [{"type": "ftp", "path": "x"}]}]},
            "knowledgeBases[0].sources[0]",
        ),
        (
            {"knowledgeBases": [{"name": "a", "sources": [{"type": "web", "urls": ["file:///etc/passwd"]}]}]},
            "knowledgeBases[0].sources[0]",
        ),
        (
            {
                "knowledgeBases": [
                    {"name": "a", "sources": [{"type": "local", "path": "x"}], "splitter": {"chunkSize": 10}}
                ]
            },
            "knowledgeBases[0].splitter.chunkSize",
        ),
        (
            {
                "knowledgeBases": [
                    {
                        "name": "a",
                        "sources": [{"type": "local", "path": "x"}],
                        "splitter": {"chunkSize": 100, "chunkOverlap": 100},
                    }
                ]
            },
            "chunkOverlap",
        ),
        ({"knowledgeBases": [{"name": "a", "sources": [{"type": "local", "path": "x"}], "typo": 1}]}, "typo"),
        (
            {
                "knowledgeBases": [
                    {"name": "a", "sources": [{"type": "web", "urls": ["https://x/"], "exclude": ["("]}]}
                ]
            },
            "exclude[0]: bad regex",
        ),
        (
            {
                "knowledgeBases": [
                    {"name": "a", "sources": [{"type": "local", "path": "x"}]},
                    {"name": "a", "sources": [{"type": "local", "path": "y"}]},
                ]
            },
            "declared twice",
        ),
        (
            {
                "knowledgeBases": [
                    {"name": "a", "sources": [{"type": "local", "path": "x"}], "schedule": "daily"}
                ]
            },
            "schedule",
        ),
    ],
)
def test_bad_specs_name_the_bad_field(tmp_path, spec, fragment):
    with pytest.raises(SpecError) as err:
        parse(spec, tmp_path)
    assert fragment in err.value.message


def test_unreadable_files_are_clear(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("knowledgeBases: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load(bad)


# --- the typed source models mirror the schema, which stays the contract -------------------------

JSON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": tuple,
}
# pydantic's constraint object for each JSON Schema keyword a source property may carry.
BOUNDS = {
    "minimum": (annotated_types.Ge, "ge"),
    "maximum": (annotated_types.Le, "le"),
    "minLength": (annotated_types.MinLen, "min_length"),
    "minItems": (annotated_types.MinLen, "min_length"),
    "maxLength": (annotated_types.MaxLen, "max_length"),
    "maxItems": (annotated_types.MaxLen, "max_length"),
}


def _bounds(constraints: list[Any]) -> set[tuple[str, Any]]:
    kinds = {kind: attr for kind, attr in BOUNDS.values()}
    return {
        (kind.__name__, getattr(c, kinds[kind])) for c in constraints for kind in kinds if type(c) is kind
    }


@pytest.mark.parametrize("model", [LocalSource, WebSource])
def test_a_source_model_has_a_field_for_every_property_the_schema_declares(model):
    """Same names (camelCase aliases), types, required fields, defaults and bounds; nothing more,
    nothing less: a property added to the schema without its field (or the other way) fails here."""
    kind = model.model_fields["type"].default
    [declared] = [s for s in schema()["$defs"]["source"]["oneOf"] if s["properties"]["type"]["const"] == kind]
    fields = {field.alias or name: field for name, field in model.model_fields.items()}
    assert set(fields) == set(declared["properties"]), f"{model.__name__} and the schema's {kind!r} differ"
    required = {key for key, field in fields.items() if field.is_required()}
    assert required == set(declared["required"]) - {"type"}  # the model's type is its own default
    for key, prop in declared["properties"].items():
        if key == "type":
            continue
        field = fields[key]
        annotation = field.annotation
        if get_origin(annotation) is types.UnionType:
            [annotation] = [a for a in get_args(annotation) if a is not type(None)]
            assert field.default is None, key
        assert (get_origin(annotation) or annotation) is JSON_TYPES[prop["type"]], key
        if prop["type"] == "array":
            assert get_args(annotation) == (JSON_TYPES[prop["items"]["type"]], ...), key
        if "default" in prop:
            assert field.default == prop["default"], key
        elif not field.is_required():
            assert field.default in (None, ()), key  # absent in the spec: nothing
        schema_bounds = {(BOUNDS[k][0].__name__, v) for k, v in prop.items() if k in BOUNDS}
        assert _bounds(field.metadata) == schema_bounds, key


def test_what_the_schema_counts_as_an_integer_and_a_source_does_not_is_refused_naming_it(tmp_path):
    # JSON Schema takes 2.0 for an integer; the crawler has always refused it (at crawl time, as a
    # failed run); the model refuses it while the spec is read.
    spec = {
        "knowledgeBases": [
            {"name": "a", "sources": [{"type": "web", "urls": ["https://x/"], "maxDepth": 2.0}]}
        ]
    }
    with pytest.raises(SpecError, match=r"knowledgeBases\[0\]\.sources\[0\]\.maxDepth: .*integer"):
        parse(spec, tmp_path)
