"""CD_KEEP_IMAGES against the real engine: real releases pushed to the test registry and deployed one after
another; what stays in the engine's image store of this app, of another app, and of one a container uses."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.cd_apps import AppReleases, CdWorld
from tests.support.docker_env import DockerJanitor, unique
from tests.support.registry_server import RegistryServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def local_versions(docker_client: Any, repository: str) -> set[str]:
    return {
        tag.rpartition(":")[2] for image in docker_client.images.list(name=repository) for tag in image.tags
        if tag.rpartition(":")[0] == repository
    }


def test_only_the_last_n_releases_of_the_app_stay_and_other_apps_and_images_in_use_are_kept(
    cd_world: CdWorld, docker_client: Any, docker_janitor: DockerJanitor, registry: RegistryServer
) -> None:
    world = cd_world
    # Another app's releases on the same engine, more of them than CD_KEEP_IMAGES.
    other = AppReleases(docker_client, registry, docker_janitor)
    for version in ("2.0.0", "2.1.0", "2.2.0"):
        other.push(version, env={"OTHER": "yes"})
        docker_client.images.pull(other.repository, tag=version)
    versions = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    for version in versions:
        world.releases.push(version)

    deployer = world.deployer(CD_KEEP_IMAGES="2")
    holder = unique("keep-holder")
    docker_janitor.containers.add(holder)
    for version in versions:
        report = deployer.deploy(version)
        assert report.outcome == "deployed", report
        assert world.served() == version
        if version == "1.0.0":
            # A container of the test's own keeps using 1.0.0 after the app moved on.
            docker_client.api.create_container(f"{world.releases.repository}:1.0.0", name=holder)

    # The current and the previous release (CD_KEEP_IMAGES=2), and 1.0.0 that a container uses; 1.1.0 and
    # 1.2.0 are gone. The other app's images are all there.
    assert local_versions(docker_client, world.releases.repository) == {"1.0.0", "1.3.0", "1.4.0"}
    assert local_versions(docker_client, other.repository) == {"2.0.0", "2.1.0", "2.2.0"}

    # Once nothing uses it, the next healthy deploy prunes 1.0.0 too; the default keeps three.
    docker_client.api.remove_container(holder)
    world.releases.push("1.5.0")
    assert world.deployer().deploy("1.5.0").outcome == "deployed"
    assert local_versions(docker_client, world.releases.repository) == {"1.3.0", "1.4.0", "1.5.0"}
    assert local_versions(docker_client, other.repository) == {"2.0.0", "2.1.0", "2.2.0"}
