"""Stable 64-bit ids for FAISS from the string ids documents carry."""

from __future__ import annotations

import hashlib


def int_id(doc_id: str) -> int:
    """A non-negative int64 from a string id; the same string gives the same number everywhere."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
