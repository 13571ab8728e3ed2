"""INDEXER_FAISS_GPU: without a GPU the indexer refuses to start, with one line that says why, before
any document is read or embedded. (This machine has no GPU; the GPU build of IVF-PQ itself is tested
in libs/index's test_dense.py through a stand-in for the faiss module.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omnirag.index import dense
from omnirag.indexer.config import IndexerSettings

MESSAGE = "INDEXER_FAISS_GPU=true needs a GPU, but "


def test_settings_refuse_the_gpu_setting_without_a_gpu(tmp_path: Path) -> None:
    with pytest.raises(dense.GpuUnavailable) as caught:
        IndexerSettings(index_root=tmp_path, faiss_gpu=True)
    assert str(caught.value).startswith(MESSAGE)
    assert "\n" not in str(caught.value)
    assert IndexerSettings(index_root=tmp_path).faiss_gpu is False  # the default needs no GPU


def test_the_command_exits_with_the_reason(tmp_path: Path) -> None:
    spec = tmp_path / "kb.yaml"
    spec.write_text("knowledgeBases: []\n")
    env = {
        **os.environ,
        "INDEXER_FAISS_GPU": "true",
        "INDEXER_INDEX_ROOT": str(tmp_path / "index"),
        "INDEXER_CONFIG": str(spec),
    }
    result = subprocess.run(
        [sys.executable, "-m", "omnirag.indexer", "status"],
        cwd=tmp_path,  # no .env from the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert MESSAGE in result.stderr
    # Without the setting the same command runs.
    del env["INDEXER_FAISS_GPU"]
    ok = subprocess.run(
        [sys.executable, "-m", "omnirag.indexer", "status"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
