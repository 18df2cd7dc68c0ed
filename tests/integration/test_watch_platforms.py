"""Releases built for other platforms, end to end: real multi-platform OCI indexes in the real registry
(pushed through the registry API as buildx would, see tests/support/oci_index.py), a real
``cd-agent watch``, the real Docker Engine and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cd_agent.platform_check import pull_platform_problem
from shared.platforms import parse_platform
from tests.support.cd_apps import CdWorld, WatchProcess, cd_agent, state_json, version_of
from tests.support.oci_index import Entry, Publisher
from tests.support.polling import wait_for
from tests.support.smtp_server import SmtpServer

pytestmark = pytest.mark.docker

ARM64 = {"os": "linux", "architecture": "arm64"}
ARM_V7 = {"os": "linux", "architecture": "arm", "variant": "v7"}


@pytest.fixture
def publisher(cd_world: CdWorld) -> Iterator[Publisher]:
    registry, _, repository = cd_world.releases.repository.partition("/")
    publisher = Publisher(f"http://{registry}", repository)
    yield publisher
    publisher.close()


def with_attestations(publisher: Publisher, entries: list[Entry]) -> list[Entry]:
    return entries + [publisher.attestation(entry) for entry in entries]


def app_entry(world: CdWorld, publisher: Publisher, version: str) -> Entry:
    """The real app of ``version`` for this machine, pushed under a tag no watcher deploys, as an OCI manifest."""
    staging = f"staging-{version.replace('.', '-')}"
    world.releases.push(staging, env={"APP_VERSION": version})
    world.janitor.images.add(f"{world.releases.repository}:{version}")
    return publisher.oci_copy(staging)


def subjects(smtp: SmtpServer) -> list[str]:
    return [str(message["Subject"]) for message in smtp.messages]


def test_a_release_without_this_platform_is_refused_once_and_a_newer_one_is_deployed(
    cd_world: CdWorld, publisher: Publisher, smtp_server: SmtpServer, watches: list[WatchProcess],
    docker_client: Any,
) -> None:
    world = cd_world
    world.use_smtp(smtp_server.host, smtp_server.port)
    host = parse_platform(f"{docker_client.version()['Os']}/{docker_client.version()['Arch']}")
    assert str(host) == "linux/amd64", "this test builds foreign images for an amd64 machine"
    world.releases.push("1.0.0")
    world.janitor.images.add(f"{world.releases.repository}:1.1.0")

    watch = WatchProcess(world.environ(CD_POLL_INTERVAL="1"), world.root)
    watches.append(watch)
    wait_for(lambda: world.served() == "1.0.0", timeout=90, what="1.0.0 served")
    smtp_server.wait_for_messages(1)

    # 1.1.0 as buildx pushes it for --platform linux/arm64,linux/arm/v7: no linux/amd64 image
    foreign = [publisher.foreign_image(ARM64), publisher.foreign_image(ARM_V7)]
    publisher.index("1.1.0", with_attestations(publisher, foreign))

    problem = "1.1.0 has no linux/amd64 image; it offers linux/arm/v7 and linux/arm64"
    wait_for(lambda: "1.1.0" in {q["version"] for q in state_json(world)["quarantined"]}, timeout=60,
             what="1.1.0 quarantined")
    smtp_server.wait_for_messages(2)
    assert subjects(smtp_server)[1] == f"not deployed: {problem}"
    assert "1.0.0 keeps running" in str(smtp_server.messages[1].get_content())

    # later polls leave 1.1.0 alone: no deploy, no pull, no second line or email
    polls = {state_json(world)["last_poll_at"]}

    def three_more_polls() -> bool:
        polls.add(state_json(world)["last_poll_at"])
        return len(polls) > 3

    wait_for(three_more_polls, timeout=30, what="3 more polls")
    assert world.served() == "1.0.0"
    assert version_of(state_json(world)["current"]) == "1.0.0"
    said = [line for line in watch.lines("1.1.0") if "| INFO " not in line]  # warnings and errors
    assert len(said) == 1, watch.log()
    assert "ERROR" in said[0] and problem in said[0] and "1.0.0 keeps running" in said[0]
    assert not watch.lines("deploying 1.1.0")
    assert docker_client.images.list(name=f"{world.releases.repository}:1.1.0") == []
    assert len(smtp_server.messages) == 2
    [quarantine] = state_json(world)["quarantined"]
    assert quarantine["reason"] == f"platform: {problem}"

    # 1.2.0 as buildx pushes it for --platform linux/amd64,linux/arm64: deployed
    entries = [app_entry(world, publisher, "1.2.0"), publisher.foreign_image(ARM64)]
    publisher.index("1.2.0", with_attestations(publisher, entries))
    wait_for(lambda: world.served() == "1.2.0", timeout=90, what="1.2.0 (multi-platform) served")
    smtp_server.wait_for_messages(3)
    assert subjects(smtp_server)[2] == "deployed 1.2.0"
    assert len([line for line in watch.lines("1.1.0") if "| INFO " not in line]) == 1
    assert watch.stop() == 0
    assert "Traceback" not in watch.log()


def test_dockers_own_pull_error_for_a_missing_platform_is_recognised(
    cd_world: CdWorld, publisher: Publisher
) -> None:
    """The fallback when the registry check is skipped: the real engine's message is the one we match."""
    world = cd_world
    publisher.index("2.0.0", [publisher.foreign_image(ARM64)])
    world.janitor.images.add(f"{world.releases.repository}:2.0.0")
    report = world.deployer().deploy("2.0.0")
    assert report.outcome == "failed"
    problem = pull_platform_problem("2.0.0", report.error, parse_platform("linux/amd64"))
    assert problem is not None and problem.startswith("2.0.0 has no linux/amd64 image"), report.error


def test_cd_agent_deploy_of_a_release_without_this_platform_says_so_and_pulls_nothing(
    cd_world: CdWorld, publisher: Publisher, docker_client: Any
) -> None:
    world = cd_world
    publisher.index("3.0.0", [publisher.foreign_image(ARM64)])
    world.janitor.images.add(f"{world.releases.repository}:3.0.0")
    result = cd_agent("deploy", "3.0.0", environ=world.environ(), cwd=world.root)
    assert result.returncode == 1, result.stderr
    assert "3.0.0 has no linux/amd64 image; it offers linux/arm64: not deployed, nothing was pulled" in result.stderr
    assert docker_client.images.list(name=f"{world.releases.repository}:3.0.0") == []
    assert world.containers() == []
