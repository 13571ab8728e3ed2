"""The gateway's settings: what they refuse when the gateway starts, before any request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from omnirag.gateway.config import GatewaySettings


@pytest.mark.parametrize("name", ["Docs", "team docs", "docs\n", "-docs", "", "x" * 64])
def test_a_default_collection_follows_the_collection_name_rule(name: str) -> None:
    with pytest.raises(ValidationError, match="default_collection"):
        GatewaySettings(default_collection=name)
    assert GatewaySettings(default_collection="team-docs_2").default_collection == "team-docs_2"


def test_a_bad_default_collection_stops_the_start(tmp_path: Path) -> None:
    """Refused when the settings are read, with the reason: not at the first request that names no
    collection, as a 422 the client could not have avoided."""
    env = os.environ | {"GATEWAY_DEFAULT_COLLECTION": "Team Docs", "GATEWAY_PORT": "0"}
    # In an empty directory: no .env of the checkout takes part.
    run = subprocess.run(
        [sys.executable, "-m", "omnirag.gateway"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "default_collection" in run.stderr and "Team Docs" in run.stderr, run.stderr[-2000:]
