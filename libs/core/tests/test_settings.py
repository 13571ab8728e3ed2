"""Settings: env prefix per service, .env files, typed validation."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from omnirag.core.settings import (
    MAX_SETTING_FILE_BYTES,
    RedisServiceSettings,
    SecretSettingError,
    ServiceSettings,
    SettingsFileError,
)


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


class SecretDemo(RedisServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", env_file=".env", extra="ignore")
    api_key: SecretStr | None = None
    token: str = "none"
    token_file: str | None = None  # a setting with its own *_file field keeps that meaning
    workers: int = 1
    shared_key: SecretStr | None = Field(None, validation_alias=AliasChoices("DEMO_SHARED_KEY", "OTHER_KEY"))


def test_a_text_setting_is_read_from_the_file_its_FILE_variable_names(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "key").write_text("s3cret-value\n")  # as `echo` writes it: one newline dropped
    monkeypatch.setenv("DEMO_API_KEY_FILE", str(tmp_path / "key"))
    assert SecretDemo().api_key.get_secret_value() == "s3cret-value"
    # Among aliases the first one set wins, plain or as a file.
    monkeypatch.setenv("OTHER_KEY", "from-env")
    assert SecretDemo().shared_key.get_secret_value() == "from-env"
    monkeypatch.setenv("DEMO_SHARED_KEY_FILE", str(tmp_path / "key"))
    assert SecretDemo().shared_key.get_secret_value() == "s3cret-value"
    monkeypatch.delenv("DEMO_SHARED_KEY_FILE")
    monkeypatch.delenv("OTHER_KEY")
    monkeypatch.setenv("DEMO_SHARED_KEY", "first-alias")
    monkeypatch.setenv("OTHER_KEY_FILE", str(tmp_path / "key"))
    assert SecretDemo().shared_key.get_secret_value() == "first-alias"
    monkeypatch.delenv("DEMO_SHARED_KEY")
    assert SecretDemo().shared_key.get_secret_value() == "s3cret-value"
    # Passed in code beats every file.
    assert SecretDemo(api_key="in-code").api_key.get_secret_value() == "in-code"
    # The environment's file variant wins over .env's plain value.
    (tmp_path / ".env").write_text("DEMO_API_KEY=from-dotenv\n")
    assert SecretDemo().api_key.get_secret_value() == "s3cret-value"


def test_file_variants_fail_clearly_and_never_show_the_content(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "key").write_text("s3cret-value")
    monkeypatch.setenv("DEMO_API_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("DEMO_API_KEY", "also-given")
    with pytest.raises(SettingsFileError, match="set DEMO_API_KEY or DEMO_API_KEY_FILE, not both"):
        SecretDemo()
    monkeypatch.delenv("DEMO_API_KEY")
    monkeypatch.setenv("DEMO_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsFileError, match=r"DEMO_API_KEY_FILE=.*missing: cannot read it"):
        SecretDemo()
    (tmp_path / "huge").write_bytes(b"x" * (MAX_SETTING_FILE_BYTES + 1))
    monkeypatch.setenv("DEMO_API_KEY_FILE", str(tmp_path / "huge"))
    with pytest.raises(SettingsFileError, match="larger than"):
        SecretDemo()
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    monkeypatch.setenv("DEMO_API_KEY_FILE", str(tmp_path / "binary"))
    with pytest.raises(SettingsFileError, match="not UTF-8") as err:
        SecretDemo()
    assert "s3cret" not in str(err.value)


def test_only_text_settings_without_their_own_file_field_take_a_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "n").write_text("7")
    monkeypatch.setenv("DEMO_WORKERS_FILE", str(tmp_path / "n"))
    monkeypatch.setenv("DEMO_TOKEN_FILE", str(tmp_path / "n"))
    s = SecretDemo()
    assert s.workers == 1  # not a text setting: its _FILE means nothing
    assert s.token == "none" and s.token_file == str(tmp_path / "n")


def test_the_redis_password_goes_into_the_url(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pw").write_text("p@ss/word:1\n")
    monkeypatch.setenv("DEMO_REDIS_URL", "redis://redis.ns.svc:6379/2")
    monkeypatch.setenv("DEMO_REDIS_PASSWORD_FILE", str(tmp_path / "pw"))
    url = SecretDemo().redis_url
    assert url == "redis://:p%40ss%2Fword%3A1@redis.ns.svc:6379/2"
    redis = pytest.importorskip("redis")  # the services' client reads it back
    kwargs = redis.connection.parse_url(url)
    assert kwargs["password"] == "p@ss/word:1" and kwargs["host"] == "redis.ns.svc" and kwargs["db"] == 2
    # A whole URL from a file, and a URL that has a password already is refused a second one.
    (tmp_path / "url").write_text("rediss://user:pw@cache.example:6380/0")
    monkeypatch.delenv("DEMO_REDIS_URL")
    monkeypatch.setenv("DEMO_REDIS_URL_FILE", str(tmp_path / "url"))
    with pytest.raises(SecretSettingError, match="has a password already") as err:
        SecretDemo()
    # A ValidationError would print the whole input: both passwords.
    assert "p@ss/word" not in str(err.value) and ":pw@" not in str(err.value)
    monkeypatch.delenv("DEMO_REDIS_PASSWORD_FILE")
    assert SecretDemo().redis_url == "rediss://user:pw@cache.example:6380/0"


def test_the_service_token_is_a_secret_read_from_its_file_and_sent_as_a_bearer(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert DemoSettings().service_token is None and DemoSettings().service_headers() == {}
    (tmp_path / "token").write_text("0123456789abcdef-shared\n")
    monkeypatch.setenv("DEMO_SERVICE_TOKEN_FILE", str(tmp_path / "token"))
    s = DemoSettings()
    assert s.service_token is not None and s.service_token.get_secret_value() == "0123456789abcdef-shared"
    assert "0123456789abcdef" not in repr(s)
    assert s.service_headers() == {"Authorization": "Bearer 0123456789abcdef-shared"}


def test_an_empty_service_token_is_unset_and_a_short_one_is_refused_without_echoing_it(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEMO_SERVICE_TOKEN", "")  # a template's empty line
    assert DemoSettings().service_token is None
    monkeypatch.setenv("DEMO_SERVICE_TOKEN", "guessable")
    with pytest.raises(SecretSettingError, match="at least 16 characters") as err:
        DemoSettings()
    assert "guessable" not in str(err.value)
