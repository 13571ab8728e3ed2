"""The sources of a knowledge base, typed: one model per ``type`` of a spec's ``sources`` entry.

``knowledge-bases.schema.json`` stays the contract and validates a spec first; these models mirror
its source shapes (the same properties under the same camelCase names, the same defaults and
bounds — the spec's tests hold them to it) so that the readers get typed values, not dict lookups.
The readers live beside: ``local.py`` walks a :class:`LocalSource`, ``web.py`` crawls a
:class:`WebSource`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

# A spec's lists are bounded by the schema; a model built without it (a test, a caller of the
# crawler) gets the same bound.
MAX_LIST = 100


class _SourceModel(BaseModel):
    # Strict: what the schema refuses ("2" for an integer, 1 for a boolean) a model built without
    # the schema refuses too, instead of quietly converting it.
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, alias_generator=to_camel, validate_by_name=True
    )


# Tuples, for frozen models; a spec brings lists, so the tuple itself is lax (its items are not).
Strings = Annotated[tuple[str, ...], Field(strict=False, max_length=MAX_LIST)]


class LocalSource(_SourceModel):
    """``type: local``: files under a directory (see ``local.py`` for the walk's rules)."""

    type: Literal["local"] = "local"
    path: str = Field(min_length=1, description="Relative to the spec file.")
    glob: str = Field("**/*", description="pathlib-style, matched against the path below the root.")
    exclude: Strings = Field((), description="Regular expressions; a path one finds is skipped.")

    @property
    def label(self) -> str:
        """Which source of its knowledge base a document came from, as the spec names it."""
        return f"local:{self.path}"

    def root(self, base_dir: Path) -> Path:
        """The directory (or file) to read, for a spec file in ``base_dir``."""
        return (base_dir / self.path).resolve()


class WebSource(_SourceModel):
    """``type: web``: pages crawled from start URLs (see ``web.py`` for the crawl's rules)."""

    type: Literal["web"] = "web"
    urls: Strings = Field(min_length=1, description="Start URLs.")
    max_depth: int = Field(2, ge=0, le=20, description="Links followed from a start URL.")
    max_pages: int = Field(500, ge=1, le=100000, description="Pages fetched at most.")
    sitemap: bool = Field(False, description="Also the pages the start hosts' sitemaps list.")
    include: Strings = Field((), description="Regular expressions; a URL must match one (if any).")
    exclude: Strings = Field((), description="Regular expressions; a URL one matches is skipped.")
    same_host: bool = Field(True, description="Stay on the start URLs' hosts.")
    allow_hosts: Strings = Field((), description="Hosts allowed even on private or loopback addresses.")
    delay_seconds: float | None = Field(
        None, ge=0, le=60, description="Between requests to one host; default: the crawler's."
    )
    concurrency: int | None = Field(
        None, ge=1, le=64, description="Requests in flight at once; default: the crawler's."
    )

    @property
    def label(self) -> str:
        """Which source of its knowledge base a document came from, as the spec names it."""
        return f"web:{' '.join(self.urls)}"


Source = Annotated[LocalSource | WebSource, Field(discriminator="type")]
SOURCE: TypeAdapter[LocalSource | WebSource] = TypeAdapter(Source)
