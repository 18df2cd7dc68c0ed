"""Two apps under one ``cd-agent watch``: one broken, one killed mid-deploy, a bad apps file at start and reload."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from functools import partial

import pytest

from shared.runstore import RunStore
from tests.support.cd_apps import CdWorld, WatchProcess, cd_agent, version_of
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.many_apps import AppsFile
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]


def current(apps_file: AppsFile, world: CdWorld) -> str | None:
    return version_of(apps_file.state(world.name)["current"])


def at_version(apps_file: AppsFile, world: CdWorld, version: str) -> bool:
    return current(apps_file, world) == version


def quarantined(apps_file: AppsFile, world: CdWorld) -> list[str]:
    return [item["version"] for item in apps_file.state(world.name)["quarantined"]]


@pytest.mark.reliability(
    "Two apps under one `cd-agent watch`; a release of one of them is broken (its process exits at once)",
    "only that app rolls back and quarantines the release; the other app's new release is deployed all "
    "the same, and each app's state shows only its own versions and quarantine",
)
def test_a_broken_app_is_quarantined_alone_and_the_other_keeps_deploying(
    cd_world: CdWorld, new_world: Callable[[], CdWorld], apps_file: AppsFile, watches: list[WatchProcess],
    observed: Observed,
) -> None:
    broken, fine = cd_world, new_world()
    for world in (broken, fine):
        world.releases.push("1.0.0")
        apps_file.add(world, CD_POLL_INTERVAL="0.5", CD_HEALTH_TIMEOUT="5")
    apps_file.write()
    watch = WatchProcess(apps_file.environ(), apps_file.root)
    watches.append(watch)
    for world in (broken, fine):
        wait_for(partial(at_version, apps_file, world, "1.0.0"), timeout=120, what=f"1.0.0 deployed to {world.name}")

    broken.releases.push("1.1.0", "broken")
    fine.releases.push("1.1.0")

    wait_for(lambda: quarantined(apps_file, broken) == ["1.1.0"], timeout=90, what="the broken 1.1.0 quarantined")
    wait_for(lambda: current(apps_file, fine) == "1.1.0", timeout=90, what="the other app at 1.1.0")
    assert broken.served() == "1.0.0" and current(apps_file, broken) == "1.0.0"
    assert fine.served() == "1.1.0" and quarantined(apps_file, fine) == []
    fine.releases.push("1.2.0")
    wait_for(lambda: fine.served() == "1.2.0", timeout=60, what="the other app keeps deploying: 1.2.0")
    observed(f"{broken.name}: 1.1.0 rolled back and quarantined; {fine.name}: 1.1.0 then 1.2.0 deployed")
    assert watch.stop() == 0
    assert "Traceback" not in watch.log()


@pytest.mark.reliability(
    "`cd-agent watch` with two apps SIGKILLed while one app's deploy of a release that never answers is at its "
    "health check (swap: its old container already stopped), the other app idle",
    "the next start reconciles every app before polling: the interrupted app's old release serves again and "
    "is current, no journal is left, its run of the release ends interrupted; the other app is untouched",
)
def test_a_kill_mid_deploy_with_two_apps_is_reconciled_per_app_at_the_next_start(
    cd_world: CdWorld, new_world: Callable[[], CdWorld], apps_file: AppsFile, watches: list[WatchProcess],
    observed: Observed,
) -> None:
    deploying, idle = cd_world, new_world()
    for world in (deploying, idle):
        world.releases.push("1.0.0")
        apps_file.add(world, CD_POLL_INTERVAL="0.5", CD_HEALTH_TIMEOUT="20" if world is deploying else "8")
    apps_file.write()
    first = WatchProcess(apps_file.environ(), apps_file.root)
    watches.append(first)
    for world in (deploying, idle):
        wait_for(partial(at_version, apps_file, world, "1.0.0"), timeout=120, what=f"1.0.0 deployed to {world.name}")

    deploying.releases.push("1.1.0", "silent")
    wait_for(lambda: (apps_file.state(deploying.name)["deploy_in_progress"] or {}).get("phase") == "new_started",
             timeout=90, what="the deploy of 1.1.0 at its health check")
    idle_container = idle.docker_client.containers.get(idle.name).id
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert deploying.served() is None  # the kill landed with the app down

    # Apps-file edits at the restart would be a reload's business: the same file, the same apps.
    second = WatchProcess(apps_file.environ(), apps_file.root)
    watches.append(second)
    undone = wait_for(lambda: second.lines("reconcile: undid the interrupted deploy of 1.1.0"), timeout=60,
                      what="the start-up reconcile of the interrupted app")
    assert f"1.0.0 is serving again as {deploying.name}" in undone[0]
    assert current(apps_file, deploying) == "1.0.0"
    assert idle.served() == "1.0.0" and current(apps_file, idle) == "1.0.0"
    assert idle.docker_client.containers.get(idle.name).id == idle_container  # not recreated
    with RunStore(apps_file.paths(deploying.name).runs) as runs:
        assert [(run.version, run.status) for run in runs.list(kind="deploy") if run.version == "1.1.0"][-1] == (
            "1.1.0", "interrupted"
        )
    # The watcher goes on to try 1.1.0 again (and fails its health check): not this scenario's business.
    observed(undone[0].split(" - ", 1)[-1])
    assert second.stop() == 0


@pytest.mark.reliability(
    "An apps file with a mistake (an unknown key, a value that is not a number) at `cd-agent watch`'s start",
    "the agent refuses to start with exit code 2 and one message naming the file, the app, the key and the "
    "reason; nothing is deployed",
)
def test_a_bad_apps_file_at_start_is_one_message_and_exit_2(cd_world: CdWorld, apps_file: AppsFile) -> None:
    apps_file.add(cd_world)
    cases = {
        f'[apps.{cd_world.name}]\nimage = "{cd_world.releases.repository}"\npoll_intervall = 5\n':
            f"[apps.{cd_world.name}] unknown key(s) 'poll_intervall'",
        f'[apps.{cd_world.name}]\nimage = "{cd_world.releases.repository}"\npoll_interval = "soon"\n':
            f"[apps.{cd_world.name}] poll_interval='soon'",
    }
    for text, message in cases.items():
        apps_file.write(text)
        result = cd_agent("watch", environ=apps_file.environ(), cwd=apps_file.root, timeout=60)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "CD_APPS_FILE=" in lines[0], result.stderr
    assert cd_world.containers() == []


@pytest.mark.reliability(
    "The apps file edited while `cd-agent watch` runs: first with a mistake, then with a second app added "
    "and the first app's poll interval changed; SIGHUP after each edit (`systemctl reload`)",
    "the bad file leaves the running configuration in place with one error line (the first app keeps being "
    "watched and deployed); the good file adds the second app from the next poll (it is deployed) without "
    "a restart; removing an app stops watching it and leaves its container running",
)
def test_a_reload_keeps_the_running_apps_on_a_bad_file_and_takes_a_good_one(
    cd_world: CdWorld, new_world: Callable[[], CdWorld], apps_file: AppsFile, watches: list[WatchProcess],
    observed: Observed,
) -> None:
    first, added = cd_world, new_world()
    first.releases.push("1.0.0")
    added.releases.push("1.0.0")
    apps_file.add(first, CD_POLL_INTERVAL="0.5")
    apps_file.write()
    watch = WatchProcess(apps_file.environ(), apps_file.root)
    watches.append(watch)
    wait_for(lambda: first.served() == "1.0.0", timeout=120, what="the first app deployed")

    good = apps_file.path.read_text()
    apps_file.write(good + "\n[apps.second]\nimgae = 'x'\n")
    watch.process.send_signal(signal.SIGHUP)
    refused = wait_for(lambda: watch.lines("reload refused"), timeout=30, what="the reload refused")
    assert len(refused) == 1 and "unknown key(s) 'imgae'" in refused[0] and "ERROR" in refused[0]
    first.releases.push("1.1.0")
    wait_for(lambda: first.served() == "1.1.0", timeout=60, what="the first app still watched after a bad reload")

    apps_file.add(added, CD_POLL_INTERVAL="0.5")
    apps_file.overrides[first.name] = {"CD_POLL_INTERVAL": "2"}
    apps_file.write()
    watch.process.send_signal(signal.SIGHUP)
    wait_for(lambda: added.served() == "1.0.0", timeout=120, what="the added app deployed after the reload")
    assert watch.lines(f"reload: now watching {added.name}")
    assert watch.lines(f"reload: {first.name} changed")

    del apps_file.worlds[first.name]
    apps_file.write()
    watch.process.send_signal(signal.SIGHUP)
    wait_for(lambda: watch.lines(f"reload: {first.name} is no longer watched"), timeout=30, what="the removal")
    first.releases.push("1.2.0")
    added.releases.push("1.1.0")
    wait_for(lambda: added.served() == "1.1.0", timeout=60, what="the remaining app deployed 1.1.0")
    assert first.served() == "1.1.0"  # not watched any more, and left running
    observed(refused[0].split(" - ", 1)[-1])
    assert watch.stop() == 0
    assert "Traceback" not in watch.log()


@pytest.fixture
def fault_proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    server = FaultProxy(registry.url)
    yield server
    server.close()


def line_index(watch: WatchProcess, text: str) -> int:
    """Where the first log line containing ``text`` is in the watcher's log (-1: not there)."""
    return next((i for i, line in enumerate(watch.log().splitlines()) if text in line), -1)


