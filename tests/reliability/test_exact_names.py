"""A configured name that matches no object but starts another object's ID (issue 17).

Docker answers a name that names nothing with the object whose ID starts with it. Each scenario makes an
unrelated object first (a "stranger": a container holding a secret in its anonymous volume, a network, a
Swarm service), configures the agent with a name taken from the stranger's ID (or, for the network, a name
the stranger's name contains), deploys for real, and checks the stranger is exactly as it was.

Eight hex digits of the ID, not two as in the report: on a dockerd other tests share, two digits would
often start several IDs, and Docker refuses an ambiguous prefix instead of resolving it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from cd_agent.blue_green import kept_name
from cd_agent.container_spec import LABEL_VERSION
from cd_agent.proxy import network_name, proxy_container_name
from tests.integration.test_blue_green import blue_green_world
from tests.support.cd_apps import AppReleases, CdWorld
from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile, unique
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer
from tests.support.swarm_env import SwarmWorld

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]
PREFIX = 8
SECRET = "another app's database password"
IDLE = "trap 'exit 0' TERM; while true; do sleep 1; done"


@pytest.fixture(scope="module")
def releases(docker_client: Any, registry: RegistryServer) -> AppReleases:
    pushed = AppReleases(docker_client, registry)
    pushed.push("1.0.0")
    pushed.push("1.1.0")
    return pushed


@pytest.fixture(scope="module")
def stranger_image(docker_client: Any) -> Iterator[str]:
    tag = f"{unique('picicd-stranger')}:test"
    docker_client.images.build(
        fileobj=build_context_tar(busybox_dockerfile(cmd=["sh", "-c", IDLE], volumes=["/cache"])),
        custom_context=True, tag=tag, rm=True,
    )
    yield tag
    try:
        docker_client.images.remove(tag, force=True)
    except docker.errors.APIError:
        pass


@dataclass(frozen=True)
class Stranger:
    """An unrelated running container, with ``SECRET`` in its anonymous volume at /cache."""

    id: str
    name: str
    volume: str

    def looks(self, client: Any) -> tuple[str, str, bool, str]:
        """(name, volume mounted at /cache, running, what /cache/history holds); ("gone", ...) once removed."""
        try:
            data = client.api.inspect_container(self.id)
        except docker.errors.NotFound:
            return "gone", "", False, ""
        volume = next(m["Name"] for m in data["Mounts"] if m["Destination"] == "/cache")
        code, output = client.containers.get(self.id).exec_run(["cat", "/cache/history"])
        return data["Name"].lstrip("/"), volume, data["State"]["Running"], output.decode() if code == 0 else ""


@pytest.fixture
def stranger(docker_client: Any, docker_janitor: DockerJanitor, stranger_image: str) -> Stranger:
    name = unique("picicd-stranger")
    docker_janitor.containers.add(name)
    container = docker_client.containers.run(stranger_image, name=name, detach=True)
    code, output = container.exec_run(["sh", "-c", 'echo "$0" > /cache/history', SECRET])
    assert code == 0, output
    data = docker_client.api.inspect_container(container.id)
    volume = next(m["Name"] for m in data["Mounts"] if m["Destination"] == "/cache")
    docker_janitor.volumes.add(volume)
    return Stranger(container.id, name, volume)


@pytest.fixture
def swap_world(
    docker_client: Any, docker_janitor: DockerJanitor, releases: AppReleases, tmp_path: Path, stranger: Stranger
) -> Iterator[CdWorld]:
    world = CdWorld(docker_client, docker_janitor, releases, tmp_path, name=stranger.id[:PREFIX])
    yield world
    world.close()


@pytest.mark.reliability(
    "CD_CONTAINER_NAME is the first 8 hex digits of an unrelated running container's ID and no container has "
    "that name; `deploy` of 1.0.0 with the swap strategy (real dockerd)",
    "the release runs in a new container with exactly that name; the unrelated container keeps its name and ID "
    "and is still running (before: the agent adopted it, stopped it and removed it)",
)
def test_a_name_that_starts_a_container_id_does_not_adopt_that_container(
    swap_world: CdWorld, stranger: Stranger, observed: Observed
) -> None:
    client = swap_world.docker_client
    before = stranger.looks(client)

    report = swap_world.deployer().deploy("1.0.0")

    assert report.outcome == "deployed", report
    assert stranger.looks(client) == before
    app = client.api.inspect_container(swap_world.name)
    assert app["Id"] != stranger.id and app["Config"]["Labels"][LABEL_VERSION] == "1.0.0"
    wait_for(lambda: swap_world.served() == "1.0.0", timeout=10, what="1.0.0 on its port")
    observed(f"deployed {report.version} as {swap_world.name} ({app['Id'][:12]}); {stranger.name} "
             f"({stranger.id[:12]}) still running, untouched")


@pytest.mark.reliability(
    "The same name, the unrelated container holding another app's password in its anonymous volume "
    "(the image's VOLUME /cache, the volume the app's image declares too)",
    "the new app gets a fresh anonymous volume at /cache, not the unrelated one; that volume stays mounted in "
    "the unrelated container with its content (before: it was mounted into the new app)",
)
def test_a_name_that_starts_a_container_id_does_not_take_its_volume(
    swap_world: CdWorld, stranger: Stranger, observed: Observed
) -> None:
    client = swap_world.docker_client

    assert swap_world.deployer().deploy("1.0.0").outcome == "deployed"

    mounts = client.api.inspect_container(swap_world.name)["Mounts"]
    volumes = sorted(str(m.get("Name")) for m in mounts if m["Type"] == "volume")
    assert stranger.volume not in volumes, volumes
    assert swap_world.read_in_app("/cache/history") == "1.0.0\n"
    assert stranger.looks(client) == (stranger.name, stranger.volume, True, SECRET + "\n")
    observed(f"the app mounts {volumes}; /cache/history in the app holds only '1.0.0'; {stranger.volume[:12]} "
             "still in the unrelated container with its content")


@pytest.fixture
def bg_world(
    docker_client: Any, docker_janitor: DockerJanitor, releases: AppReleases, tmp_path: Path, caddy_image: str,
) -> Iterator[CdWorld]:
    world = blue_green_world(docker_client, docker_janitor, releases, tmp_path, caddy_image)
    yield world
    world.close()


@pytest.mark.reliability(
    "CD_STRATEGY=blue-green with CD_CONTAINER_NAME the first 8 hex digits of an unrelated running container's "
    "ID; deploys of 1.0.0 then 1.1.0 (the colour containers, NAME-previous and the proxy NAME-proxy)",
    "both releases are deployed behind the app's own proxy, 1.0.0 kept as NAME-previous; the unrelated container "
    "keeps its name and ID and is still running (before: the deploy was refused as 'not behind the proxy')",
)
def test_blue_green_under_a_name_that_starts_a_container_id(
    docker_client: Any, docker_janitor: DockerJanitor, releases: AppReleases, tmp_path: Path, caddy_image: str,
    stranger: Stranger, observed: Observed,
) -> None:
    world = blue_green_world(docker_client, docker_janitor, releases, tmp_path, caddy_image, stranger.id[:PREFIX])
    try:
        before = stranger.looks(docker_client)
        deployer = world.deployer()
        reports = [deployer.deploy("1.0.0"), deployer.deploy("1.1.0")]

        assert [r.outcome for r in reports] == ["deployed", "deployed"], reports
        wait_for(lambda: world.served() == "1.1.0", timeout=20, what="1.1.0 behind the proxy")
        assert stranger.looks(docker_client) == before
        kept = docker_client.api.inspect_container(kept_name(world.name))
        assert kept["Id"] != stranger.id and kept["Config"]["Labels"][LABEL_VERSION] == "1.0.0"
        proxy = docker_client.api.inspect_container(proxy_container_name(world.name))
        assert list(proxy["NetworkSettings"]["Networks"]) == [network_name(world.name)]
        observed(f"{world.name} serves 1.1.0 through {proxy_container_name(world.name)}, "
                 f"{kept_name(world.name)} holds 1.0.0; {stranger.name} untouched")
    finally:
        world.close()


@pytest.mark.reliability(
    "CD_STRATEGY=blue-green for app NAME while an unrelated network's name contains NAME-net (apps `fe` and "
    "`cafe` on one host: `cafe-net` contains `fe-net`)",
    "the agent creates its own NAME-net and deploys behind it; the unrelated network is joined by nothing "
    "(before: the agent took it for NAME-net, created none, and the proxy failed to start)",
)
def test_a_network_whose_name_contains_the_apps_network_name_is_not_taken_for_it(
    bg_world: CdWorld, docker_janitor: DockerJanitor, observed: Observed
) -> None:
    client = bg_world.docker_client
    other = f"other{network_name(bg_world.name)}"
    docker_janitor.networks.add(other)
    client.api.create_network(other, driver="bridge")

    report = bg_world.deployer().deploy("1.0.0")

    assert report.outcome == "deployed", report
    wait_for(lambda: bg_world.served() == "1.0.0", timeout=20, what="1.0.0 behind the proxy")
    assert client.api.inspect_network(other)["Containers"] == {}
    own = client.api.inspect_network(network_name(bg_world.name))
    assert own["Name"] == network_name(bg_world.name) and len(own["Containers"]) == 2
    observed(f"deployed behind {own['Name']} ({len(own['Containers'])} containers on it); {other} has none")


@pytest.mark.reliability(
    "CD_STRATEGY=swarm with CD_SERVICE the first 8 characters of an unrelated service's ID and no service with "
    "that name; `deploy` of 1.0.0 then of 1.1.0 (real single-node swarm)",
    "the agent creates its own service with exactly that name, then updates that one; the unrelated service "
    "keeps its image and spec version (before: the agent changed the unrelated service's image)",
)
def test_a_service_name_that_starts_a_service_id_does_not_update_that_service(
    swarm_world: SwarmWorld, observed: Observed
) -> None:
    client = swarm_world.world.docker_client
    releases = swarm_world.world.releases
    releases.push("1.0.0")
    releases.push("1.1.0")
    other_name = unique("picicd-stranger")
    swarm_world.services.add(other_name)
    stranger_image = f"{releases.repository}:1.0.0"
    other = client.services.create(stranger_image, name=other_name)
    before = client.api.inspect_service(other.id)
    name = other.id[:PREFIX]
    deployer = swarm_world.deployer(CD_SERVICE=name)

    reports = [deployer.deploy("1.0.0"), deployer.deploy("1.1.0")]

    after = client.api.inspect_service(other.id)
    assert after["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == stranger_image
    assert after["Version"] == before["Version"]
    assert [report.outcome for report in reports] == ["deployed", "deployed"], reports
    own = client.api.inspect_service(name)
    assert own["Spec"]["Name"] == name and own["ID"] != other.id
    assert own["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].startswith(f"{releases.repository}:1.1.0@")
    observed(f"created service {name} ({own['ID'][:12]}) with 1.0.0 and updated it to 1.1.0; {other_name} "
             f"({other.id[:12]}) still on 1.0.0 at spec version {after['Version']['Index']}")
