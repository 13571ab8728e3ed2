"""Settings: env prefix per service, .env files, typed validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from omnirag.core.settings import ServiceSettings


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", env_file=".env", extra="ignore")
    port: int = 9000


def test_env_prefix_and_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert DemoSettings().port == 9000
    monkeypatch.setenv("DEMO_PORT", "9100")
    monkeypatch.setenv("PORT", "1")  # another service's variable does not leak in
    assert DemoSettings().port == 9100


def test_dotenv_is_read_and_environment_wins(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DEMO_PORT=9200\nDEMO_LOG_LEVEL=DEBUG\n")
    s = DemoSettings()
    assert s.port == 9200 and s.log_level == "DEBUG"
    monkeypatch.setenv("DEMO_PORT", "9300")
    assert DemoSettings().port == 9300


def test_bad_values_fail_fast(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEMO_LOG_LEVEL", "LOUD")
    with pytest.raises(ValidationError):
        DemoSettings()
    monkeypatch.delenv("DEMO_LOG_LEVEL")
    monkeypatch.setenv("DEMO_MAX_BODY_BYTES", "10")  # below the documented floor
    with pytest.raises(ValidationError):
        DemoSettings()
