"""Running the model-download job as its tests do: a subprocess (its exit code and stderr are the
interface) against a local fake hub, with an environment built from scratch — no HF_HUB_OFFLINE (the
job under test must talk to the fake hub), endpoints pointing at the fake, a home and caches in the
test's directory, and proxies that lead nowhere, so a request to anything but 127.0.0.1 fails
instead of reaching the internet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnirag.model_download import MARKER_NAME, WORK_DIR_NAME
from omnirag_harness.hub import FakeHub, random_bytes

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused

SMALL = {
    "config.json": b'{"architectures": ["TinyForCausalLM"], "hidden_size": 8}\n',
    "sub/dir/tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
    "README.md": b"# tiny\n",
}
BIG = "model.safetensors"
BIG_SIZE = 3 * 1024 * 1024 + 17


def tiny_files(seed: int = 0) -> dict[str, bytes]:
    return {**SMALL, BIG: random_bytes(BIG_SIZE, seed)}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def reason(self) -> str:
        """The last line on stderr: where the job states why it failed."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def job_env(tmp_path: Path, hub: FakeHub | None, **extra: str) -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING", "MODELSCOPE", "MODEL_DOWNLOAD_", "TRANSFORMERS_"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env = {
        **keep,
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "home" / ".cache"),
        "HF_HOME": str(tmp_path / "home" / "hf"),
        "MODELSCOPE_CACHE": str(tmp_path / "home" / "modelscope"),
        "HTTP_PROXY": DEAD_PROXY,
        "HTTPS_PROXY": DEAD_PROXY,
        "NO_PROXY": "127.0.0.1,localhost",
        "MODEL_DOWNLOAD_ROOT": str(tmp_path / "models"),
        "MODEL_DOWNLOAD_RETRIES": "2",
        "MODEL_DOWNLOAD_RETRY_BACKOFF_SECONDS": "0.05",
        "MODEL_DOWNLOAD_RESERVE_BYTES": "0",
        "MODEL_DOWNLOAD_CONNECT_TIMEOUT": "5",
        "MODEL_DOWNLOAD_READ_TIMEOUT": "10",
    }
    if hub is not None:
        env["MODEL_DOWNLOAD_HF_ENDPOINT"] = hub.url
        env["MODEL_DOWNLOAD_MODELSCOPE_ENDPOINT"] = hub.url
    env.update(extra)
    return env


def job_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "omnirag.model_download", *args]


def start_job(tmp_path: Path, hub: FakeHub | None, *args: str) -> subprocess.Popen[str]:
    """The job in the background, for a test that stops it mid-way (it reads the output at the end)."""
    return subprocess.Popen(
        job_command(*args),
        env=job_env(tmp_path, hub),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_job(tmp_path: Path, hub: FakeHub | None, *args: str, timeout: float = 60, **env: str) -> Run:
    proc = subprocess.run(
        job_command(*args),
        env=job_env(tmp_path, hub, **env),
        cwd=tmp_path,  # no .env of the repository is read
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_same_tree(dest: Path, files: dict[str, bytes]) -> None:
    on_disk = {
        str(p.relative_to(dest)): p.read_bytes()
        for p in dest.rglob("*")
        if p.is_file() and not str(p.relative_to(dest)).startswith((WORK_DIR_NAME, MARKER_NAME))
    }
    assert on_disk.keys() == files.keys()
    for path, data in files.items():
        assert on_disk[path] == data, path


def marker_of(dest: Path) -> dict[str, Any]:
    return json.loads((dest / MARKER_NAME).read_text())
