"""The job runs as a subprocess (its exit code and stderr are the interface) against a local fake hub.

The job's environment is built from scratch: no HF_HUB_OFFLINE (the Makefile sets it for every test;
the job under test must talk to the fake hub), endpoints pointing at the fake, a home and caches in
the test's directory, and proxies that lead nowhere, so a request to anything but 127.0.0.1 fails
instead of reaching the internet.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from omnirag_harness.hub import FakeHub


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    with fake.running():
        yield fake


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"
