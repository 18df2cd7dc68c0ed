"""RepoTarget records from the environment or CI_REPOS_FILE: the key rule, paths, and every refusal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ci_agent import cli
from ci_agent.failed_tests import tests_key as failed_tests_key
from ci_agent.settings import CiSettings
from ci_agent.targets import REPO_KEYS, RepoPaths, RepoTargets, env_repo_name, load_targets
from shared.errors import SettingsError
from shared.settings import load_settings

SECRET = "whsec-targets-Hq2-never-shown"
ORG_SECRET = "whsec-org-Lm7-never-shown"
TOKEN = "ghp_targets_Zx8_never_shown"

THREE = f"""
[repos.web]
repo_url = "https://github.com/me/web.git"
github_repo = "me/web"
image = "127.0.0.1:5000/me/web"
webhook_secret = "{SECRET}"
test_timeout = 90
build_args = ["BASE_IMAGE=local/busybox", "X=1"]

[repos.api]
repo_url = "https://github.com/org/api.git"
github_repo = "org/api"
image = "127.0.0.1:5000/org/api"
webhook_secret = "{ORG_SECRET}"
branch = "trunk"
github_token = "{TOKEN}"
poll_interval = 30

[repos.docs]
repo_url = "https://github.com/org/docs.git"
github_repo = "org/docs"
image = "127.0.0.1:5000/org/docs"
webhook_secret = "{ORG_SECRET}"
test_runner = "host"
registry_username = "docs-bot"
"""


def repos_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "repos.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def environ(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"LOG_DIR": str(tmp_path / "logs"), "STATE_DIR": str(tmp_path / "state"), **values}


def load(env: dict[str, str]) -> RepoTargets:
    return load_targets(load_settings(CiSettings, env), env)


def refused(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        load(env)
    message = str(info.value)
    for secret in (SECRET, ORG_SECRET, TOKEN):
        assert secret not in message
    return message


def test_without_a_file_the_environment_is_one_repository_with_the_paths_of_before(tmp_path):
    env = environ(tmp_path, CI_REPO_URL="https://github.com/Codertocat/Hello-World.git",
                  CI_IMAGE="127.0.0.1:5000/codertocat/app", CI_GITHUB_REPO="Codertocat/Hello-World",
                  CI_WEBHOOK_SECRET=SECRET)
    targets = load(env)
    assert not targets.from_file
    assert targets.names == ["hello-world"]
    target = targets.first
    assert target.paths == RepoPaths(tmp_path / "logs", tmp_path / "state", tmp_path / "state" / "work")
    assert target.paths.revisions_file == tmp_path / "state" / "release-revisions.json"
    assert target.paths.poll_refs_file == tmp_path / "state" / "poll-refs.json"
    assert target.paths.checkout_dir == tmp_path / "state" / "work" / "checkout"
    assert target.webhook_secret is not None and target.webhook_secret.get_secret_value() == SECRET
    assert not target.from_file


@pytest.mark.parametrize(
    ("github_repo", "image", "name"),
    [
        ("Codertocat/Hello-World", "me/app", "hello-world"),
        (None, "127.0.0.1:5000/owner/my_app.v2", "my_app.v2"),
        (None, "docker.io/owner/app", "app"),
    ],
)
def test_the_environment_repository_is_named_after_its_github_name_else_its_image(github_repo, image, name):
    values = {"ci_repo_url": "https://x/y.git", "ci_image": image, "ci_allow_unsigned": True}
    if github_repo:
        values["ci_github_repo"] = github_repo
    assert env_repo_name(CiSettings(**values)) == name


def test_each_table_is_one_repository_by_the_key_rule_with_paths_of_its_own(tmp_path):
    path = repos_file(tmp_path, THREE)
    targets = load(environ(tmp_path, CI_REPOS_FILE=str(path), REGISTRY_USERNAME="env-user",
                           CI_WORK_DIR=str(tmp_path / "work")))
    assert targets.from_file
    assert targets.names == ["web", "api", "docs"]
    web, api, docs = targets
    assert (web.branch, web.test_timeout) == ("main", 90.0)
    assert dict(web.build_args) == {"BASE_IMAGE": "local/busybox", "X": "1"}
    assert (web.test_command, web.test_runner, web.initial_version) == ("pytest -q", "docker", "0.1.0")
    assert (api.branch, api.poll_interval) == ("trunk", 30.0)
    assert api.github_token is not None and api.github_token.get_secret_value() == TOKEN
    assert web.github_token is None
    assert docs.test_runner == "host"
    # registry_username: the table's, else the environment's REGISTRY_USERNAME.
    assert (web.registry_username, docs.registry_username) == ("env-user", "docs-bot")
    assert web.paths == RepoPaths(tmp_path / "logs" / "web", tmp_path / "state" / "repos" / "web",
                                  tmp_path / "work" / "web")
    assert docs.paths.checkout_dir == tmp_path / "work" / "docs" / "checkout"
    assert all(t.from_file for t in targets)
    assert targets.get("api") is api and targets.get("nope") is None
    assert set(targets.secret_values()) == {SECRET, ORG_SECRET, TOKEN}


def test_every_per_repository_variable_is_a_key():
    fields = set(CiSettings.model_fields)
    for key in REPO_KEYS:
        assert key in fields or f"ci_{key}" in fields, key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[repos.web]\nrepo_url = "https://x/web.git"\nimage = "me/web"\nwebhook_secret = "s"\ntest_timeout = "soon"\n',
         "[repos.web] test_timeout='soon':"),
        ('[repos.web]\nrepo_url = "https://x/web.git"\nwebhook_secret = "s"\n',
         "[repos.web] image is required but not set"),
        ('[repos.web]\nrepo_url = "https://x/web.git"\nimage = "me/web"\n', "CI_WEBHOOK_SECRET is required"),
        ('[repos.web]\nrepo_url = "https://x/web.git"\nimage = "me/web"\nwebhook_secret = "s"\nport = 9000\n',
         "[repos.web] unknown key(s) 'port'"),
        ('[repos.Web]\nimage = "me/web"\n', "[repos.Web] name 'Web' is not valid"),
        ('[repos.web]\nrepo_url = "https://x/web.git"\nimage = "me/web:1.0"\nwebhook_secret = "s"\n',
         "[repos.web] image='me/web:1.0': must be an image name without a tag"),
        ("[repos.web\n", "not valid TOML"),
        ("", "defines no [repos.NAME] table"),
        ('[repos.a]\nrepo_url = "https://x/a.git"\nimage = "me/a"\nwebhook_secret = "s"\n'
         '[repos.b]\nrepo_url = "https://x/b.git"\nimage = "me/b"\nwebhook_secret = "s"\ngithub_repo = "me/b"\n',
         "[repos.a] needs github_repo"),
        ('[repos.a]\nrepo_url = "https://x/a.git"\nimage = "me/a"\nwebhook_secret = "s"\ngithub_repo = "Me/B"\n'
         '[repos.b]\nrepo_url = "https://x/b.git"\nimage = "me/b"\nwebhook_secret = "s"\ngithub_repo = "me/b"\n',
         "[repos.a] and [repos.b] both have github_repo"),
        ('[repos.a]\nrepo_url = "https://x/a.git"\nimage = "me/x"\nwebhook_secret = "s"\ngithub_repo = "me/a"\n'
         '[repos.b]\nrepo_url = "https://x/b.git"\nimage = "me/x"\nwebhook_secret = "s"\ngithub_repo = "me/b"\n',
         "both push image"),
    ],
)
def test_a_bad_file_is_refused_naming_the_table_and_key(tmp_path, text, expected):
    path = repos_file(tmp_path, text)
    message = refused(environ(tmp_path, CI_REPOS_FILE=str(path)))
    assert expected in message
    assert "CI_REPOS_FILE=" in message or "[repos." in message


def test_a_file_with_secrets_others_can_read_is_refused(tmp_path):
    path = repos_file(tmp_path, THREE, mode=0o644)
    message = refused(environ(tmp_path, CI_REPOS_FILE=str(path)))
    assert "chmod 600" in message
    assert "[repos.web] webhook_secret" in message


def test_a_missing_file_is_refused(tmp_path):
    assert "no such file" in refused(environ(tmp_path, CI_REPOS_FILE=str(tmp_path / "nope.toml")))


def test_per_repository_variables_beside_a_file_are_refused(tmp_path):
    path = repos_file(tmp_path, THREE)
    message = refused(environ(tmp_path, CI_REPOS_FILE=str(path), CI_IMAGE="me/other", CI_BRANCH="dev"))
    assert "CI_BRANCH, CI_IMAGE set in the environment" in message


def test_agent_wide_settings_stay_in_the_environment(tmp_path):
    path = repos_file(tmp_path, THREE)
    settings = load_settings(CiSettings, environ(tmp_path, CI_REPOS_FILE=str(path), CI_MAX_PARALLEL_RUNS="2"))
    assert settings.ci_max_parallel_runs == 2
    assert settings.ci_repo_url is None and settings.ci_image is None
    assert "CI_MAX_PARALLEL_RUNS='0'" in str(
        pytest.raises(SettingsError, load_settings, CiSettings,
                      environ(tmp_path, CI_REPOS_FILE=str(path), CI_MAX_PARALLEL_RUNS="0")).value
    )


def test_the_command_line_says_what_is_wrong_and_exits_2(tmp_path, monkeypatch, capsys):
    path = repos_file(tmp_path, '[repos.web]\nrepo_url = "https://x/web.git"\nimage = "me/web"\nnope = 1\n')
    for name, value in environ(tmp_path, CI_REPOS_FILE=str(path)).items():
        monkeypatch.setenv(name, value)
    assert cli.main(["--env-file", str(tmp_path / "none.env"), "serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ci-agent: error: CI_REPOS_FILE=")
    assert "[repos.web] unknown key(s) 'nope'" in err


def test_run_with_an_unknown_repository_names_the_configured_ones_and_exits_2(tmp_path, monkeypatch, capsys):
    path = repos_file(tmp_path, THREE)
    for name, value in environ(tmp_path, CI_REPOS_FILE=str(path)).items():
        monkeypatch.setenv(name, value)
    assert cli.main(["--env-file", str(tmp_path / "none.env"), "run", "--repo", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no repository named 'nope'; configured: web, api, docs" in err


TWO_PLATFORMS = """
[repos.pi]
repo_url = "https://github.com/me/pi.git"
github_repo = "me/pi"
image = "127.0.0.1:5000/me/pi"
webhook_secret = "s"
platforms = ["linux/amd64", "linux/arm64"]
test_platforms = "linux/arm64"
build_docker_host = "tcp://10.0.0.5:2376"
build_fallback_local = true

