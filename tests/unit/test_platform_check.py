"""The watcher and a release with no image for this machine: quarantined once, one line, one email.

Fakes stand in for the registry and the deployer (the logic is pure); the end-to-end test with a real
multi-platform index, Docker and SMTP is tests/integration/test_watch_platforms.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cd_agent.apps import single_target
from cd_agent.errors import DockerUnavailable
from cd_agent.platform_check import PlatformCheck, pull_platform_problem
from cd_agent.settings import CdSettings
from cd_agent.state import DeployState, Release
from cd_agent.watcher import Watcher
from shared.errors import RegistryError, RegistryUnavailable
from shared.notify import Notifier
from shared.platforms import Platform, parse_platform
from shared.settings import load_settings
from shared.testing import RecordingMailer, capture_logs

AMD64 = parse_platform("linux/amd64")


@dataclass
class Registry:
    tags: list[str]
    offered: dict[str, list[str] | None]
    error: Exception | None = None
    asked: list[str] = field(default_factory=list)
    rate_limit: None = None

    def list_tags(self) -> list[str]:
        return self.tags

    def manifest_digest(self, tag: str) -> str | None:
        return f"sha256:{tag}" if tag in self.tags else None

    def platforms(self, reference: str) -> list[Platform] | None:
        self.asked.append(reference)
        if self.error is not None:
            raise self.error
        offered = self.offered[reference.removeprefix("sha256:")]
        return None if offered is None else [parse_platform(item) for item in offered]


@dataclass
class Report:
    outcome: str
    error: str | None = None


@dataclass
class Deployer:
    state: DeployState
    error: str | None = None
    deployed: list[str] = field(default_factory=list)

    def deploy(self, version: str, *, digest: str | None = None, force: bool = False) -> Report:
        self.deployed.append(version)
        if self.error is not None:
            return Report("failed", self.error)
        self.state.record_deployed(Release(version, digest), self.state.current)
        return Report("deployed")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[DeployState]:
    with DeployState(tmp_path / "cd.sqlite3") as state:
        state.set_current(Release("1.1.0"))
        yield state


def make(state: DeployState, registry: Registry, deployer: Deployer, mailer: RecordingMailer,
         host: Platform = AMD64) -> tuple[Watcher, Notifier]:
    settings = load_settings(CdSettings, {"CD_IMAGE": "127.0.0.1:5000/o/app", "CD_CONTAINER_NAME": "app"})
    notifier = Notifier(mailer, attempts=1)
    check = PlatformCheck(lambda: host, registry)
    return Watcher(single_target(settings), registry, deployer, state, platforms=check, notifier=notifier), notifier


def test_a_release_without_this_platform_is_quarantined_with_one_line_and_one_email(state: DeployState) -> None:
    registry = Registry(["1.1.0", "1.2.0"], {"1.2.0": ["linux/arm64", "linux/arm/v7"]})
    deployer, mailer = Deployer(state), RecordingMailer()
    watcher, notifier = make(state, registry, deployer, mailer)

    with capture_logs("WARNING") as logs:
        first = watcher.poll_once()
        second = watcher.poll_once()
    notifier.close(5)

    problem = "1.2.0 has no linux/amd64 image; it offers linux/arm/v7 and linux/arm64"
    assert first.unrunnable == problem
    assert first.deploy is None and deployer.deployed == []
    assert second.candidate is None  # not tried again
    assert registry.asked == ["sha256:1.2.0"]
    assert state.current is not None and state.current.version == "1.1.0"
    assert state.quarantined["1.2.0"].reason == f"platform: {problem}"
    [line] = [entry for entry in logs]
    assert line.level == "ERROR" and problem in line.message and "1.1.0 keeps running" in line.message
    [email] = mailer.sent
    assert email.subject == f"[app] not deployed: {problem}"
    assert "cd-agent deploy --app app 1.2.0 --force" in email.body


def test_a_newer_release_with_this_platform_is_deployed_after_one_without(state: DeployState) -> None:
    registry = Registry(["1.1.0", "1.2.0"], {"1.2.0": ["linux/arm64"], "1.3.0": ["linux/arm64", "linux/amd64"]})
    deployer, mailer = Deployer(state), RecordingMailer()
    watcher, notifier = make(state, registry, deployer, mailer)
    watcher.poll_once()
    registry.tags.append("1.3.0")
    report = watcher.poll_once()
    notifier.close(5)
    assert report.deploy is not None and report.deploy.outcome == "deployed"
    assert deployer.deployed == ["1.3.0"]
    assert len(mailer.sent) == 1


def test_a_pi_with_a_32_bit_system_deploys_an_arm_v7_image_and_refuses_arm64_only(state: DeployState) -> None:
    registry = Registry(["1.1.0", "1.2.0"], {"1.2.0": ["linux/arm64"]})
    deployer, mailer = Deployer(state), RecordingMailer()
    watcher, notifier = make(state, registry, deployer, mailer, host=parse_platform("linux/arm/v7"))
    assert watcher.poll_once().unrunnable == "1.2.0 has no linux/arm/v7 image; it offers linux/arm64"
    registry.tags.append("1.3.0")
    registry.offered["1.3.0"] = ["linux/amd64", "linux/arm/v7", "linux/arm64"]
    assert watcher.poll_once().candidate == "1.3.0"
    notifier.close(5)
    assert deployer.deployed == ["1.3.0"]


@pytest.mark.parametrize("error", [RegistryError("unsupported manifest type"), None])
def test_when_the_registry_does_not_say_the_pull_decides(state: DeployState, error: Exception | None) -> None:
    registry = Registry(["1.2.0"], {"1.2.0": None}, error=error)
    deployer = Deployer(state)
    watcher, _ = make(state, registry, deployer, RecordingMailer())
    assert watcher.poll_once().unrunnable is None
    assert deployer.deployed == ["1.2.0"]


def test_a_registry_outage_while_reading_platforms_is_retried_like_any_outage(state: DeployState) -> None:
    registry = Registry(["1.2.0"], {}, error=RegistryUnavailable("down"))
    watcher, _ = make(state, registry, Deployer(state), RecordingMailer())
    with pytest.raises(RegistryUnavailable):
        watcher.poll_once()
    assert state.quarantined == {}


def test_without_dockers_answer_the_check_is_skipped_and_asked_again(state: DeployState) -> None:
    answers: list[Platform | Exception] = [DockerUnavailable("docker version: gone"), AMD64]

    def host() -> Platform:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    check = PlatformCheck(host, Registry([], {"1.2.0": ["linux/arm64"]}))
    assert check.problem("1.2.0", None) is None
    assert check.problem("1.2.0", None) == "1.2.0 has no linux/amd64 image; it offers linux/arm64"
    assert check.host() == AMD64  # asked once it answered


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            "pull 127.0.0.1:5000/o/app:1.2.0: no matching manifest for linux/amd64 in the manifest list entries",
            "1.2.0 has no linux/amd64 image (docker pull: no matching manifest for linux/amd64 in the manifest "
            "list entries)",
        ),
        (
            "pull x:1.2.0: no match for platform in manifest: not found (HTTP 404)",
            "1.2.0 has no linux/amd64 image (docker pull: no match for platform in manifest)",
        ),
        ("pull x:1.2.0: manifest unknown", None),
        (None, None),
    ],
)
def test_dockers_pull_error_for_a_missing_platform_is_recognised(error: str | None, expected: str | None) -> None:
    assert pull_platform_problem("1.2.0", error, AMD64) == expected


def test_a_pull_refused_for_the_platform_is_quarantined_without_a_second_email(state: DeployState) -> None:
    registry = Registry(["1.2.0"], {"1.2.0": None})
    error = "pull 127.0.0.1:5000/o/app:1.2.0: no matching manifest for linux/amd64 in the manifest list entries"
    deployer, mailer = Deployer(state, error=error), RecordingMailer()
    watcher, notifier = make(state, registry, deployer, mailer)
    report = watcher.poll_once()
    notifier.close(5)
    assert report.unrunnable is not None and "no linux/amd64 image" in report.unrunnable
    assert "1.2.0" in state.quarantined
    assert watcher.poll_once().candidate is None
    assert deployer.deployed == ["1.2.0"]
    assert mailer.sent == []  # the deployer's own "deploy of 1.2.0 failed" email is the one
