"""``cd-agent status`` of several apps, in-process: every app listed, ``--app`` narrowing, today's JSON for one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cd_agent.apps import load_targets
from cd_agent.cli import main
from cd_agent.state import DeployState, Release

APPS = '[apps.web]\nimage = "127.0.0.1:5000/me/web"\n\n[apps.bot]\nimage = "127.0.0.1:5000/me/bot"\n'
ONE_APP_KEYS = {
    "image", "container", "current", "previous", "quarantined", "last_poll_at", "next_poll_at", "last_error",
    "deploy_in_progress",
}


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CD_APPS_FILE", "CD_IMAGE", "CD_CONTAINER_NAME", "STATE_DIR", "LOG_DIR"):
        monkeypatch.delenv(name, raising=False)  # the settings come from the file below only
    apps = tmp_path / "apps.toml"
    apps.write_text(APPS)
    path = tmp_path / ".env"
    path.write_text(f"CD_APPS_FILE={apps}\nSTATE_DIR={tmp_path / 'state'}\nLOG_DIR={tmp_path / 'logs'}\n")
    for app in load_targets({"CD_APPS_FILE": str(apps), "STATE_DIR": str(tmp_path / "state")}).apps:
        with DeployState(app.paths.state) as state:
            state.record_deployed(Release("1.4.0" if app.name == "web" else "2.0.0"), Release("1.3.0"))
            if app.name == "bot":
                state.quarantine("2.0.1", "health check failed")
    return path


def test_status_lists_every_app(env_file, capsys):
    assert main(["--env-file", str(env_file), "status"]) == 0
    out = capsys.readouterr().out
    assert out.count("last deploy") == 2
    assert "web" in out and "1.4.0" in out and "bot" in out and "2.0.1 since" in out


def test_status_json_of_one_app_answers_what_it_always_did(env_file, capsys):
    assert main(["--env-file", str(env_file), "status", "--json", "--app", "bot"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == ONE_APP_KEYS
    assert answer["current"]["version"] == "2.0.0" and answer["quarantined"][0]["version"] == "2.0.1"


def test_status_json_of_every_app_lists_them_by_name(env_file, capsys):
    assert main(["--env-file", str(env_file), "status", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    listed = [(item["app"], item["current"]["version"]) for item in answer["apps"]]
    assert listed == [("web", "1.4.0"), ("bot", "2.0.0")]


def test_an_unknown_app_is_a_clear_error(env_file, capsys):
    assert main(["--env-file", str(env_file), "status", "--app", "nope"]) == 2
    assert "no app named 'nope': the configured apps are web, bot" in capsys.readouterr().err


def test_rollback_of_several_apps_needs_app(env_file, capsys):
    assert main(["--env-file", str(env_file), "rollback"]) == 2
    assert "2 apps are configured (web, bot): say which with --app NAME" in capsys.readouterr().err
