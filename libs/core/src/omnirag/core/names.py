"""The name of a collection (also its knowledge base's name and its folder under the index root).

One rule, so that what the gateway accepts, the worker ingests, the indexer writes and the UI offers
never differ. The indexer's JSON schema (``knowledge-bases.schema.json``) and the chart's
``values.schema.json``, which copies it, spell the pattern out as text; a test holds them equal to
:data:`COLLECTION_NAME_PATTERN`.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

from omnirag.core.errors import InvalidInput

COLLECTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
COLLECTION_NAME_RULE = "1-63 lowercase letters, digits, '_' and '-', starting with a letter or digit"
_COLLECTION_NAME = re.compile(COLLECTION_NAME_PATTERN)

# For pydantic fields: the pattern is checked and shows in the JSON schema (and so in OpenAPI).
CollectionName = Annotated[str, StringConstraints(pattern=COLLECTION_NAME_PATTERN)]


class InvalidCollectionName(InvalidInput, ValueError):
    """A 422 ``invalid_collection`` for a service, and a ValueError for code that is not one (the
    index library, the indexer's command line, a pydantic validator)."""

    code = "invalid_collection"


def is_collection_name(name: str) -> bool:
    # fullmatch: with match, "$" also matches before a final newline, and "docs\n" would pass.
    return _COLLECTION_NAME.fullmatch(name) is not None


def check_collection_name(name: str) -> str:
    """``name`` itself, or :class:`InvalidCollectionName` saying what a name may be."""
    if not is_collection_name(name):
        raise InvalidCollectionName(f"collection name {name[:80]!r}: use {COLLECTION_NAME_RULE}")
    return name
