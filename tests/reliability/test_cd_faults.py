"""CD agent under faults: registry errors, cut pulls, a taken port, hung health checks, Docker and state loss."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker.errors
import httpx
import pytest

from shared.runstore import Run, RunStore
from tests.support.cd_apps import START, CdWorld, HttpProbe, WatchProcess, cd_agent, state_json, version_of
from tests.support.fault_proxy import DockerSocketRelay, Fault, FaultProxy
from tests.support.polling import wait_for
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.docker

Observed = Callable[[str], None]
POLL = "0.5"


# helpers


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    server = FaultProxy(registry.url)
    yield server
    server.close()


@pytest.fixture
def proxied(cd_world: CdWorld, proxy: FaultProxy, registry: RegistryServer) -> CdWorld:
    """``cd_world`` whose agent (and dockerd's pulls) reach the registry only through ``proxy``."""
    cd_world.overrides["CD_IMAGE"] = cd_world.releases.repository.replace(registry.host, proxy.host, 1)
    return cd_world


def watch(world: CdWorld, watches: list[WatchProcess], **overrides: str) -> WatchProcess:
    settings = {"CD_POLL_INTERVAL": POLL, "LOG_LEVEL": "DEBUG", **overrides}
    process = WatchProcess(world.environ(**settings), world.root)
    watches.append(process)
    return process


def identity(world: CdWorld) -> tuple[str, str]:
    """The app container's id and State.StartedAt: both stay the same while nobody touches it."""
    container = world.docker_client.containers.get(world.name)
    return str(container.id), str(container.attrs["State"]["StartedAt"])


def containers(world: CdWorld) -> list[str]:
    """Names of this world's containers. Filtered by the engine: listing every container races other
    tests removing theirs (a 404 while inspecting one that just went)."""
    listed = world.docker_client.api.containers(all=True, filters={"name": world.name})
    return sorted(name.lstrip("/") for item in listed for name in item["Names"])


def deploy_runs(world: CdWorld) -> list[Run]:
    with RunStore(world.target().paths.runs) as runs:
        return [run for run in runs.list(limit=1000) if run.kind == "deploy"]


def wait_deployed(world: CdWorld, version: str, process: WatchProcess, timeout: float = 90) -> None:
    def deployed() -> bool:
        assert process.process.poll() is None, f"cd-agent watch exited:\n{process.log()[-3000:]}"
        return world.served() == version and version_of(state_json(world)["current"]) == version

    wait_for(deployed, timeout=timeout, what=f"{version} deployed and recorded")


def config_digest(registry: RegistryServer, repository: str, tag: str) -> str:
    path = repository.split("/", 1)[1]
    answer = httpx.get(
        f"{registry.url}/v2/{path}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    answer.raise_for_status()
    return str(answer.json()["config"]["digest"])


def push_tags(world: CdWorld, versions: list[str]) -> None:
    """One broken build pushed under every tag in ``versions`` (one build: builds are the slow part).

    All are in the registry before the watcher starts, and none is left in the local image store."""
    world.releases.push(versions[0], "broken")
    world.releases.alias(versions[0], *versions[1:])


def assert_kept_serving(probe: HttpProbe) -> None:
    """The app answered throughout: no gap between good answers longer than a second. (One probe of 0.5 s
    may time out on a busy machine without the app having stopped; a stopped app means seconds.)"""
    assert probe.longest_outage < 1.0, (
        f"the app stopped answering: {failed_probes(probe)} failed probes, gap of {probe.longest_outage:.2f}s"
    )


def failed_probes(probe: HttpProbe) -> int:
    return sum(not ok for _, ok, _ in probe.samples)


def probe_summary(probe: HttpProbe) -> str:
    return (
        f"{len(probe.samples) - failed_probes(probe)} of {len(probe.samples)} probes answered "
        f"(longest gap {probe.longest_outage:.2f}s)"
    )


def outages(probe: HttpProbe) -> list[float]:
    """Each stretch without a good answer: from the last good answer before it to the first after it."""
    found: list[float] = []
    last_good: float | None = None
    failing = False
    for moment, ok, _ in probe.samples:
        if ok:
            if failing and last_good is not None:
                found.append(moment - last_good)
            last_good, failing = moment, False
        else:
            failing = True
    return found


# registry faults


@pytest.mark.reliability(
    "Registry answers 500, 500, 429 + Retry-After, a truncated body, a reset, a hang past the client's 15 s "
    "timeout, then 500s, while `cd-agent watch` polls (CD_POLL_INTERVAL=0.2) with a new release waiting",
    "the watcher survives every fault; the running app is never touched (same container id and StartedAt, "
    "HTTP keeps answering); when the faults stop the new release is deployed",
)
def test_registry_faults_never_touch_the_app(
    proxied: CdWorld, proxy: FaultProxy, watches: list[WatchProcess], observed: Observed
) -> None:
    world = proxied
    world.releases.push("1.0.0")
    process = watch(world, watches, CD_POLL_INTERVAL="0.2")
    wait_deployed(world, "1.0.0", process)
    before = identity(world)

    proxy.script(
        r"/tags/list",
        Fault.status_code(500), Fault.status_code(500), Fault.status_code(429, retry_after=1), Fault.truncate(),
        Fault.reset(), Fault.hang(20), Fault.status_code(503),
        forever=Fault.status_code(500),
    )
    world.releases.push("1.0.1")
    began = time.monotonic()
    with HttpProbe(world.url, interval=0.1) as probe:
        wait_for(lambda: proxy.pending() == 0, timeout=90, what="every scripted fault served")
        served = len(proxy.outcomes("/tags/list"))
        wait_for(lambda: len(proxy.outcomes("/tags/list")) >= served + 2, timeout=30, what="two polls after the hang")
        faulted = time.monotonic() - began

        assert process.process.poll() is None
        assert identity(world) == before
        assert world.served() == "1.0.0"
        assert_kept_serving(probe)
        during = probe_summary(probe)
        assert not any(outcome.startswith("pass") for outcome in proxy.outcomes("/manifests/1.0.1"))
        warnings = process.lines("backing off")
        assert len(warnings) == 1, warnings  # one warning for the whole streak

        proxy.clear()
        cleared = time.monotonic()
        wait_deployed(world, "1.0.1", process)
        recovered = time.monotonic() - cleared

    wait_for(lambda: process.lines("registry reachable again"), timeout=30, what="the recovery logged")
    assert len(process.lines("registry reachable again")) == 1
    assert "Traceback" not in process.log()
    assert process.stop() == 0
    kinds = proxy.outcomes("/tags/list")
    observed(
        f"{len(kinds) - kinds.count('pass:200')} faulty answers in {faulted:.0f}s "
        f"({', '.join(dict.fromkeys(k for k in kinds if not k.startswith('pass')))}); watcher alive, one "
        f"'backing off' warning; container id and StartedAt unchanged; during the faults {during}; "
        f"1.0.1 deployed {recovered:.1f}s after the faults stopped"
    )


@pytest.mark.reliability(
    "A pull cut midway: the proxy serves the manifest of the new release but cuts the download of its image "
    "configuration blob in half, every time",
    "the deploy fails cleanly (no stray container, no swap), the old version keeps serving, the release is not "
    "quarantined (not its fault), the watcher retries later with backoff, and deploys it once pulls work",
)
def test_a_pull_cut_midway_leaves_the_old_app_serving(
    proxied: CdWorld, proxy: FaultProxy, registry: RegistryServer, watches: list[WatchProcess], observed: Observed
) -> None:
    world = proxied
    world.releases.push("1.0.0")
    process = watch(world, watches)
    wait_deployed(world, "1.0.0", process)
    before = identity(world)

    # The tags stay hidden until the fault is in place (the blob's digest is known only after the push).
    proxy.script(r"/tags/list", forever=Fault.status_code(503))
    world.releases.push("1.0.1")
    # The image configuration: dockerd gives up on it after a few quick attempts, where a cut layer
    # download is retried with a backoff of more than a minute.
    config = config_digest(registry, world.releases.repository, "1.0.1")
    with contextlib.suppress(docker.errors.ImageNotFound):
        world.docker_client.images.remove(config, force=True)  # so dockerd has to download it
    proxy.clear()
    proxy.script(rf"/blobs/{config}", forever=Fault.truncate())
    with HttpProbe(world.url, interval=0.1) as probe:

        def failed_pulls() -> list[Run]:
            return [r for r in deploy_runs(world) if r.version == "1.0.1" and r.status == "failed"]

        wait_for(lambda: len(failed_pulls()) >= 2, timeout=90, what="two failed attempts to deploy 1.0.1")
        runs = failed_pulls()
        status = state_json(world)

        assert process.process.poll() is None
        assert all(run.failed_step == "pull" for run in runs), [(r.failed_step, r.error) for r in runs]
        assert identity(world) == before
        assert containers(world) == [world.name]
        assert status["quarantined"] == []
        assert version_of(status["current"]) == "1.0.0"
        assert_kept_serving(probe)
        during = probe_summary(probe)
        assert proxy.outcomes("/manifests/1.0.1") and "truncate" in proxy.outcomes(config)
        gap = (runs[0].created_at - runs[1].created_at).total_seconds()  # newest first
        assert gap >= 2 * float(POLL) * 0.9, f"retried after {gap:.2f}s: no backoff"

        proxy.clear()
        wait_deployed(world, "1.0.1", process)

    assert containers(world) == [world.name]
    assert process.stop() == 0
    observed(
        f"{len(runs)} deploy runs of 1.0.1 failed at 'pull' ({runs[-1].error}), {gap:.1f}s apart; container "
        "unchanged, no stray container, 1.0.1 not quarantined; meanwhile "
        f"{during}; deployed once the blob passed again"
    )


# the host and the health check


@pytest.mark.reliability(
    "First deploy of a release whose CD_PORTS host port is already taken by a foreign listener",
    "a clear error naming the port problem, non-zero exit, nothing left behind (no container, no current "
    "version)",
)
def test_a_taken_host_port_fails_clearly_and_leaves_nothing(cd_world: CdWorld, observed: Observed) -> None:
    world = cd_world
    world.releases.push("1.0.0")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as foreign:
        foreign.bind(("127.0.0.1", world.port))
        foreign.listen(1)

        result = cd_agent("deploy", "1.0.0", environ=world.environ(), cwd=world.root)

        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert "address already in use" in message or "port is already allocated" in message, message
        assert containers(world) == []
    status = state_json(world)
    assert status["current"] is None
    quarantined = [q["version"] for q in status["quarantined"]]
    runs = deploy_runs(world)
    assert [(r.version, r.status, r.failed_step) for r in runs] == [("1.0.0", "failed", "start")]
    observed(f"exit 1, '...{message[-110:]}'; no container left; quarantined: {quarantined or 'nothing'}")


HANGING_HEALTH = START.replace(
    'printf \'%s\' "$APP_VERSION" > /www/index.html',
    "mkdir -p /www/cgi-bin\n"
    "printf '#!/bin/sh\\nexec sleep 3600\\n' > /www/cgi-bin/health\n"
    "chmod +x /www/cgi-bin/health\n"
    'printf \'%s\' "$APP_VERSION" > /www/index.html',
)


@pytest.mark.reliability(
    "A release whose health URL accepts the connection but never answers (a CGI that sleeps), CD_HEALTH_TIMEOUT=4",
    "the verdict comes within CD_HEALTH_TIMEOUT (plus one probe), the release is rolled back and quarantined, "
    "the old version serves again",
)
def test_a_hanging_health_check_is_cut_at_the_timeout(cd_world: CdWorld, observed: Observed) -> None:
    world = cd_world
    assert HANGING_HEALTH != START
    world.releases.push("1.0.0")
    world.releases.push("1.1.0", start=HANGING_HEALTH)
    assert world.deployer().deploy("1.0.0").outcome == "deployed"
    timeout = 4.0
    deployer = world.deployer(CD_HEALTH_URL=f"{world.url}cgi-bin/health", CD_HEALTH_TIMEOUT=str(timeout))

    with HttpProbe(world.url, interval=0.1) as probe:
        report = deployer.deploy("1.1.0")
        probe.wait_serving("1.0.0")

    assert report.outcome == "rolled_back", report
    assert report.error is not None and "did not answer 2xx within 4s" in report.error
    assert world.served() == "1.0.0"
    assert containers(world) == [world.name]
    assert deployer.state.is_quarantined("1.1.0")
    run = deployer.runs.get(report.run or 0)
    assert run is not None and run.log_path is not None
    log = Path(run.log_path).read_text()
    started = _logged_at(log, "started 1.1.0 in ")  # "started 1.1.0 in 0.31s; health check ..."
    verdict = _logged_at(log, "1.1.0 failed at health")
    assert "ReadTimeout" in log  # the probe was cut by its own timeout, not refused
    assert verdict - started <= timeout + 1.5, f"verdict after {verdict - started:.2f}s"
    observed(
        f"verdict {verdict - started:.2f}s after start (timeout {timeout:g}s): {report.error}; rolled back, "
        f"1.1.0 quarantined; longest outage {probe.longest_outage:.2f}s"
    )


def _logged_at(log: str, text: str) -> float:
    """Seconds since midnight of the first run-log line containing ``text`` (lines start with a UTC time)."""
    line = next(line for line in log.splitlines() if text in line)
    clock = line.split(" | ", 1)[0].split(" ")[1]
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# the Docker daemon and the state file




@pytest.mark.reliability(
    "The Docker daemon unreachable during `cd-agent watch` (DOCKER_HOST is a relay to the real socket, taken "
    "down for a while, then back) while a new release waits",
    "the watcher survives; the app keeps serving; deploy attempts fail before any swap, are not quarantined "
    "and back off; once the daemon is back the release is deployed",
)
def test_the_watcher_survives_a_dead_docker_socket(
    cd_world: CdWorld, docker_relay: DockerSocketRelay, watches: list[WatchProcess], observed: Observed
) -> None:
    world = cd_world
    world.overrides["DOCKER_HOST"] = docker_relay.docker_host
    world.releases.push("1.0.0")
    process = watch(world, watches)
    wait_deployed(world, "1.0.0", process)
    before = identity(world)

    docker_relay.down()
    went_down = time.monotonic()
    world.releases.push("1.0.1")
    with HttpProbe(world.url, interval=0.1) as probe:

        def failed() -> list[Run]:
            return [r for r in deploy_runs(world) if r.version == "1.0.1" and r.status == "failed"]

        wait_for(lambda: len(failed()) >= 2, timeout=60, what="two failed attempts while Docker is away")
        assert process.process.poll() is None
        assert identity(world) == before
        assert state_json(world)["quarantined"] == []
        assert_kept_serving(probe)
        during = probe_summary(probe)
        attempts = len(failed())
        error = failed()[0].error or ""
        assert "Docker Engine" in error, error

        docker_relay.up()
        down_for = time.monotonic() - went_down
        wait_deployed(world, "1.0.1", process)

    assert containers(world) == [world.name]
    assert "Traceback" not in process.log()
    assert process.stop() == 0
    why = error.split(": ", 1)[-1]
    observed(
        f"Docker away {down_for:.0f}s: {attempts} deploy attempts failed before any swap ({why}), not quarantined; "
        f"meanwhile {during}; 1.0.1 deployed once the socket was back"
    )


@pytest.mark.reliability(
    "The state database (STATE_DIR/cd.sqlite3) deleted or overwritten with garbage while the agent is stopped, "
    "then `cd-agent watch` started",
    "deleted: the state is rebuilt from the app container's io.pi-cicd.* labels and the app is not redeployed; "
    "garbage: a clear error naming the file (exit 5), no traceback, the app untouched",
)
@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_a_lost_or_corrupt_state_database(
    cd_world: CdWorld, damage: str, watches: list[WatchProcess], observed: Observed
) -> None:
    world = cd_world
    world.releases.push("1.0.0")
    world.deploy_first("1.0.0")
    before = identity(world)
    state_path = world.target().paths.state
    for path in state_path.parent.glob(state_path.name + "*"):
        path.unlink()
    if damage == "garbage":
        state_path.write_bytes(bytes(range(256)) * 64)

    process = watch(world, watches)

    if damage == "deleted":
        wait_for(lambda: process.lines("reconcile:"), timeout=30, what="the start-up reconcile")
        wait_for(lambda: state_json(world)["last_poll_at"], timeout=30, what="a first poll")
        polled = state_json(world)["last_poll_at"]
        wait_for(lambda: state_json(world)["last_poll_at"] != polled, timeout=30, what="a second poll")
        current = state_json(world)["current"]
        assert current is not None and current["version"] == "1.0.0"
        assert current["container_id"] == before[0]
        assert identity(world) == before, "the app was redeployed"
        assert not process.lines("new release")
        assert process.stop() == 0
        said = process.lines("reconcile:")[0].split("reconcile: ", 1)[1]
        observed(f"deleted: {said}; no redeploy, container and StartedAt unchanged")
    else:
        code = process.process.wait(timeout=30)
        output = process.log()
        assert code == 5, output
        assert str(state_path) in output and "not a database" in output, output
        assert "Traceback" not in output
        assert identity(world) == before
        assert world.served() == "1.0.0"
        status = cd_agent("status", environ=world.environ(), cwd=world.root)
        assert status.returncode == 5
        observed(f"garbage: watch exits 5 at once: {output.strip().splitlines()[-1][:160]}; status exits 5 too; "
                 "app untouched")


# broken releases


@pytest.mark.reliability(
    "Ten broken releases in a row (1.0.1 ... 1.0.10, tags of one build whose process exits at once) waiting in "
    "the registry when `cd-agent watch` starts over a serving 1.0.0, an HTTP probe hitting the app every 100 ms",
    "each swap costs at most one short outage (no outage longer than the swap), every broken version is "
    "tried exactly once and quarantined, the good version serves at the end",
)
def test_ten_broken_releases_in_a_row(cd_world: CdWorld, watches: list[WatchProcess], observed: Observed) -> None:
    world = cd_world
    world.releases.push("1.0.0")
    world.deploy_first("1.0.0")
    broken = [f"1.0.{n}" for n in range(1, 11)]
    push_tags(world, broken)

    with HttpProbe(world.url, interval=0.1) as probe:
        process = watch(world, watches)

        def all_quarantined() -> bool:
            assert process.process.poll() is None, process.log()[-3000:]
            return {q["version"] for q in state_json(world)["quarantined"]} == set(broken)

        wait_for(all_quarantined, timeout=180, what="every broken release quarantined")
        # another poll: nothing is tried again
        polled = state_json(world)["last_poll_at"]
        wait_for(lambda: state_json(world)["last_poll_at"] != polled, timeout=30, what="another poll")
        probe.wait_serving("1.0.0")

    runs = [r for r in deploy_runs(world) if r.version in broken]
    tried = sorted((str(r.version) for r in runs), key=lambda v: int(v.rsplit(".", 1)[1]))
    assert tried == broken, f"tried: {tried}"
    assert all(r.status == "failed" and r.details.get("outcome") == "rolled_back" for r in runs)
    swaps = [float(r.details["downtime_s"]) for r in runs if r.details.get("downtime_s") is not None]
    gaps = outages(probe)
    assert len(gaps) <= len(runs), f"{len(gaps)} outages for {len(runs)} swaps"
    longest_swap = max(swaps)
    assert probe.longest_outage <= longest_swap + 1.0, (probe.longest_outage, swaps)
    assert world.served() == "1.0.0"
    assert containers(world) == [world.name]
    assert version_of(state_json(world)["current"]) == "1.0.0"
    assert process.stop() == 0
    observed(
        f"10 versions tried once each, all rolled back and quarantined; {len(gaps)} outages over "
        f"{len(probe.samples)} probes, longest {probe.longest_outage:.2f}s (longest swap {longest_swap:.2f}s, "
        f"mean outage {sum(gaps) / max(len(gaps), 1):.2f}s)"
    )

