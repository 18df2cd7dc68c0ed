"""CI_BUILDER's choice for a run (ci_agent/buildx.py): which builder, the log line that says so, the refusals, and
what `ci-agent doctor` says of it."""

from __future__ import annotations

import pytest

from ci_agent.buildx import BuildxCli, buildx_version, choose_builder
from ci_agent.doctor import builder_finding
from ci_agent.errors import StepFailed
from ci_agent.settings import CiSettings
from ci_agent.targets import RepoTarget, env_target
from shared.settings import load_settings


def present() -> str | None:
    return "0.13.1+ds1"


def absent() -> str | None:
    return None


def test_auto_takes_buildx_when_the_local_cli_has_it():
    choice = choose_builder("auto", None, timeout=60, probe=present)
    assert isinstance(choice.buildx, BuildxCli)
    assert (choice.buildx.version, choice.buildx.timeout) == ("0.13.1+ds1", 60)
    assert choice.says.startswith("builder: docker buildx 0.13.1+ds1 (")


def test_auto_falls_back_to_the_classic_builder_and_says_why():
    choice = choose_builder("auto", None, probe=absent)
    assert choice.buildx is None
    assert "classic builder" in choice.says and "no `docker buildx` on this machine" in choice.says


def test_a_remote_build_engine_builds_classic_without_asking_the_cli():
    def never() -> str | None:
        raise AssertionError("the local CLI is not asked for a remote engine")

    choice = choose_builder("auto", "ssh://ci@buildbox", probe=never)
    assert choice.buildx is None and "ssh://ci@buildbox" in choice.says


def test_classic_never_asks():
    def never() -> str | None:
        raise AssertionError("CI_BUILDER=classic does not probe")

    choice = choose_builder("classic", None, probe=never)
    assert choice.buildx is None and "CI_BUILDER=classic" in choice.says


@pytest.mark.parametrize(
    ("host", "probe", "expected"),
    [
        (None, absent, "`docker buildx version` does not answer"),
        ("tcp://buildbox:2376", present, "builds on the local engine only"),
    ],
)
def test_buildx_insisted_on_fails_the_step_about_to_build_with_the_reason(host, probe, expected):
    with pytest.raises(StepFailed) as info:
        choose_builder("buildx", host, step="test", probe=probe)
    assert info.value.step == "test" and expected in info.value.message


def test_no_docker_program_means_no_buildx():
    assert buildx_version("picicd-no-such-docker-program") is None


def _targets(**overrides: str) -> list[RepoTarget]:
    return [env_target(load_settings(CiSettings, {
        "CI_REPO_URL": "https://github.com/octocat/hello-world.git", "CI_IMAGE": "docker.io/octocat/hello-world",
        "CI_ALLOW_UNSIGNED": "true", **overrides,
    }))]


@pytest.mark.parametrize(
    ("overrides", "probe", "expected"),
    [
        ({"CI_PLATFORMS": "linux/arm64"}, present, ("ok", "docker buildx 0.13.1+ds1")),
        ({"CI_PLATFORMS": "linux/arm64"}, absent, ("ok", "the classic builder (no `docker buildx`")),
        ({"CI_PLATFORMS": "linux/arm64", "CI_BUILDER": "buildx"}, absent, ("FAIL", "does not answer")),
        ({"CI_TEST_PLATFORMS": "linux/arm64", "CI_BUILDER": "buildx"}, present, ("ok", "docker buildx")),
    ],
)
def test_doctor_says_what_builds_the_platforms(overrides, probe, expected):
    finding = builder_finding(_targets(**overrides), probe)
    assert finding is not None
    assert finding.level == expected[0] and expected[1] in finding.detail
    if finding.level == "FAIL":
        assert "scripts/buildx" in finding.fix


@pytest.mark.parametrize(
    "overrides",
    [{}, {"CI_PLATFORMS": "linux/arm64", "CI_BUILDER": "classic"},
     {"CI_PLATFORMS": "linux/arm64", "CI_BUILD_DOCKER_HOST": "tcp://buildbox:2376"}],
)
def test_doctor_has_no_builder_line_without_local_platform_builds(overrides):
    def never() -> str | None:
        raise AssertionError("not asked")

    assert builder_finding(_targets(**overrides), never) is None
