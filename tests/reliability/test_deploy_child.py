"""The deploy process of ``cd-agent watch`` SIGKILLed in the middle of a deploy, while the watcher lives on."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.runstore import RunStore
from tests.support.cd_apps import CdWorld, WatchProcess, cd_agent, state_json, version_of
from tests.support.polling import wait_for

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux: /proc/PID/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:
            pass
    return found


@pytest.mark.reliability(
    "The deploy process of `cd-agent watch` SIGKILLed during the health check of 1.1.0 (swap strategy: 1.0.0 "
    "already stopped, the app down), the watcher itself left running",
    "the watcher logs the deploy as failed and reconciles at once in a new deploy process: 1.0.0 serves "
    "again and is recorded as current, no journal, the run of 1.1.0 ends interrupted (not left running), "
    "the watcher keeps polling",
)
def test_a_killed_deploy_process_is_reconciled_by_the_watcher(
    cd_world: CdWorld, watches: list[WatchProcess], observed: Observed
) -> None:
    world = cd_world
    process, child = _watching_1_1_0_at_its_health_check(world, watches, health_timeout=120)
    assert world.served() != "1.0.0"  # the swap has stopped 1.0.0: the kill lands with the app down
    os.kill(child, signal.SIGKILL)

    def restored() -> bool:
        assert process.process.poll() is None, process.log()[-3000:]
        status = state_json(world)
        return (
            world.served() == "1.0.0" and version_of(status["current"]) == "1.0.0"
            and status["deploy_in_progress"] is None
        )

    wait_for(restored, timeout=60, what="1.0.0 serving again after the watcher's reconcile")
    failure = process.lines("deploy of 1.1.0 failed: the deploy process was killed by SIGKILL")
    assert failure and "ERROR" in failure[0], process.log()[-3000:]
    reconciled = wait_for(lambda: process.lines("reconcile: undid the interrupted deploy of 1.1.0"), timeout=30,
                          what="the reconcile's line")
    assert world.containers() == [world.name]
    with RunStore(world.target().paths.runs) as runs:
        history = [(r.version, r.status) for r in reversed(runs.list(limit=100)) if r.kind == "deploy"]
    assert history == [("1.0.0", "succeeded"), ("1.1.0", "interrupted")], history
    assert "Traceback" not in process.log()
    assert process.process.poll() is None  # the watcher lives on
    observed(f"{failure[0].split('| ', 3)[-1][:120]}; {reconciled[0].split('| ', 3)[-1][:160]}; runs {history}")


@pytest.mark.reliability(
    "SIGTERM to `cd-agent watch` and to its deploy process at once (as systemd stops the unit) during the "
    "health check of a broken 1.1.0 over a serving 1.0.0",
    "the deploy runs to its end (1.1.0 rolled back and quarantined, 1.0.0 serving again, no journal, the run "
    "finished), then the watcher exits 0; nothing is left half-done",
)
def test_sigterm_lets_the_deploy_process_finish_then_the_watcher_exits(
    cd_world: CdWorld, watches: list[WatchProcess], observed: Observed
) -> None:
    world = cd_world
    process, child = _watching_1_1_0_at_its_health_check(world, watches, health_timeout=6)
    for pid in (process.process.pid, child):
        os.kill(pid, signal.SIGTERM)

    assert process.process.wait(timeout=60) == 0, process.log()[-3000:]
    status = state_json(world)
    assert version_of(status["current"]) == "1.0.0"
    assert status["deploy_in_progress"] is None
    assert [item["version"] for item in status["quarantined"]] == ["1.1.0"]
    assert world.served() == "1.0.0"
    assert world.containers() == [world.name]
    with RunStore(world.target().paths.runs) as runs:
        history = [(r.version, r.status) for r in reversed(runs.list(limit=100)) if r.kind == "deploy"]
    assert history == [("1.0.0", "succeeded"), ("1.1.0", "failed")], history
    log = process.log()
    assert "SIGTERM received" in log and "killed by" not in log
    assert "deploy of 1.1.0 ended rolled_back" in log and "watcher stopped" in log
    assert "Traceback" not in log
    observed(f"watcher exit 0 after the deploy ended; runs {history}; quarantined 1.1.0")


def _watching_1_1_0_at_its_health_check(
    world: CdWorld, watches: list[WatchProcess], *, health_timeout: int
) -> tuple[WatchProcess, int]:
    """1.0.0 deployed, then a watcher whose deploy process is at the health check of a silent 1.1.0: the
    watcher and that process's pid."""
    world.releases.push("1.0.0")
    world.releases.push("1.1.0", "silent")  # never answers: its health check runs until the timeout
    world.overrides["CD_HEALTH_URL"] = world.url  # without it a running container would pass
    first = cd_agent("deploy", "1.0.0", environ=world.environ(), cwd=world.root)
    assert first.returncode == 0, first.stderr
    # A long interval keeps the watcher's retry of 1.1.0 (after 2 intervals) out of what is checked.
    process = WatchProcess(
        world.environ(CD_POLL_INTERVAL="15", CD_HEALTH_TIMEOUT=str(health_timeout)), world.root
    )
    watches.append(process)

    def health_check_under_way() -> bool:
        assert process.process.poll() is None, process.log()[-3000:]
        progress = state_json(world)["deploy_in_progress"]
        return progress is not None and progress["phase"] == "new_started"

    wait_for(health_check_under_way, timeout=90, what="the deploy of 1.1.0 at its health check")
    [child] = children(process.process.pid)
    return process, child
