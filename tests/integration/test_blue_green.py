"""CD_STRATEGY=blue-green end to end: real dockerd, the real Caddy proxy (scripts/proxy-image), releases
pulled from the test registry, and two 20 ms probes through the proxy's published port (a new
connection per request, and a keep-alive client) that must never see a failed request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cd_agent.blue_green import kept_name
from cd_agent.container_spec import LABEL_VERSION
from cd_agent.proxy import network_name, proxy_container_name
from tests.support.cd_apps import AppReleases, CdWorld, cd_agent, state_json, version_of
from tests.support.docker_env import DockerJanitor
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer
from tests.support.switch_probe import SwitchProbe

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def bg_releases(docker_client: Any, registry: RegistryServer) -> AppReleases:
    pushed = AppReleases(docker_client, registry)
    pushed.push("1.0.0")
    pushed.push("1.1.0", "healthcheck")
    pushed.push("1.2.0", "broken")
    pushed.push("1.3.0", "silent")
    return pushed


def blue_green_world(
    docker_client: Any, janitor: DockerJanitor, releases: AppReleases, root: Path, caddy_image: str,
    name: str | None = None,
) -> CdWorld:
    world = CdWorld(docker_client, janitor, releases, root) if name is None else CdWorld(
        docker_client, janitor, releases, root, name=name
    )
    world.overrides.update(
        CD_STRATEGY="blue-green", CD_PROXY_IMAGE=caddy_image, CD_PROXY_GRACE="1", CD_HEALTH_URL=world.url,
        CD_HEALTH_TIMEOUT="6",
    )
    janitor.images.update(f"{releases.repository}:{version}" for version in releases.pushed)
    return world


@pytest.fixture
def bg_world(
    docker_client: Any, docker_janitor: DockerJanitor, bg_releases: AppReleases, tmp_path: Path, caddy_image: str
) -> Iterator[CdWorld]:
    world = blue_green_world(docker_client, docker_janitor, bg_releases, tmp_path, caddy_image)
    yield world
    world.close()


def running(world: CdWorld) -> list[str]:
    listed = world.docker_client.api.containers(filters={"name": world.name})
    return sorted(item["Names"][0].lstrip("/") for item in listed)


def explain(world: CdWorld, probe: SwitchProbe, marks: list[tuple[str, float]]) -> str:
    """What the probe saw against the deploy's steps, and the proxy's own log (Caddy logs failed dials)."""
    try:
        proxy_log = world.docker_client.api.logs(proxy_container_name(world.name), tail=30).decode(errors="replace")
    except Exception as exc:  # a diagnosis must not hide the failure it explains
        proxy_log = f"(no proxy log: {exc})"
    return f"{probe.explain(marks)}\nproxy log:\n{proxy_log}"


def test_an_upgrade_and_a_broken_release_drop_no_request(bg_world: CdWorld) -> None:
    deployer = bg_world.deployer()
    assert deployer.deploy("1.0.0").outcome == "deployed"
    wait_for(lambda: bg_world.served() == "1.0.0", timeout=20, what="1.0.0 behind the proxy")
    app = bg_world.docker_client.api.inspect_container(bg_world.name)
    assert not app["HostConfig"]["PortBindings"] and list(app["NetworkSettings"]["Networks"]) == [
        network_name(bg_world.name)
    ]

    with SwitchProbe(bg_world.url, expected={"1.0.0", "1.1.0"}) as probe:
        marks = [("start", time.monotonic())]
        report = deployer.deploy("1.1.0")  # judged by its HEALTHCHECK
        marks.append(("deployed", time.monotonic()))
        assert report.outcome == "deployed", report
        probe.wait_for_body("1.1.0")
        probe.wait_for_more(5)
        for broken in ("1.2.0", "1.3.0"):  # exits at once; runs but never answers (judged by the URL)
            marks.append((broken, time.monotonic()))
            report = deployer.deploy(broken)
            assert (report.outcome, report.quarantined) == ("rolled_back", True), report
        probe.wait_for_more(5)
        marks.append(("end", time.monotonic()))
    assert probe.failures == [], explain(bg_world, probe, marks)
    assert probe.bodies("fresh") == ["1.0.0", "1.1.0"]
    assert running(bg_world) == sorted([bg_world.name, proxy_container_name(bg_world.name)])
    assert bg_world.containers() == sorted(
        [bg_world.name, kept_name(bg_world.name), proxy_container_name(bg_world.name)]
    )
    assert deployer.state.quarantined_versions == {"1.2.0", "1.3.0"}


def test_cd_agent_rollback_switches_back_to_the_kept_container(bg_world: CdWorld) -> None:
    deployer = bg_world.deployer()
    assert deployer.deploy("1.0.0").outcome == "deployed"
    first = bg_world.docker_client.api.inspect_container(bg_world.name)["Id"]
    assert deployer.deploy("1.1.0").outcome == "deployed"
    wait_for(lambda: bg_world.served() == "1.1.0", timeout=20, what="1.1.0 behind the proxy")

    with SwitchProbe(bg_world.url, expected={"1.0.0", "1.1.0"}) as probe:
        done = cd_agent("rollback", environ=bg_world.environ(), cwd=bg_world.root)
        assert done.returncode == 0, done.stderr
        probe.wait_for_body("1.0.0")
        probe.wait_for_more(5)
    assert probe.failures == []
    serving = bg_world.docker_client.api.inspect_container(bg_world.name)
    assert serving["Id"] == first and serving["Config"]["Labels"][LABEL_VERSION] == "1.0.0"
    status = state_json(bg_world)
    assert version_of(status["current"]) == "1.0.0" and version_of(status["previous"]) == "1.1.0"
    assert [q["version"] for q in status["quarantined"]] == ["1.1.0"]


def test_the_proxy_is_recreated_with_its_upstream_after_it_was_removed(bg_world: CdWorld) -> None:
    deployer = bg_world.deployer()
    assert deployer.deploy("1.0.0").outcome == "deployed"
    bg_world.docker_client.api.remove_container(proxy_container_name(bg_world.name), force=True)
    assert bg_world.served() is None

    said = deployer.reconcile()

    assert "the proxy sends traffic to" in said
    wait_for(lambda: bg_world.served() == "1.0.0", timeout=20, what="1.0.0 behind the re-created proxy")
