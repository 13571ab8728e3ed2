"""Redis replies as text. The gateway's client decodes every reply (``decode_responses=True``), but
redis-py types a reply as bytes or str either way: these read it as the str it is."""

from __future__ import annotations

from collections.abc import Mapping


def text(value: bytes | str | int | float | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def text_fields(fields: Mapping[bytes | str, bytes | str] | None) -> dict[str, str]:
    """A hash's or a stream entry's fields (none for an entry deleted meanwhile)."""
    return {text(k): text(v) for k, v in (fields or {}).items()}
