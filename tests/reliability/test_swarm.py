"""CD_STRATEGY=swarm under faults: a release that crashes, an agent killed before and during the update,
a service removed by hand. Against a real single-node swarm (tests/support/swarm_env.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.cd_apps import SILENT, kill_deploy_at
from tests.support.swarm_env import SwarmWorld

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]


def _image(world: SwarmWorld) -> str:
    return str(world.service().attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])


@pytest.mark.reliability(
    "CD_STRATEGY=swarm: a release whose process exits at start, on a 2-replica service serving 1.0.0",
    "Swarm rolls back to 1.0.0; the agent quarantines the release and its report names the failing task, "
    "its node and error, and the container's log tail; the state still says 1.0.0",
)
def test_a_crashing_release_is_rolled_back_and_quarantined(swarm_world: SwarmWorld, observed: Observed) -> None:
    releases = swarm_world.world.releases
    releases.push("1.0.0", "healthcheck")
    releases.push("1.1.0", "broken")
    deployer = swarm_world.deployer(CD_REPLICAS="2")
    assert deployer.deploy("1.0.0").outcome == "deployed"

    report = deployer.deploy("1.1.0")

    assert report.outcome == "rolled_back", report
    assert deployer.state.is_quarantined("1.1.0")
    assert report.error is not None and "on node" in report.error and "exit" in report.error, report.error
    assert report.log_tail is not None and "cannot open /etc/app.conf" in report.log_tail
    assert ":1.0.0@sha256:" in _image(swarm_world)
    current = deployer.state.current
    assert current is not None and current.version == "1.0.0"
    observed(f"{report.outcome}: {report.error[:240]}")


@pytest.mark.reliability(
    "CD_STRATEGY=swarm: the agent SIGKILLed after getting the image, before telling Swarm, then started again",
    "the restart marks the run interrupted and leaves the service on 1.0.0; the next deploy of 1.1.0 succeeds",
)
def test_killed_before_the_update_then_restarted(swarm_world: SwarmWorld, observed: Observed) -> None:
    releases = swarm_world.world.releases
    releases.push("1.0.0", "healthcheck")
    releases.push("1.1.0", "healthcheck")
    first = swarm_world.deployer()
    assert first.deploy("1.0.0").outcome == "deployed"
    first.state.close()

    kill_deploy_at(swarm_world.world, "pulled", "1.1.0")
    restarted = swarm_world.deployer()
    said = restarted.reconcile()

    assert "had not reached Swarm" in said, said
    assert ":1.0.0@sha256:" in _image(swarm_world)
    assert restarted.state.journal is None
    statuses = [(run.version, run.status) for run in restarted.runs.list(kind="deploy")]
    assert ("1.1.0", "interrupted") in statuses, statuses
    assert restarted.deploy("1.1.0").outcome == "deployed"
    observed(f"on restart: {said}; runs {statuses}")


@pytest.mark.reliability(
    "CD_STRATEGY=swarm: the agent SIGKILLed while Swarm rolls out a release whose HEALTHCHECK fails, then started",
    "the restart waits for Swarm's verdict (rollback_completed), quarantines the release, closes the run as "
    "failed and keeps 1.0.0 as the deployed version",
)
def test_killed_during_a_failing_update_then_restarted(swarm_world: SwarmWorld, observed: Observed) -> None:
    releases = swarm_world.world.releases
    releases.push("1.0.0", "healthcheck")
    releases.push("1.1.0", "healthcheck", start=SILENT)
    first = swarm_world.deployer()
    assert first.deploy("1.0.0").outcome == "deployed"
    first.state.close()

    kill_deploy_at(swarm_world.world, "created", "1.1.0")
    restarted = swarm_world.deployer()
    said = restarted.reconcile()

    assert "quarantined" in said, said
    assert restarted.state.is_quarantined("1.1.0")
    current = restarted.state.current
    assert current is not None and current.version == "1.0.0"
    assert restarted.state.journal is None
    statuses = [(run.version, run.status) for run in restarted.runs.list(kind="deploy")]
    assert ("1.1.0", "failed") in statuses, statuses
    assert ":1.0.0@sha256:" in _image(swarm_world)
    observed(f"on restart: {said[:240]}")


@pytest.mark.reliability(
    "CD_STRATEGY=swarm: the service removed by hand (`docker service rm`) while 1.0.0 was deployed",
    "the next deploy creates the service again from the settings and records the release",
)
def test_a_service_removed_by_hand_is_created_again(swarm_world: SwarmWorld, observed: Observed) -> None:
    releases = swarm_world.world.releases
    releases.push("1.0.0", "healthcheck")
    releases.push("1.1.0", "healthcheck")
    deployer = swarm_world.deployer()
    assert deployer.deploy("1.0.0").outcome == "deployed"
    swarm_world.service().remove()

    said = deployer.reconcile()
    report = deployer.deploy("1.1.0")

    assert report.outcome == "deployed", report
    assert ":1.1.0@sha256:" in _image(swarm_world)
    current = deployer.state.current
    assert current is not None and current.version == "1.1.0"
    observed(f"reconcile: {said}; then {report.outcome} {report.version}")
