"""The UI's own tests run without a stack (its stack tests, Chromium included, are tests/ui)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_configure(config: pytest.Config) -> None:
    # Gradio's queue statistics trip pandas 3 deprecation warnings on every event: not ours.
    config.addinivalue_line("filterwarnings", "ignore:::gradio.queueing")
