"""An app inside a stack (issue 20, part 1) when things go wrong: a broken release, and a setup the new
container cannot carry. The stack is made by hand with ``docker run`` (tests/support/stacks.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.cd_apps import AppReleases, CdWorld
from tests.support.polling import wait_for
from tests.support.stacks import Stack

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]


def identity(world: CdWorld) -> tuple[str, str, str, bool]:
    """The app container's id, name, start time and running: the same while nobody touches it."""
    data: dict[str, Any] = world.docker_client.api.inspect_container(world.name)
    return data["Id"], data["Name"].lstrip("/"), data["State"]["StartedAt"], data["State"]["Running"]


@pytest.mark.reliability(
    "A broken release of an app inside a stack (app + db made by `docker run` on a user network, alias and "
    "static IP)",
    "the db is untouched (same container, never restarted); the app is rolled back to the container the user "
    "made, healthy again, on its network with its alias and static IP, reached by the db by its alias; the "
    "release is quarantined",
)
def test_a_broken_release_inside_a_stack(
    cd_world: CdWorld, stack: Stack, stack_releases: AppReleases, observed: Observed
) -> None:
    by_hand = stack.run_app(cd_world, "1.0.0")
    db_before = stack.db_identity()
    deployer = cd_world.deployer()

    report = deployer.deploy("1.2.0")

    assert (report.outcome, report.quarantined) == ("rolled_back", True), report
    wait_for(lambda: stack.health(cd_world.name) == "healthy", timeout=30, what="1.0.0 healthy again")
    app = cd_world.docker_client.api.inspect_container(cd_world.name)
    assert app["Id"] == by_hand and cd_world.containers() == sorted([cd_world.name, stack.db])
    on_stack = app["NetworkSettings"]["Networks"][stack.network]
    assert "web" in on_stack["Aliases"] and on_stack["IPAddress"] == stack.app_address
    assert stack.fetch_in(stack.db, "http://web:8080/") == "1.0.0" and cd_world.served() == "1.0.0"
    assert stack.db_identity() == db_before
    observed(f"rolled back at {report.failed_step}; db {db_before[0][:12]} untouched; web is 1.0.0 again "
             f"at {on_stack['IPAddress']}")


@pytest.mark.reliability(
    "The app runs with `--network container:<owner>` and the owner was recreated since (its id is gone)",
    "the deploy fails before the app container is touched (same container, name, start), naming the gone "
    "container and why; nothing is created or quarantined",
)
def test_a_network_mode_whose_container_is_gone_is_refused_before_touching(
    cd_world: CdWorld, stack: Stack, stack_releases: AppReleases, db_image: str, observed: Observed
) -> None:
    owner = f"{cd_world.name}-owner"
    client = cd_world.docker_client
    def run_owner() -> str:
        # On the stack's network (the engine's default bridge is not needed by this test).
        made = client.containers.run(db_image, ["sleep", "3600"], name=owner, network=stack.network, detach=True)
        return str(made.id)

    first_owner = run_owner()
    client.images.pull(cd_world.releases.repository, tag="1.0.0")
    client.containers.run(
        f"{cd_world.releases.repository}:1.0.0", name=cd_world.name, network_mode=f"container:{owner}", detach=True,
        labels={"com.example.team": "shop"},
    )
    client.containers.get(owner).remove(force=True)
    run_owner()  # recreated: a new id
    before = identity(cd_world)
    deployer = cd_world.deployer(CD_PORTS="")

    report = deployer.deploy("1.1.0")

    assert (report.outcome, report.failed_step) == ("failed", "prepare"), report
    assert f"container {first_owner[:12]}" in (report.error or "") and "which is gone" in (report.error or "")
    assert identity(cd_world) == before
    assert cd_world.containers() == sorted([cd_world.name, owner, stack.db])
    assert deployer.state.quarantined_versions == set()
    observed(f"refused: {report.error}")