[repos.plain]
repo_url = "https://github.com/me/plain.git"
github_repo = "me/plain"
image = "127.0.0.1:5000/me/plain"
webhook_secret = "s"
"""


def test_platforms_and_the_build_engine_are_keys_of_each_repository(tmp_path):
    path = repos_file(tmp_path, TWO_PLATFORMS)
    pi, plain = load(environ(tmp_path, CI_REPOS_FILE=str(path)))
    assert [str(item) for item in pi.platforms] == ["linux/amd64", "linux/arm64"]
    assert [str(item) for item in pi.test_platforms] == ["linux/arm64"]
    assert (pi.build_host, pi.fallback_local) == ("tcp://10.0.0.5:2376", True)
    # The other repository keeps the defaults: its engine's own platform, the local engine.
    assert (plain.platforms, plain.test_platforms, plain.build_host, plain.fallback_local) == ((), (), None, False)


def test_without_a_file_the_platform_variables_make_the_one_repository(tmp_path):
    (target,) = load(environ(tmp_path, CI_REPO_URL="https://x/web.git", CI_IMAGE="me/web", CI_WEBHOOK_SECRET="s",
                             CI_PLATFORMS="linux/arm64,linux/amd64", CI_BUILD_DOCKER_HOST="unix:///run/b.sock",
                             CI_BUILD_FALLBACK_LOCAL="true"))
    assert [str(item) for item in target.platforms] == ["linux/arm64", "linux/amd64"]
    assert (target.build_host, target.fallback_local) == ("unix:///run/b.sock", True)


def test_the_remembered_failed_tests_key_is_each_repositorys_own(tmp_path):
    path = repos_file(tmp_path, TWO_PLATFORMS)
    pi, plain = load(environ(tmp_path, CI_REPOS_FILE=str(path)))
    # Same test settings otherwise: only pi's own platforms make its key differ.
    assert failed_tests_key(pi) != failed_tests_key(plain)
    # A repository without platforms keeps the key it had before the keys existed.
    assert failed_tests_key(plain) == failed_tests_key(replace(pi, platforms=(), test_platforms=()))


_TABLE = '[repos.web]\nrepo_url = "https://x/web.git"\nimage = "me/web"\nwebhook_secret = "s"\n'


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ('platforms = "arm64"\n', "[repos.web] platforms='arm64':"),
        ('platforms = ["linux/arm64", "linux/aarch64"]\n', "[repos.web] platforms='linux/arm64,linux/aarch64':"),
        ('platforms = ["linux/arm64"]\ntest_platforms = ["linux/arm/v7"]\n',
         "[repos.web] test_platforms='linux/arm/v7': names linux/arm/v7, which CI_PLATFORMS (a repos file's "
         "platforms) does not release"),
        ('test_platforms = ["linux/arm64"]\ntest_runner = "host"\n', "[repos.web] test_platforms='linux/arm64': needs"),
        ('build_docker_host = "buildbox:2375"\n', "[repos.web] build_docker_host='buildbox:2375': must be a Docker"),
        ('build_fallback_local = "perhaps"\n', "[repos.web] build_fallback_local='perhaps':"),
        ('platforms = 5\n', "[repos.web] platforms=5:"),
    ],
)
def test_bad_platform_and_build_engine_keys_are_named(tmp_path, keys, expected):
    path = repos_file(tmp_path, _TABLE + keys)
    assert expected in refused(environ(tmp_path, CI_REPOS_FILE=str(path)))


def test_platform_variables_beside_a_file_are_refused(tmp_path):
    path = repos_file(tmp_path, TWO_PLATFORMS)
    message = refused(environ(tmp_path, CI_REPOS_FILE=str(path), CI_PLATFORMS="linux/arm64",
                              CI_BUILD_DOCKER_HOST="unix:///run/b.sock"))
    assert "CI_PLATFORMS, CI_BUILD_DOCKER_HOST set in the environment" in message