@pytest.mark.reliability(
    "Two apps under one `cd-agent watch`; one app's registry stalls (every `tags/list` request accepted and "
    "never answered) while the other app gets a new release",
    "the other app's release is found and deployed while the stalled app's polls are still hanging: the "
    "stalled app never holds up another app's polls (each app polls on its own thread)",
)
def test_a_stalled_registry_of_one_app_never_delays_another_apps_deploy(
    cd_world: CdWorld, new_world: Callable[[], CdWorld], apps_file: AppsFile, watches: list[WatchProcess],
    fault_proxy: FaultProxy, registry: RegistryServer, observed: Observed,
) -> None:
    stalled, other = cd_world, new_world()
    for world in (stalled, other):
        world.releases.push("1.0.0")
    # The stalled app reaches the registry (and dockerd pulls its image) only through the proxy.
    apps_file.add(stalled, CD_POLL_INTERVAL="0.5",
                  CD_IMAGE=stalled.releases.repository.replace(registry.host, fault_proxy.host, 1))
    apps_file.add(other, CD_POLL_INTERVAL="0.5")
    apps_file.write()
    watch = WatchProcess(apps_file.environ(LOG_LEVEL="DEBUG"), apps_file.root)
    watches.append(watch)
    for world in (stalled, other):
        wait_for(partial(at_version, apps_file, world, "1.0.0"), timeout=120, what=f"1.0.0 deployed to {world.name}")

    fault_proxy.script(r"/tags/list", forever=Fault.hang(600))
    wait_for(lambda: "hang" in fault_proxy.outcomes(r"/tags/list"), timeout=30, what="the stalled app's poll hanging")
    stall_seen = len(fault_proxy.outcomes(r"/tags/list"))
    other.releases.push("1.1.0")

    wait_for(lambda: at_version(apps_file, other, "1.1.0"), timeout=90, what="the other app at 1.1.0")
    assert other.served() == "1.1.0"
    # While the other app found and deployed its release, the stalled app never finished a poll: every
    # tags/list it sent since the stall began is hanging or was dropped by its client's timeout.
    assert set(fault_proxy.outcomes(r"/tags/list")[stall_seen - 1:]) == {"hang"}
    # The state says 1.1.0 a moment before its log line has come through the watcher's pipe.
    wait_for(lambda: line_index(watch, f"[{other.name}] deployed 1.1.0") >= 0, timeout=30, what="the deployed line")
    found = line_index(watch, f"[{other.name}] new release 1.1.0")
    assert 0 <= found < line_index(watch, f"[{other.name}] deployed 1.1.0")
    # Judged by the log's order, not by counting lines at a moment: the watcher's output reaches the
    # test through a pipe, so a poll line written before the stall may be read a moment later.
    finished = [line for line in watch.log().splitlines()[found:] if f"[{stalled.name}] poll:" in line]
    assert not finished, finished
    assert stalled.served() == "1.0.0" and current(apps_file, stalled) == "1.0.0"
    hung = len(fault_proxy.outcomes(r"/tags/list")) - stall_seen + 1
    observed(f"{other.name}: 1.1.0 found and deployed while {stalled.name}'s registry stalled "
             f"({hung} tags/list request(s) of {stalled.name} hanging or timed out meanwhile, none answered)")
    fault_proxy.clear()
    assert watch.stop() == 0
    assert "Traceback" not in watch.log()


