"""CD agent SIGKILLed at each step of a deploy, then `cd-agent watch` started again."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cd_agent.container_spec import LABEL_VERSION
from shared.runstore import RunStore
from tests.support.cd_apps import AppReleases, CdWorld, WatchProcess, kill_deploy_at, state_json, version_of
from tests.support.docker_env import DockerJanitor
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]
ROOT = Path(__file__).resolve().parents[2]
# "pull" has no journal entry yet (the kill lands while dockerd downloads a blob); the others are the
# journal's phases, in the order the deployer writes them.
STEPS = ["pull", "old_renamed", "created", "old_stopped", "new_started", "verdict"]


@pytest.fixture(scope="module")
def releases(docker_client: Any, registry: RegistryServer) -> AppReleases:
    """1.0.0 and 1.1.0 in the registry, pushed once for every step (each test pulls its own copies)."""
    pushed = AppReleases(docker_client, registry)
    pushed.push("1.0.0")
    pushed.push("1.1.0")
    return pushed


@pytest.fixture
def world(
    docker_client: Any, docker_janitor: DockerJanitor, releases: AppReleases, tmp_path: Path
) -> Iterator[CdWorld]:
    made = CdWorld(docker_client, docker_janitor, releases, tmp_path)
    docker_janitor.images.update(f"{releases.repository}:{version}" for version in releases.pushed)
    yield made
    made.close()


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    server = FaultProxy(registry.url)
    yield server
    server.close()


def _kill_watch_while_pulling(world: CdWorld, proxy: FaultProxy, watches: list[WatchProcess]) -> None:
    """``cd-agent watch`` starts the deploy of 1.1.0; its blob download hangs in the proxy; SIGKILL."""
    proxy.script(r"/blobs/", forever=Fault.hang(120))
    process = WatchProcess(world.environ(CD_POLL_INTERVAL="0.5"), world.root)
    watches.append(process)
    # The watcher's early pull (cd_agent/early_pull.py) may reach the hanging blob before the deploy process has
    # started its own pull of the same image: wait for both.
    wait_for(lambda: "hang" in proxy.outcomes("/blobs/") and bool(process.lines("pulling")), timeout=60,
             what="the deploy's pull of 1.1.0 hanging on a blob")
    assert not process.lines("renamed")
    process.kill()
    proxy.clear()


@pytest.mark.reliability(
    "The agent SIGKILLed at a step of the deploy of 1.1.0 over a serving 1.0.0, then `cd-agent watch` started",
    "the app ends serving 1.1.0 (the proven deploy finished, or the undone one deployed again), the state agrees "
    "with the containers (version and container id), no leftover container, no run left running, no journal",
)
@pytest.mark.parametrize("step", STEPS)
def test_killed_at_a_step_then_restarted(
    world: CdWorld,
    step: str,
    proxy: FaultProxy,
    registry: RegistryServer,
    watches: list[WatchProcess],
    observed: Observed,
) -> None:
    world.overrides["CD_IMAGE"] = world.releases.repository.replace(registry.host, proxy.host, 1)
    world.deploy_first("1.0.0")

    if step == "pull":
        _kill_watch_while_pulling(world, proxy, watches)
    else:
        kill_deploy_at(world, step, "1.1.0")
    left = world.docker_client.api.containers(all=True, filters={"name": world.name})

    restarted = WatchProcess(world.environ(CD_POLL_INTERVAL="0.5"), world.root)
    watches.append(restarted)

    def settled() -> bool:
        assert restarted.process.poll() is None, restarted.log()[-3000:]
        status = state_json(world)
        return world.served() == "1.1.0" and version_of(status["current"]) == "1.1.0"

    wait_for(settled, timeout=90, what="1.1.0 serving and recorded after the restart")
    assert restarted.stop() == 0

    status = state_json(world)
    container = world.docker_client.containers.get(world.name)
    assert status["current"]["container_id"] == container.id
    assert container.labels[LABEL_VERSION] == "1.1.0"
    assert container.attrs["State"]["Running"]
    listed = world.docker_client.api.containers(all=True, filters={"name": world.name})
    assert [name.lstrip("/") for item in listed for name in item["Names"]] == [world.name]
    assert status["deploy_in_progress"] is None
    assert status["quarantined"] == []
    with RunStore(world.target().paths.runs) as runs:
        history = [(r.version, r.status) for r in reversed(runs.list(limit=100)) if r.kind == "deploy"]
    assert not [entry for entry in history if entry[1] in ("running", "queued")], history
    assert ("1.1.0", "interrupted") in history, history
    said = restarted.lines("reconcile:")[0].split("reconcile: ", 1)[1]
    observed(f"left {len(left)} container(s) at the kill; on restart: {said[:200]}; runs {history}")
