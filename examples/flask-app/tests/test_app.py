from __future__ import annotations

import pytest
from flask.testing import FlaskClient

import app as sample


@pytest.fixture
def client() -> FlaskClient:
    return sample.create_app().test_client()


def test_greets_with_the_version_file(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_VERSION", raising=False)
    expected = (sample.HERE / "VERSION").read_text().strip()
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.get_json()["version"] == expected
    assert expected in answer.get_json()["message"]


def test_app_version_overrides_the_file(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_VERSION", "9.9.9")
    assert client.get("/").get_json()["version"] == "9.9.9"


def test_healthy_when_configured(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in sample.REQUIRED_SETTINGS:
        monkeypatch.setenv(name, "configured")
    answer = client.get("/healthz")
    assert (answer.status_code, answer.get_json()["status"]) == (200, "ok")


def test_unhealthy_while_a_required_setting_is_missing(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sample, "REQUIRED_SETTINGS", ("SAMPLE_REQUIRED",))
    monkeypatch.delenv("SAMPLE_REQUIRED", raising=False)
    answer = client.get("/healthz")
    assert answer.status_code == 500
    assert answer.get_json()["missing"] == ["SAMPLE_REQUIRED"]
