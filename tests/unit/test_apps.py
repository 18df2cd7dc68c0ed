"""The apps of one cd-agent: the apps file and the environment's one app, as AppTarget values with paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cd_agent.apps import APP_KEYS, AppPaths, check_at_start, load_targets
from cd_agent.compose_project import SubprocessCompose
from cd_agent.report import DeployReport, render_email
from cd_agent.settings import PortMapping, VolumeMount
from cd_agent.state import DeployState
from shared.errors import SettingsError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cd-state-before-apps"

APPS = """
[apps.web]
image = "127.0.0.1:5000/me/web"
ports = ["127.0.0.1:8080:80"]
strategy = "blue-green"
health_url = "http://127.0.0.1:8080/healthz"
poll_interval = 30

[apps.bot]
image = "127.0.0.1:5000/me/bot"
version_constraint = "<2.0.0"
volumes = "bot-data:/data"
notify_to = ["bot-owner@example.org"]
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "apps.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"STATE_DIR": str(tmp_path / "state"), "LOG_DIR": str(tmp_path / "logs"), **extra}


def test_each_table_is_one_app_with_its_values_parsed_once(tmp_path):
    targets = load_targets(environ(tmp_path, CD_APPS_FILE=str(write(tmp_path, APPS)), NOTIFY_TO="me@example.org"))

    web, bot = targets.apps
    assert (web.name, web.container_name, web.strategy, web.poll_interval) == ("web", "web", "blue-green", 30.0)
    assert web.image.name == "127.0.0.1:5000/me/web"
    assert web.ports == (PortMapping("127.0.0.1", 8080, 80),)
    assert web.notify_to == ("me@example.org",)  # the agent's, not overridden
    assert (bot.strategy, bot.poll_interval, bot.health_url) == ("swap", 60.0, None)  # today's defaults
    assert bot.constraint is not None and not bot.constraint.allows("2.0.0")
    assert bot.volumes == (VolumeMount("bot-data", "/data"),)
    assert bot.notify_to == ("bot-owner@example.org",)
    assert targets.settings_of(bot).notify_to == ("bot-owner@example.org",)


def test_each_app_has_its_own_state_and_log_folder(tmp_path):
    targets = load_targets(environ(tmp_path, CD_APPS_FILE=str(write(tmp_path, APPS))))

    web = targets.app("web")
    assert web.paths == AppPaths(tmp_path / "state" / "apps" / "web", tmp_path / "logs" / "web")
    assert web.paths.state == tmp_path / "state" / "apps" / "web" / "cd.sqlite3"
    assert web.paths.lock.parent == web.paths.proxy_state.parent == web.paths.runs.parent == web.paths.state_dir


def test_without_a_file_the_environment_is_one_app_whose_state_stays_where_it_was(tmp_path):
    targets = load_targets(environ(tmp_path, CD_IMAGE="127.0.0.1:5000/me/web", CD_CONTAINER_NAME="Web-App"))

    (app,) = targets.apps
    assert (app.name, app.container_name) == ("web-app", "Web-App")
    assert app.paths == AppPaths(tmp_path / "state", tmp_path / "logs")
    assert targets.app(None) is app


