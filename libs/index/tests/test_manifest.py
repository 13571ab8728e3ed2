"""manifest.json's models and file hashes, and the string → int64 ids FAISS uses."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from omnirag.index import EmbeddingInfo, IndexConfig
from omnirag.index.ids import int_id
from omnirag.index.manifest import hash_tree, sha256_file


def test_int_id_is_stable_non_negative_and_spread() -> None:
    ids = [int_id(f"doc-{i}") for i in range(10000)]
    assert len(set(ids)) == 10000
    assert all(0 <= i < 2**63 for i in ids)
    # The same number in every process and on every machine: blake2b, not hash().
    expected = int.from_bytes(hashlib.blake2b(b"doc-1", digest_size=8).digest(), "big") & (2**63 - 1)
    assert int_id("doc-1") == expected
    assert int_id("文档-1") == int_id("文档-1") != int_id("文档-2")


def test_sha256_and_hash_tree(tmp_path: Path) -> None:
    (tmp_path / "sparse").mkdir()
    (tmp_path / "a.bin").write_bytes(b"a" * (3 << 20))  # several read chunks
    (tmp_path / "sparse" / "b.npy").write_bytes(b"b")
    (tmp_path / "manifest.json").write_text("{}")
    assert sha256_file(tmp_path / "a.bin") == hashlib.sha256(b"a" * (3 << 20)).hexdigest()
    tree = hash_tree(tmp_path)
    assert tree == {
        "a.bin": hashlib.sha256(b"a" * (3 << 20)).hexdigest(),
        "sparse/b.npy": hashlib.sha256(b"b").hexdigest(),
    }
    assert list(tree) == sorted(tree)


def test_config_validation() -> None:
    assert IndexConfig().type == "flat"
    assert IndexConfig().metric == "ip"
    with pytest.raises(ValidationError):
        IndexConfig(type="annoy")
    with pytest.raises(ValidationError):
        IndexConfig(metric="cosine")
    with pytest.raises(ValidationError):
        IndexConfig(hnsw_m=2)
    with pytest.raises(ValidationError):
        EmbeddingInfo(model="m", dimension=0)
    assert EmbeddingInfo(model="m", dimension=3).normalize is True
