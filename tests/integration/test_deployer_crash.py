"""The agent SIGKILLed in the middle of a deploy, then started again: reconcile() leaves a serving app
and a state that agrees with the containers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cd_apps import CdWorld, kill_deploy_at
from tests.support.polling import wait_for

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


# Every phase is covered against the fake engine (tests/unit/test_deploy_policy.py) and, through
# `cd-agent watch`, by tests/reliability/test_cd_crashes.py; this one proves the real SIGKILL and dockerd.
def test_killed_before_the_verdict_the_old_version_comes_back(cd_world: CdWorld) -> None:
    phase = "new_started"  # the new container running beside the stopped, renamed old one
    cd_world.releases.push("1.0.0")
    cd_world.releases.push("1.1.0")
    first = cd_world.deployer()
    first.deploy("1.0.0")
    first.state.close()

    kill_deploy_at(cd_world, phase, "1.1.0")
    deployer = cd_world.deployer()
    assert deployer.state.journal is not None

    said = deployer.reconcile()

    assert "undid the interrupted deploy of 1.1.0" in said
    wait_for(lambda: cd_world.served() == "1.0.0", timeout=10, what="1.0.0 serving again")
    assert cd_world.containers() == [cd_world.name]
    container = cd_world.docker_client.containers.get(cd_world.name)
    current = deployer.state.current
    assert current is not None and current.version == "1.0.0" and current.container_id == container.id
    assert deployer.state.journal is None
    assert not deployer.state.is_quarantined("1.1.0")
    interrupted = deployer.runs.list(limit=1)[0]
    assert interrupted.version == "1.1.0" and interrupted.status == "interrupted"
    # the data written by the half-started 1.1.0 (if it got that far) is still in the volume
    assert cd_world.read_in_app("/data/history").split()[0] == "1.0.0"
    # and the agent can deploy again afterwards
    assert deployer.deploy("1.1.0").outcome == "deployed"
    assert cd_world.served() == "1.1.0"


def test_killed_after_the_verdict_the_proven_new_version_stays(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")
    cd_world.releases.push("1.1.0")
    first = cd_world.deployer()
    first.deploy("1.0.0")
    first.state.close()

    kill_deploy_at(cd_world, "verdict", "1.1.0")
    deployer = cd_world.deployer()

    said = deployer.reconcile()

    assert "finished the interrupted deploy of 1.1.0" in said
    assert cd_world.served() == "1.1.0"
    assert cd_world.containers() == [cd_world.name]
    current, previous = deployer.state.current, deployer.state.previous
    assert current is not None and current.version == "1.1.0"
    assert previous is not None and previous.version == "1.0.0"
    assert deployer.state.journal is None


def test_killed_during_a_first_deploy_the_half_made_container_is_removed(cd_world: CdWorld) -> None:
    cd_world.releases.push("1.0.0")

    kill_deploy_at(cd_world, "new_started", "1.0.0")
    deployer = cd_world.deployer()

    said = deployer.reconcile()

    assert "first deploy of 1.0.0" in said
    assert cd_world.containers() == []
    assert deployer.state.current is None
    assert deployer.deploy("1.0.0").outcome == "deployed"