@pytest.mark.reliability(
    "Two apps under one `cd-agent watch` with `CD_MAX_PARALLEL_DEPLOYS=2`; one app deploys a release that "
    "never answers its health check while the other app gets a new release",
    "the other app's release is deployed while the first app's deploy still waits at its health check; the "
    "first app then rolls back and quarantines its release (with the default of 1, the other app waits for "
    "the deploy slot by design)",
)
def test_with_two_deploy_slots_a_stuck_deploy_never_delays_another_apps_deploy(
    cd_world: CdWorld, new_world: Callable[[], CdWorld], apps_file: AppsFile, watches: list[WatchProcess],
    observed: Observed,
) -> None:
    stuck, other = cd_world, new_world()
    for world in (stuck, other):
        world.releases.push("1.0.0")
    # A health URL: without one a running container is healthy, and the silent release would pass.
    apps_file.add(stuck, CD_POLL_INTERVAL="0.5", CD_HEALTH_TIMEOUT="30", CD_HEALTH_URL=stuck.url)
    apps_file.add(other, CD_POLL_INTERVAL="0.5")
    apps_file.write()
    watch = WatchProcess(apps_file.environ(CD_MAX_PARALLEL_DEPLOYS="2"), apps_file.root)
    watches.append(watch)
    for world in (stuck, other):
        wait_for(partial(at_version, apps_file, world, "1.0.0"), timeout=120, what=f"1.0.0 deployed to {world.name}")

    def stuck_phase() -> str | None:
        return (apps_file.state(stuck.name)["deploy_in_progress"] or {}).get("phase")

    stuck.releases.push("1.1.0", "silent")
    wait_for(lambda: stuck_phase() == "new_started", timeout=90, what="the stuck app's deploy at its health check")
    other.releases.push("1.1.0")

    wait_for(lambda: at_version(apps_file, other, "1.1.0"), timeout=90, what="the other app at 1.1.0")
    # The stuck app's deploy was still at its health check when the other app's deploy was recorded.
    assert stuck_phase() == "new_started"
    assert other.served() == "1.1.0"
    assert watch.lines("waits for a deploy slot") == []
    wait_for(lambda: quarantined(apps_file, stuck) == ["1.1.0"], timeout=90, what="the stuck 1.1.0 quarantined")
    assert stuck.served() == "1.0.0" and current(apps_file, stuck) == "1.0.0"
    # The state is recorded a moment before the log line has come through the watcher's pipe.
    wait_for(lambda: f"[{stuck.name}] deploy of 1.1.0" in watch.log(), timeout=30, what="the stuck deploy's end line")
    log = watch.log()
    assert 0 <= log.find(f"[{other.name}] deployed 1.1.0") < log.find(f"[{stuck.name}] deploy of 1.1.0")
    observed(f"{other.name}: 1.1.0 deployed while {stuck.name}'s 1.1.0 waited at its health check; "
             f"{stuck.name}: 1.1.0 then rolled back and quarantined")
    assert watch.stop() == 0
    assert "Traceback" not in watch.log()
