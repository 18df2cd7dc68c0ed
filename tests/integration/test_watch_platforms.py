"""Releases built for other platforms: real multi-platform OCI indexes in the real registry (pushed
through the registry API as buildx would, see tests/support/oci_index.py), the real Docker Engine.

The end-to-end scenario with a real ``cd-agent watch`` and SMTP is a reliability row:
tests/reliability/test_registry_abuse.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cd_agent.platform_check import pull_platform_problem
from tests.support.cd_apps import CdWorld, cd_agent
from tests.support.oci_index import S390X, Publisher, engine_of

pytestmark = pytest.mark.docker


@pytest.fixture
def publisher(cd_world: CdWorld) -> Iterator[Publisher]:
    publisher = Publisher.for_image(cd_world.releases.repository)
    yield publisher
    publisher.close()


def test_dockers_own_pull_error_for_a_missing_platform_is_recognised(
    cd_world: CdWorld, publisher: Publisher, docker_client: Any
) -> None:
    """The fallback when the registry check is skipped: the real engine's message is the one we match."""
    world = cd_world
    publisher.index("2.0.0", [publisher.foreign_image(S390X)])
    world.janitor.images.add(f"{world.releases.repository}:2.0.0")
    report = world.deployer().deploy("2.0.0")
    assert report.outcome == "failed"
    host = engine_of(docker_client)
    problem = pull_platform_problem("2.0.0", report.error, host)
    # dockerd names the platform it wanted: linux/amd64, linux/arm64/v8 or linux/arm/v7
    assert problem is not None and problem.startswith(f"2.0.0 has no {host}"), report.error


def test_cd_agent_deploy_of_a_release_without_this_platform_says_so_and_pulls_nothing(
    cd_world: CdWorld, publisher: Publisher, docker_client: Any
) -> None:
    world = cd_world
    publisher.index("3.0.0", [publisher.foreign_image(S390X)])
    world.janitor.images.add(f"{world.releases.repository}:3.0.0")
    result = cd_agent("deploy", "3.0.0", environ=world.environ(), cwd=world.root)
    assert result.returncode == 1, result.stderr
    expected = f"3.0.0 has no {engine_of(docker_client)} image; it offers linux/s390x: not deployed, nothing was pulled"
    assert expected in result.stderr
    assert docker_client.images.list(name=f"{world.releases.repository}:3.0.0") == []
    assert world.containers() == []
