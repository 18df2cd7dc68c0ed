"""``cd-agent watch`` as a real process: deploys from nothing, follows new tags, honours the constraint."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.cd_apps import CdWorld, WatchProcess, state_json, status_json, version_of
from tests.support.polling import wait_for

pytestmark = pytest.mark.docker



@pytest.fixture
def start_watch() -> Iterator[type[WatchProcess]]:
    started: list[WatchProcess] = []

    class Tracked(WatchProcess):
        def __init__(self, environ: dict[str, str], cwd: Path) -> None:
            super().__init__(environ, cwd)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


def current_version(world: CdWorld) -> str | None:
    return version_of(status_json(world)["current"])


def test_from_nothing_then_each_new_tag_within_two_poll_intervals(cd_world: CdWorld, start_watch):
    world = cd_world
    interval = 2.0
    world.releases.push("1.0.0")
    world.releases.push("1.0.1")

    watch = start_watch(world.environ(CD_POLL_INTERVAL=str(interval)), world.root)

    wait_for(lambda: world.served() == "1.0.1", timeout=90, what="the newest release served")
    wait_for(lambda: current_version(world) == "1.0.1", timeout=30, what="1.0.1 recorded as deployed")
    assert "reconcile:" in watch.log()
    assert not watch.lines("deploying 1.0.0") and not watch.lines("new release 1.0.0")

    world.releases.push("1.1.0")
    pushed = datetime.now(UTC)

    noticed = watch.logged_at("new release 1.1.0")
    assert (noticed - pushed).total_seconds() <= 2 * interval + 0.5
    wait_for(lambda: world.served() == "1.1.0", timeout=60, what="1.1.0 served")
    wait_for(lambda: current_version(world) == "1.1.0", timeout=30, what="1.1.0 recorded as deployed")

    # The poll that deployed 1.1.0 lasted as long as its deploy (a process of its own): look at an idle one.
    recorded = datetime.now(UTC)

    def idle_poll_done() -> dict[str, Any] | None:
        status = state_json(world)
        last_poll = datetime.fromisoformat(status["last_poll_at"])
        next_poll = datetime.fromisoformat(status["next_poll_at"])
        return status if recorded < last_poll < next_poll else None

    status = wait_for(idle_poll_done, timeout=30, what="an idle poll after the deploy")
    assert status is not None
    assert version_of(status["previous"]) == "1.0.1"
    last_poll = datetime.fromisoformat(status["last_poll_at"])
    next_poll = datetime.fromisoformat(status["next_poll_at"])
    assert 0 < (next_poll - last_poll).total_seconds() <= 3 * interval

    assert watch.stop() == 0
    assert "SIGTERM received" in watch.log()
    assert "watcher stopped" in watch.log()
    assert "Traceback" not in watch.log()
    assert world.served() == "1.1.0"  # stopping the watcher leaves the app alone


def test_the_version_constraint_keeps_1_0_0_out(cd_world: CdWorld, start_watch):
    world = cd_world
    for version in ("0.9.0", "0.9.1", "1.0.0"):
        world.releases.push(version)

    watch = start_watch(world.environ(CD_POLL_INTERVAL="0.5", CD_VERSION_CONSTRAINT="<1.0.0"), world.root)

    wait_for(lambda: world.served() == "0.9.1", timeout=90, what="0.9.1 served")
    wait_for(lambda: current_version(world) == "0.9.1", timeout=30, what="0.9.1 recorded")
    # a few more polls: 1.0.0 stays out (the state read in-process: a `cd-agent status` per look would be
    # slower than the polls it counts)
    polls = {state_json(world)["last_poll_at"]}

    def three_more_polls() -> bool:
        polls.add(state_json(world)["last_poll_at"])
        return len(polls) > 3

    wait_for(three_more_polls, timeout=30, what="3 more polls")
    assert world.served() == "0.9.1"
    assert watch.lines("new release 0.9.1")
    assert not watch.lines("new release 1.0.0")
    assert not watch.lines("deploy 1.0.0")
    assert watch.stop() == 0
