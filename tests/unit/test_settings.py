"""Shared settings: read once, every bad value named, secrets masked, blank optional values unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import SettingsError
from shared.settings import SharedSettings, load_settings, read_environment


def test_defaults_and_casts() -> None:
    settings = load_settings(SharedSettings, {"SMTP_PORT": "465", "NOTIFY_TO": "a@x.invalid, b@x.invalid,"})
    assert settings.smtp_port == 465
    assert settings.notify_to == ("a@x.invalid", "b@x.invalid")
    assert settings.smtp_security == "starttls"
    assert settings.email_enabled is False


def test_a_blank_optional_value_is_unset() -> None:
    settings = load_settings(SharedSettings, {"SMTP_HOST": " ", "SMTP_PASSWORD": "", "REGISTRY_USERNAME": ""})
    assert (settings.smtp_host, settings.smtp_password, settings.registry_username) == (None, None, None)
    assert settings.email_enabled is False


def test_every_bad_value_is_named_and_a_secret_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            SharedSettings,
            {"SMTP_PORT": "70000", "SMTP_SECURITY": "tls", "LOG_RETENTION_RUNS": "0", "SMTP_PASSWORD": "pw-Zz9"},
        )
    message = str(caught.value)
    for name in ("SMTP_PORT", "SMTP_SECURITY", "LOG_RETENTION_RUNS"):
        assert name in message
    assert "'tls'" in message
    assert "pw-Zz9" not in message


def test_secrets_are_masked_and_listed_for_redaction() -> None:
    settings = load_settings(SharedSettings, {"SMTP_PASSWORD": "smtp-Q1", "REGISTRY_PASSWORD": "reg-Q2"})
    assert "smtp-Q1" not in repr(settings) and "reg-Q2" not in str(settings)
    assert sorted(settings.secret_values()) == ["reg-Q2", "smtp-Q1"]


def test_the_environment_wins_over_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SMTP_HOST=from-file\nSMTP_PORT=2525\n")
    merged = read_environment(env_file, {"SMTP_HOST": "from-environment"})
    settings = load_settings(SharedSettings, merged)
    assert (settings.smtp_host, settings.smtp_port) == ("from-environment", 2525)
    assert read_environment(tmp_path / "missing.env", {}) == {}
