"""The collection-name rule: one pattern, the same wherever a name is checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from omnirag.core.errors import status_for
from omnirag.core.names import (
    COLLECTION_NAME_PATTERN,
    CollectionName,
    InvalidCollectionName,
    check_collection_name,
    is_collection_name,
)
from omnirag.core.schemas.ingest import IngestRequest

ROOT = Path(__file__).resolve().parents[3]
GOOD = ["docs", "a", "0", "kb-2024_v2", "x" * 63]
# "docs\n": a check written with re.match let it through (its "$" matches before a final newline),
# while pydantic refused it; the stricter reading is the rule.
BAD = ["", "Docs", "_docs", "-docs", "x" * 64, "docs\n", "my docs", "docs/../x", "文档", "docs.v2"]


class Named(BaseModel):
    name: CollectionName


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass_everywhere(name: str) -> None:
    assert is_collection_name(name) and check_collection_name(name) == name
    assert Named(name=name).name == name


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_refused_everywhere(name: str) -> None:
    assert not is_collection_name(name)
    with pytest.raises(InvalidCollectionName, match="1-63 lowercase letters") as caught:
        check_collection_name(name)
    # A 422 with its own code for a service, a ValueError for code that is not one.
    assert isinstance(caught.value, ValueError)
    assert status_for(caught.value) == 422 and caught.value.code == "invalid_collection"
    with pytest.raises(ValidationError):
        Named(name=name)


def test_the_ingest_message_uses_the_rule() -> None:
    fields = {"job_id": "job-0123456789", "kind": "text", "source": "s", "text": "t"}
    assert IngestRequest(collection="docs", **fields).collection == "docs"
    with pytest.raises(ValidationError):
        IngestRequest(collection="docs\n", **fields)
    schema = IngestRequest.model_json_schema()
    assert schema["properties"]["collection"]["pattern"] == COLLECTION_NAME_PATTERN


@pytest.mark.parametrize(
    "path",
    [
        "jobs/indexer/src/omnirag/indexer/schema/knowledge-bases.schema.json",
        # Generated from the indexer's schema by charts/omnirag/hack/gen_values_schema.py.
        "charts/omnirag/values.schema.json",
    ],
)
def test_the_json_schemas_spell_the_same_pattern(path: str) -> None:
    """The JSON schemas cannot import Python: they carry the pattern as text, held equal here."""
    schema = json.loads((ROOT / path).read_text())
    name = schema["$defs"]["knowledgeBase"]["properties"]["name"]
    assert name["pattern"] == COLLECTION_NAME_PATTERN
