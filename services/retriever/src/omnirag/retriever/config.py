"""Retriever settings (env prefix ``RETRIEVER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from omnirag.core.settings import ServiceSettings


class RetrieverSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVER_", env_file=".env", extra="ignore")

    port: int = Field(8002, ge=1, le=65535)
    index_root: Path = Field(Path("data/index"), description="Directory holding one folder per collection.")
    embedder_url: str = Field("http://127.0.0.1:8001", description="Base URL of the embedder service.")
    embedder_timeout: float = Field(10.0, gt=0, description="Seconds one query embedding may take.")
    poll_seconds: float = Field(
        2.0,
        gt=0,
        description="How often CURRENT files are checked. Shorter: new versions appear sooner; "
        "each poll is a stat per collection.",
    )
    max_k: int = Field(100, ge=1, le=10000, description="Most hits one search may ask for; more is 422.")
    verify_checksums: bool = Field(
        True,
        description="Hash every file of a version before serving it. Costs a read of the version at "
        "load time; catches a truncated copy or a bad disk.",
    )
    search_threads: int = Field(
        4, ge=1, le=64, description="Threads running searches (FAISS releases the GIL)."
    )
    faiss_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="OpenMP threads inside one FAISS search. 1 lets concurrent searches use the cores side "
        "by side; more speeds a lone search over a huge flat index but makes concurrent ones fight (seen on "
        "2 busy cores: 4-7 ms per search instead of 0.1 ms).",
    )
    faiss_gpu: bool = Field(
        False,
        description="Serve each collection's FAISS index from every GPU (faiss.index_cpu_to_all_gpus). "
        "Needs the GPU image (faiss-gpu-cu12) and a GPU, or the retriever refuses to start. Pays for large "
        "flat or IVF-PQ indexes under many unfiltered searches; costs GPU memory for every loaded version "
        "and keeps the CPU copy too (filtered searches run there: GPU indexes ignore ID filters). HNSW "
        "stays on the CPU.",
    )
