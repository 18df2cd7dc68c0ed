"""CiSettings from plain dicts: defaults, and a SettingsError naming each bad or missing variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_agent.settings import CiSettings
from ci_agent.targets import env_target
from shared.errors import SettingsError
from shared.settings import load_settings

SECRET = "s3cr3t-webhook-value-Zq9"


def environ(**overrides: str) -> dict[str, str]:
    base = {
        "CI_REPO_URL": "https://github.com/octocat/hello-world.git",
        "CI_IMAGE": "docker.io/octocat/hello-world",
        "CI_WEBHOOK_SECRET": SECRET,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value != "<unset>"}


def load(**overrides: str) -> CiSettings:
    return load_settings(CiSettings, environ(**overrides))


def rejected(**overrides: str) -> str:
    with pytest.raises(SettingsError) as info:
        load(**overrides)
    message = str(info.value)
    assert SECRET not in message
    return message


def test_defaults_follow_design():
    settings = load()
    assert settings.ci_branch == "main"
    assert settings.ci_test_command == "pytest -q"
    assert settings.ci_test_runner == "docker"
    assert settings.ci_host == "0.0.0.0"  # noqa: S104 - the documented default
    assert settings.ci_port == 8000
    assert settings.ci_initial_version == "0.1.0"
    assert settings.ci_allow_unsigned is False
    assert settings.log_dir == Path("logs/ci")
    assert settings.state_dir == Path("state/ci")
    assert settings.work_dir == Path("state/ci/work")
    assert settings.ci_webhook_secret is not None
    assert settings.ci_webhook_secret.get_secret_value() == SECRET


def test_values_are_read_and_cast():
    settings = load(
        CI_BRANCH="release/1.x",
        CI_GITHUB_REPO="octocat/Hello-World",
        CI_IMAGE="127.0.0.1:5000/octocat/app",
        CI_TEST_RUNNER="host",
        CI_TEST_TIMEOUT="12.5",
        CI_PORT="9001",
        CI_INITIAL_VERSION="1.0.0",
        STATE_DIR="/srv/ci",
    )
    assert settings.ci_branch == "release/1.x"
    assert settings.ci_github_repo == "octocat/Hello-World"
    assert settings.ci_image == "127.0.0.1:5000/octocat/app"
    assert settings.ci_test_runner == "host"
    assert settings.ci_test_timeout == 12.5
    assert settings.ci_port == 9001
    assert settings.ci_initial_version == "1.0.0"
    assert settings.work_dir == Path("/srv/ci/work")


def test_work_dir_can_be_set():
    assert load(CI_WORK_DIR="/tmp/ci-work").work_dir == Path("/tmp/ci-work")


def test_secret_never_in_repr_or_str():
    settings = load()
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET in settings.secret_values()


def test_the_token_in_the_repository_url_is_a_secret():
    url = "https://x-access-token:ghp%2Fshort-url-token-7@github.com/octocat/hello-world.git"
    values = load(CI_REPO_URL=url).secret_values()
    assert "ghp%2Fshort-url-token-7" in values and "ghp/short-url-token-7" in values
    assert "x-access-token" not in values
    # A password too short to mask without masking ordinary words, and a URL without one.
    assert load(CI_REPO_URL="https://u:abc@github.com/o/r.git").secret_values() == [SECRET]
    assert load().secret_values() == [SECRET]


@pytest.mark.parametrize("variable", ["CI_REPO_URL", "CI_IMAGE"])
def test_required_variables(variable):
    assert variable in rejected(**{variable: "<unset>"})


@pytest.mark.parametrize("value", ["<unset>", "", "   "])
def test_secret_required_unless_unsigned_allowed(value):
    message = rejected(CI_WEBHOOK_SECRET=value)
    assert "CI_WEBHOOK_SECRET" in message
    assert "CI_ALLOW_UNSIGNED" in message


def test_unsigned_allowed_without_secret():
    settings = load(CI_WEBHOOK_SECRET="<unset>", CI_ALLOW_UNSIGNED="true")
    assert settings.ci_allow_unsigned is True
    assert settings.ci_webhook_secret is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CI_BRANCH", "--upload-pack=touch x"),
        ("CI_BRANCH", "feature..x"),
        ("CI_BRANCH", "has space"),
        ("CI_BRANCH", "a@{1}"),
        ("CI_BRANCH", "trailing/"),
        ("CI_BRANCH", "x.lock"),
        ("CI_GITHUB_REPO", "just-a-name"),
        ("CI_GITHUB_REPO", "https://github.com/o/r"),
        ("CI_IMAGE", "docker.io/owner/app:1.0.0"),
        ("CI_IMAGE", "Owner/App"),
        ("CI_IMAGE", "docker.io/owner/app@sha256:abc"),
        ("CI_INITIAL_VERSION", "v0.1.0"),
        ("CI_INITIAL_VERSION", "1.0"),
        ("CI_INITIAL_VERSION", "01.0.0"),
        ("CI_TEST_RUNNER", "podman"),
        ("CI_PORT", "0"),
        ("CI_PORT", "70000"),
        ("CI_PORT", "http"),
        ("CI_TEST_TIMEOUT", "0"),
        ("CI_ALLOW_UNSIGNED", "maybe"),
        ("CI_PUSH_ATTEMPTS", "0"),
        ("CI_REPO_URL", " "),
        ("CI_BUILD_ARGS", "NO_EQUALS_SIGN"),
        ("CI_BUILD_ARGS", "A=1,1BAD=x"),
    ],
)
def test_bad_value_names_the_variable(variable, value):
    message = rejected(**{variable: value})
    assert variable in message


def test_several_bad_values_are_all_named():
    message = rejected(CI_PORT="-1", CI_TEST_RUNNER="vm")
    assert "CI_PORT" in message
    assert "CI_TEST_RUNNER" in message


def test_secret_not_echoed_when_another_value_is_bad():
    message = rejected(CI_PORT="x", CI_WEBHOOK_SECRET=SECRET)
    assert "CI_PORT" in message


def test_image_is_parsed_for_the_registry():
    image = env_target(load(CI_IMAGE="127.0.0.1:5000/octocat/app")).image
    assert image.registry == "127.0.0.1:5000"
    assert image.repository == "octocat/app"
    assert env_target(load(CI_IMAGE="octocat/app")).image.registry == "docker.io"


def test_build_args_are_parsed_into_a_dict():
    settings = load(CI_BUILD_ARGS="BASE_IMAGE=local/py:3.11, EMPTY=,X=a=b")
    assert settings.build_args == {"BASE_IMAGE": "local/py:3.11", "EMPTY": "", "X": "a=b"}
    assert load().build_args == {}


def test_platforms_are_parsed_once_in_order():
    settings = load(CI_PLATFORMS="linux/arm64, linux/arm/v7,linux/amd64", CI_TEST_PLATFORMS="linux/arm64")
    assert [str(item) for item in settings.platforms] == ["linux/arm64", "linux/arm/v7", "linux/amd64"]
    assert [str(item) for item in settings.test_platforms] == ["linux/arm64"]
    assert load().platforms == () and load().test_platforms == ()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"CI_PLATFORMS": "arm64"}, "CI_PLATFORMS"),
        ({"CI_PLATFORMS": "linux/arm64,linux/aarch64"}, "named twice"),
        ({"CI_PLATFORMS": "linux/arm64", "CI_TEST_PLATFORMS": "linux/arm/v7"}, "linux/arm/v7, which CI_PLATFORMS"),
        ({"CI_TEST_PLATFORMS": "linux/arm64", "CI_TEST_RUNNER": "host"}, "CI_TEST_RUNNER=docker"),
        ({"CI_BUILD_DOCKER_HOST": "buildbox:2375"}, "CI_BUILD_DOCKER_HOST"),
        ({"CI_BUILDER": "kaniko"}, "CI_BUILDER"),
        ({"CI_BUILDER": "buildx", "CI_BUILD_DOCKER_HOST": "tcp://10.0.0.5:2376"}, "buildx builds on the local engine"),
    ],
)
def test_bad_platform_and_build_host_settings_are_named(overrides: dict[str, str], expected: str):
    assert expected in rejected(**overrides)


def test_ci_builder_defaults_to_auto_and_reaches_the_target():
    assert load().ci_builder == "auto" and env_target(load()).builder == "auto"
    assert env_target(load(CI_BUILDER="classic")).builder == "classic"
    # auto with a remote engine is allowed: that engine builds with its classic builder
    assert load(CI_BUILDER="auto", CI_BUILD_DOCKER_HOST="tcp://10.0.0.5:2376").ci_builder == "auto"


def test_build_docker_host_takes_docker_addresses():
    assert load(CI_BUILD_DOCKER_HOST="tcp://10.0.0.5:2376").ci_build_docker_host == "tcp://10.0.0.5:2376"
    assert load(CI_BUILD_DOCKER_HOST="unix:///run/other.sock", CI_BUILD_FALLBACK_LOCAL="true").ci_build_fallback_local
    assert load(CI_BUILD_DOCKER_HOST="").ci_build_docker_host is None
