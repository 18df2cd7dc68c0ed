"""CD_STRATEGY=blue-green under stress: broken releases in a row under a 20 ms probe, and the agent
SIGKILLed at each phase of a deploy then `cd-agent watch` started again (real dockerd, real Caddy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cd_agent.blue_green import kept_name
from cd_agent.container_spec import LABEL_VERSION
from cd_agent.proxy import proxy_container_name
from shared.runstore import RunStore
from tests.integration.test_blue_green import blue_green_world, running
from tests.support.cd_apps import AppReleases, CdWorld, WatchProcess, kill_deploy_at, state_json, version_of
from tests.support.docker_env import DockerJanitor
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer
from tests.support.switch_probe import SwitchProbe

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]
PHASES = ["bg_pulled", "bg_created", "bg_started", "bg_proven", "bg_switched", "bg_retired"]
BROKEN = [f"1.0.{patch}" for patch in range(1, 11)]


@pytest.fixture(scope="module")
def releases(docker_client: Any, registry: RegistryServer) -> AppReleases:
    pushed = AppReleases(docker_client, registry)
    pushed.push("1.0.0")
    pushed.push("1.1.0")
    # One broken build under ten tags: builds are the slow part, and the deployer pulls each tag anyway.
    pushed.push(BROKEN[0], "broken")
    pushed.alias(BROKEN[0], *BROKEN[1:])
    return pushed


@pytest.fixture
def world(
    docker_client: Any, docker_janitor: DockerJanitor, releases: AppReleases, tmp_path: Path, caddy_image: str
) -> Iterator[CdWorld]:
    made = blue_green_world(docker_client, docker_janitor, releases, tmp_path, caddy_image)
    yield made
    made.close()


@pytest.mark.reliability(
    "Ten broken releases in a row with blue-green, under a 20 ms probe (new connection per request, and keep-alive)",
    "the probe sees no failed request: each broken release is started beside 1.0.0, judged unhealthy, removed "
    "and quarantined without the proxy ever switching to it",
)
def test_ten_broken_releases_in_a_row_drop_no_request(world: CdWorld, observed: Observed) -> None:
    deployer = world.deployer()
    assert deployer.deploy("1.0.0").outcome == "deployed"
    wait_for(lambda: world.served() == "1.0.0", timeout=20, what="1.0.0 behind the proxy")

    with SwitchProbe(world.url, expected={"1.0.0"}) as probe:
        outcomes = [deployer.deploy(version).outcome for version in BROKEN]
        probe.wait_for_more(5)

    assert outcomes == ["rolled_back"] * len(BROKEN)
    assert probe.failures == []
    assert deployer.state.quarantined_versions == set(BROKEN)
    assert running(world) == sorted([world.name, proxy_container_name(world.name)])
    samples = len(probe.samples)
    gaps = ", ".join(f"{client} {probe.max_gap(client):.2f}s" for client in ("fresh", "keepalive"))
    observed(f"{samples} probe requests, 0 failed; longest gap between good answers: {gaps}")


@pytest.mark.reliability(
    "Blue-green: the agent SIGKILLed at a phase of the deploy of 1.1.0 over a serving 1.0.0, then `cd-agent watch`",
    "the proxy ends serving 1.1.0 from the one running app container, the state agrees (version and container id), "
    "1.0.0 is kept stopped for a rollback, no run left running, no journal",
)
@pytest.mark.parametrize("phase", PHASES)
def test_killed_at_a_phase_then_restarted(
    world: CdWorld, phase: str, watches: list[WatchProcess], observed: Observed
) -> None:
    world.deploy_first("1.0.0")
    # The watcher deploys the newest release: 1.1.0 (the broken 1.0.x are older).
    kill_deploy_at(world, phase, "1.1.0")
    left = running(world)

    restarted = WatchProcess(world.environ(CD_POLL_INTERVAL="0.5"), world.root)
    watches.append(restarted)

    def settled() -> bool:
        assert restarted.process.poll() is None, restarted.log()[-3000:]
        status = state_json(world)
        return world.served() == "1.1.0" and version_of(status["current"]) == "1.1.0" and not status[
            "deploy_in_progress"
        ]

    wait_for(settled, timeout=90, what="1.1.0 serving and recorded after the restart")
    assert restarted.stop() == 0

    status = state_json(world)
    container = world.docker_client.containers.get(world.name)
    assert status["current"]["container_id"] == container.id
    assert container.labels[LABEL_VERSION] == "1.1.0"
    assert running(world) == sorted([world.name, proxy_container_name(world.name)])
    assert world.containers() == sorted([world.name, kept_name(world.name), proxy_container_name(world.name)])
    kept = world.docker_client.containers.get(kept_name(world.name))
    assert kept.labels[LABEL_VERSION] == "1.0.0"
    with RunStore(world.target().paths.runs) as runs:
        history = [(r.version, r.status) for r in reversed(runs.list(limit=100)) if r.kind == "deploy"]
    assert not [entry for entry in history if entry[1] in ("running", "queued")], history
    assert ("1.1.0", "interrupted") in history, history
    said = restarted.lines("reconcile:")[0].split("reconcile: ", 1)[1]
    observed(f"running at the kill: {left}; on restart: {said[:200]}; runs {history}")
