"""The CD agent against a real registry listing with `v`-prefixed and platform-suffixed tags."""

from __future__ import annotations

import pytest

from cd_agent.apps import single_target
from cd_agent.watcher import Watcher
from shared.registry import RegistryClient
from tests.support.cd_apps import CdWorld, cd_agent, status_json, version_of

pytestmark = pytest.mark.docker


def test_v_tags_are_deployed_by_their_own_name_and_platform_builds_never(cd_world: CdWorld) -> None:
    world = cd_world
    for tag in ("1.2.0", "v1.3.0", "1.4.0-arm64", "1.4.0-amd64"):
        world.releases.push(tag)
    settings = world.settings(CD_ALLOW_PRERELEASE="true")
    deployer = world.deployer(CD_ALLOW_PRERELEASE="true")

    with RegistryClient(settings.image) as registry:
        report = Watcher(single_target(settings), registry, deployer, deployer.state).poll_once()

    assert report.candidate == "v1.3.0"
    assert world.served() == "v1.3.0"
    current = deployer.state.current
    assert current is not None and current.version == "v1.3.0"

    # A poll from v1.3.0: nothing above it (the platform builds of 1.4.0 are not releases).
    with RegistryClient(settings.image) as registry:
        again = Watcher(single_target(settings), registry, deployer, deployer.state).poll_once()
    assert again.candidate is None

    # `cd-agent deploy 1.2.0`, then `deploy 1.3.0` finds the release tagged v1.3.0.
    down = cd_agent("deploy", "1.2.0", environ=world.environ(), cwd=world.root)
    assert down.returncode == 0, down.stderr
    assert world.served() == "1.2.0"
    up = cd_agent("deploy", "1.3.0", environ=world.environ(), cwd=world.root)
    assert up.returncode == 0, up.stderr
    assert world.served() == "v1.3.0"
    assert version_of(status_json(world)["current"]) == "v1.3.0"
