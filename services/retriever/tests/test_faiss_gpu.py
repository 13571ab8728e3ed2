"""RETRIEVER_FAISS_GPU: without a GPU the retriever refuses to start, with one line that says why;
with one, every loaded version's index is moved to the GPUs.

This machine has no GPU and the CPU build of faiss. Start-up is tested for real (the app's lifespan,
and ``python -m omnirag.retriever`` as a process). The move is driven through a stand-in for the
faiss module that reports one GPU and records the call (its "GPU copy" is a real CPU clone): that
proves the registry wires it, not that faiss-gpu works.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
import httpx
import pytest

from omnirag.core.metrics import ServiceMetrics
from omnirag.index import dense
from omnirag.retriever.app import create_app
from omnirag.retriever.config import RetrieverSettings
from omnirag.retriever.embedding import QueryEmbedder
from omnirag.retriever.registry import Registry, RetrieverMetrics

MESSAGE = "RETRIEVER_FAISS_GPU=true needs a GPU, but "


async def test_gpu_setting_without_a_gpu_stops_the_start_up(index_root: Path, embedder_url: str) -> None:
    settings = RetrieverSettings(index_root=index_root, embedder_url=embedder_url, faiss_gpu=True)
    app = create_app(settings)
    with pytest.raises(dense.GpuUnavailable) as caught:
        async with app.router.lifespan_context(app):
            pytest.fail("the lifespan started with RETRIEVER_FAISS_GPU=true and no GPU")
    assert str(caught.value).startswith(MESSAGE)
    assert "\n" not in str(caught.value)


def test_the_process_exits_with_the_reason(index_root: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RETRIEVER_FAISS_GPU": "true",
        "RETRIEVER_INDEX_ROOT": str(index_root),
        "RETRIEVER_PORT": "1",  # never bound: the lifespan fails before uvicorn listens
        "RETRIEVER_LOG_JSON": "false",
    }
    result = subprocess.run(
        [sys.executable, "-m", "omnirag.retriever"],
        cwd=tmp_path,  # no .env from the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert MESSAGE in result.stdout + result.stderr


def test_setting_off_serves_as_before(retriever: str) -> None:
    # The default: no GPU needed, searches answered (the whole suite runs this way).
    r = httpx.post(
        f"{retriever}/v1/collections/docs/search", json={"query": "gateway port", "mode": "sparse"}
    )
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == "gateway-port"
    assert RetrieverSettings().faiss_gpu is False


class FakeGpuFaiss:
    StandardGpuResources = object  # what tells the GPU build of faiss from faiss-cpu

    def __init__(self) -> None:
        self.moved: list[object] = []

    def get_num_gpus(self) -> int:
        return 1

    def index_cpu_to_all_gpus(self, index: object) -> object:
        self.moved.append(index)
        return faiss.clone_index(index)


async def test_registry_moves_each_loaded_version_to_the_gpus(
    index_root: Path, embedder_url: str, build, embed_texts
) -> None:
    build(index_root, "docs")
    settings = RetrieverSettings(index_root=index_root, embedder_url=embedder_url, faiss_gpu=True)
    fake = FakeGpuFaiss()
    embedder = QueryEmbedder(embedder_url, 30.0)
    registry = Registry(
        settings, embedder, RetrieverMetrics(ServiceMetrics("retriever_gpu_test")), faiss_lib=fake
    )
    try:
        assert registry.gpus == 1
        changes = await registry.refresh()
        assert changes["loaded"] and not changes["failed"]
        collection = registry.get("docs").usable()
        [segment] = collection.segments
        assert isinstance(segment.index, dense.GpuIndex)
        assert fake.moved == [segment.index.cpu]
        query = embed_texts(["Which port does the gateway listen on?"])[0]
        hits = collection.search(vector=query, k=3, mode="dense")
        assert hits[0].id == "gateway-port"
        filtered = collection.search(vector=query, k=3, mode="dense", filter={"lang": "zh"})
        assert filtered and {h.metadata["lang"] for h in filtered} == {"zh"}
    finally:
        await registry.close()
        await embedder.aclose()
