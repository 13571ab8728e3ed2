"""What sources hand to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SourceDocument:
    """One document read from a source, before splitting.

    ``source`` is the path relative to the source root, or the URL; it identifies the document
    across runs (chunk ids derive from it), so it must be stable.
    """

    source: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceProblem:
    """A document that could not be read (bad file, refused URL, fetch error): reported, not fatal."""

    source: str
    reason: str
    kind: str = "error"  # "error" | "refused" | "unsupported" | "too_large"
