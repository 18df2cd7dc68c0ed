"""One ``cd-agent watch`` for three apps of three strategies (swap, blue-green, swarm), real engine and registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import pytest

from tests.support.cd_apps import CdWorld, WatchProcess, version_of
from tests.support.many_apps import AppsFile
from tests.support.polling import wait_for
from tests.support.swarm_env import SwarmWorld

pytestmark = pytest.mark.docker

# What `cd-agent status --json` has always answered for one app.
STATUS_KEYS = {
    "image", "container", "current", "previous", "quarantined", "last_poll_at", "next_poll_at", "last_error",
    "deploy_in_progress",
}


def blue_green(world: CdWorld, caddy_image: str) -> dict[str, str]:
    return {
        "CD_STRATEGY": "blue-green", "CD_PROXY_IMAGE": caddy_image, "CD_PROXY_GRACE": "1",
        "CD_HEALTH_URL": world.url, "CD_HEALTH_TIMEOUT": "6",
    }


def test_three_apps_of_three_strategies_are_watched_deployed_and_shown_apart(
    swarm_world: SwarmWorld, new_world: Callable[[], CdWorld], apps_file: AppsFile, watches: list[WatchProcess],
    caddy_image: str,
) -> None:
    swap, green, swarm = new_world(), new_world(), swarm_world
    for world in (swap, green, swarm.world):
        world.releases.push("1.0.0")
    apps_file.add(swap, CD_POLL_INTERVAL="1")
    apps_file.add(green, CD_POLL_INTERVAL="1", **blue_green(green, caddy_image))
    apps_file.add(swarm.world, CD_POLL_INTERVAL="1")
    apps_file.write()

    watch = WatchProcess(apps_file.environ(), apps_file.root)
    watches.append(watch)

    wait_for(lambda: swap.served() == "1.0.0", timeout=120, what="the swap app serving 1.0.0")
    wait_for(lambda: green.served() == "1.0.0", timeout=120, what="the blue-green app serving 1.0.0")
    wait_for(lambda: swarm.served_by_tasks() == ["1.0.0"], timeout=120, what="the swarm app serving 1.0.0")
    for world in (swap, green, swarm.world):
        wait_for(partial(lambda name: version_of(apps_file.state(name)["current"]) == "1.0.0", world.name),
                 timeout=30, what=f"1.0.0 recorded for {world.name}")
        # Its own state folder and log folder, and its own run numbers.
        assert apps_file.paths(world.name).state.exists()
        assert [p.name.endswith("_run-0001.log") for p in apps_file.paths(world.name).log_dir.iterdir()] == [True]

    # A release of one app deploys that app only.
    swap.releases.push("1.1.0")
    wait_for(lambda: swap.served() == "1.1.0", timeout=60, what="the swap app serving 1.1.0")
    assert green.served() == "1.0.0" and swarm.served_by_tasks() == ["1.0.0"]

    listed = apps_file.cd_agent("status")
    assert listed.returncode == 0, listed.stderr
    for world in (swap, green, swarm.world):
        assert world.name in listed.stdout
    assert listed.stdout.count("last deploy") == 3

    one = apps_file.cd_agent("status", "--json", "--app", green.name)
    assert one.returncode == 0, one.stderr
    answer = json.loads(one.stdout)
    assert set(answer) == STATUS_KEYS and answer["container"] == green.name
    assert version_of(answer["current"]) == "1.0.0"
    service = json.loads(apps_file.cd_agent("status", "--json", "--app", swarm.name).stdout)
    assert set(service) == STATUS_KEYS | {"service"} and service["service"]["name"] == swarm.name

    unknown = apps_file.cd_agent("status", "--app", "nope")
    assert unknown.returncode == 2 and "no app named 'nope'" in unknown.stderr
    ambiguous = apps_file.cd_agent("rollback")
    assert ambiguous.returncode == 2 and "3 apps are configured" in ambiguous.stderr

    back = apps_file.cd_agent("rollback", "--app", swap.name)
    assert back.returncode == 0, back.stderr
    assert swap.served() == "1.0.0"
    assert [item["version"] for item in apps_file.state(swap.name)["quarantined"]] == ["1.1.0"]
    assert apps_file.state(green.name)["quarantined"] == []

    assert watch.stop() == 0
    log = watch.log()
    assert "Traceback" not in log
    assert f"[{swap.name}] new release 1.1.0" in log
    assert "watching 3 app(s)" in log
    # Stopping the watcher leaves every app running.
    assert swap.served() == "1.0.0" and green.served() == "1.0.0" and swarm.served_by_tasks() == ["1.0.0"]