def test_an_agent_upgraded_in_place_keeps_its_versions_and_quarantine(tmp_path):
    """A state folder laid out by the agent before many apps: same versions, quarantine and last poll."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    shutil.copy(FIXTURES / "cd.sqlite3", state_dir / "cd.sqlite3")
    (app,) = load_targets(environ(tmp_path, CD_IMAGE="127.0.0.1:5000/me/web", CD_CONTAINER_NAME="web")).apps

    with DeployState(app.paths.state) as state:
        assert state.current is not None and state.current.version == "1.4.0"
        assert state.previous is not None and state.previous.version == "1.3.0"
        assert list(state.quarantined) == ["1.5.0"]
        assert state.to_json()["last_poll_at"] == "2026-12-07T16:00:00+00:00"


def test_a_deploy_interrupted_before_the_upgrade_is_still_read_and_the_journal_learns_its_strategy(tmp_path):
    path = tmp_path / "cd.sqlite3"
    shutil.copy(FIXTURES / "mid-deploy.sqlite3", path)

    with DeployState(path) as state:
        journal = state.journal
        assert journal is not None and (journal.version, journal.phase, journal.strategy) == ("1.5.0", "created", None)
        state.update_journal(strategy="swap")
        assert state.journal is not None and state.journal.strategy == "swap"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[apps.web]\nimage = "r/me/web"\npoll_interval = "soon"\n', "[apps.web] poll_interval='soon'"),
        ('[apps.web]\nimage = "r/me/web"\nstrategy = "canary"\n', "[apps.web] strategy='canary'"),
        ('[apps.web]\nports = ["8080:80"]\n', "[apps.web] image is required but not set"),
        ('[apps.web]\nimage = "r/me/web"\nimgae = "x"\n', "[apps.web] unknown key(s) 'imgae'"),
        ('[apps.web]\nimage = "r/me/web"\nmax_parallel_deploys = 2\n', "unknown key(s) 'max_parallel_deploys'"),
        ('[apps.web]\nimage = "r/me/web:1.0"\n', "[apps.web] image="),
        ('[apps.web]\nimage = "r/me/web"\nstrategy = "blue-green"\n', "blue-green strategy needs at least one"),
        ('[apps.web]\nimage = "r/a"\n\n[apps.api]\nimage = "r/b"\ncontainer_name = "web"\n',
         "[apps.api] and [apps.web] both use container web"),
        ('[apps.aa]\nimage = "r/a"\nports = "8080:80"\n\n[apps.bb]\nimage = "r/b"\nports = "8080:81"\n',
         "both use host port *:8080/tcp"),
    ],
)
def test_a_bad_file_is_one_message_naming_the_app_and_the_key(tmp_path, text, message):
    with pytest.raises(SettingsError) as caught:
        load_targets(environ(tmp_path, CD_APPS_FILE=str(write(tmp_path, text))))
    assert message in str(caught.value)
    assert "CD_APPS_FILE=" in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_registry_password_in_a_file_others_can_read_is_refused(tmp_path):
    text = '[apps.web]\nimage = "r/me/web"\nregistry_username = "me"\nregistry_password = "s3cret"\n'
    with pytest.raises(SettingsError) as caught:
        load_targets(environ(tmp_path, CD_APPS_FILE=str(write(tmp_path, text, 0o644))))
    assert "chmod 600" in str(caught.value) and "s3cret" not in str(caught.value)


def test_an_app_s_registry_password_is_a_secret_of_the_agent(tmp_path):
    text = '[apps.web]\nimage = "r/me/web"\nregistry_username = "me"\nregistry_password = "s3cret"\n'
    targets = load_targets(environ(tmp_path, CD_APPS_FILE=str(write(tmp_path, text))))
    assert "s3cret" in targets.secret_values()
    assert "s3cret" not in repr(targets.app("web"))
    assert targets.app("web").registry_auth == {"username": "me", "password": "s3cret"}


def test_per_app_variables_beside_an_apps_file_are_an_error_not_ignored(tmp_path):
    with pytest.raises(SettingsError, match="CD_IMAGE set in the environment while CD_APPS_FILE"):
        load_targets(environ(tmp_path, CD_APPS_FILE=str(write(tmp_path, APPS)), CD_IMAGE="r/me/other"))


def test_an_unknown_app_and_a_missing_app_name_are_clear_errors(tmp_path):
    targets = load_targets(environ(tmp_path, CD_APPS_FILE=str(write(tmp_path, APPS))))
    with pytest.raises(SettingsError, match="no app named 'nope': the configured apps are web, bot"):
        targets.app("nope")
    with pytest.raises(SettingsError, match=r"2 apps are configured \(web, bot\): say which with --app NAME"):
        targets.app(None)


def test_every_per_app_setting_is_a_key_and_agent_wide_ones_are_not():
    assert {"image", "ports", "strategy", "poll_interval", "notify_to", "registry_password"} <= set(APP_KEYS)
    assert not {"apps_file", "max_parallel_deploys", "log_dir", "smtp_host"} & set(APP_KEYS)


def test_emails_name_the_app_first(tmp_path):
    deployed = DeployReport("deployed", "1.4.0", "1.3.0", run=3)
    rolled_back = DeployReport("rolled_back", "2.0.1", "2.0.0", "unhealthy", run=4, failed_step="health")
    common = {"image": "r/me/x", "container": "x", "log_path": tmp_path / "run.log"}
    assert render_email(deployed, action="deploy", app="web", **common).subject == "[web] deployed 1.4.0"
    assert (render_email(rolled_back, action="deploy", app="bot", **common).subject
            == "[bot] deploy of 2.0.1 failed: rolled back to 2.0.0")


def test_the_deploy_log_names_what_each_strategy_replaces(tmp_path):
    text = APPS + '\n[apps.fleet]\nimage = "127.0.0.1:5000/me/fleet"\nstrategy = "swarm"\nservice = "fleet-svc"\n'
    web, bot, fleet = load_targets(environ(tmp_path, CD_APPS_FILE=str(write(tmp_path, text)))).apps

    assert (web.runs_as, bot.runs_as) == ("container web", "container bot")
    assert fleet.runs_as == "swarm service fleet-svc"


class _ComposeConfig:
    """A compose whose every command prints ``text`` (``compose config``'s answer)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def run(self, args, *, cwd, timeout):
        return self.text


def test_loading_a_compose_app_runs_no_compose_and_the_start_check_names_the_apps_setting(tmp_path, monkeypatch):
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text("services: {}\n")
    detected: list[str] = []

    def detect(cls):
        detected.append("compose")
        return _ComposeConfig("services:\n  db: {image: 'db:1'}\n")

    monkeypatch.setattr(SubprocessCompose, "detect", classmethod(detect))
    text = f'[apps.web]\nimage = "127.0.0.1:5000/me/web"\nstrategy = "compose"\ncompose_file = "{compose_file}"\n'
    targets = load_targets(environ(tmp_path, CD_APPS_FILE=str(write(tmp_path, text))))

    assert detected == []  # status, the dashboard: no compose
    with pytest.raises(SettingsError, match=r"\[apps.web\] compose_file: the compose project has no service 'web'"):
        check_at_start(targets)
    assert detected == ["compose"]
