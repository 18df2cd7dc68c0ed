"""The CD side: ``cd-agent watch`` beside ouroboros, on the same app, registry and prober.

Each side gets its own app: a repository in the same throw-away registry, a container on its own
loopback port, releases built the same way (busybox ``httpd`` ``FROM scratch``, the version in
``/www/index.html``, not in ``ENV``: ouroboros copies the old container's environment into the new
one). A release is pushed as ``X.Y.Z`` and ``latest`` (the tag ouroboros follows) and its local tag
removed, so both agents pull it. Both stop the old container with the same 10 s timeout (Docker's
default, which ouroboros uses; ``CD_STOP_TIMEOUT=10``). ouroboros polls every 30 s at the most often
(it raises any shorter ``--interval`` to 30), so each of its rounds starts it again after the push (it
checks at once when it starts), pi-cicd polls every second, and the times are taken from the daemon's
``pull`` event of the release (the agent has noticed it) to the first answer of the new version.

Two apps: ``trap`` stops at once on SIGTERM (its shell traps it); ``pid1`` is ``httpd`` as the
container's PID 1, which installs no SIGTERM handler, so Linux drops the signal and every stop takes
the whole timeout unless an init passes it on (``CD_INIT=true``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from bench.peers.procs import Daemon, remove_repository_images
from bench.peers.table import Row
from cd_agent.proxy import network_name
from tests.support.agent_process import AgentProcess
from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile, unique
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.registry_server import RegistryServer
from tests.support.switch_probe import SwitchProbe

App = Literal["trap", "pid1"]
OUROBOROS_LOG_LEVEL = "info"

TRAP_START = """#!/bin/sh
trap 'kill $pid; exit 0' TERM
httpd -f -p 8080 -h /www &
pid=$!
wait
"""

MANIFESTS = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


@dataclass
class Releases:
    """Builds and pushes releases of one app repository; ``latest`` follows the newest."""

    client: Any
    registry: RegistryServer
    app: App
    name: str = field(default_factory=lambda: f"{unique('peers')}/app")

    @property
    def repository(self) -> str:
        return f"{self.registry.host}/{self.name}"

    def push(self, version: str, *, move_latest: bool = True) -> float:
        """Build and push ``version``, then point ``latest`` at it; returns when ``latest`` moved (epoch), or
        without ``move_latest`` when the push of ``version`` returned."""
        if self.app == "trap":
            dockerfile = busybox_dockerfile(cmd=["/app/start.sh"])
            files = {"www/index.html": version, "app/start.sh": TRAP_START}
        else:
            dockerfile = busybox_dockerfile()
            files = {"www/index.html": version}
        reference = f"{self.repository}:{version}"
        self.client.images.build(fileobj=build_context_tar(dockerfile, files), custom_context=True, tag=reference,
                                 rm=True, nocache=True)
        for line in self.client.images.push(self.repository, tag=version, stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(f"push {reference}: {line['error']}")
        pushed = time.time()  # before the removal below, which took seconds under load while the hint ran
        self.client.images.remove(reference)
        return self.move_latest(version) if move_latest else pushed

    def move_latest(self, version: str) -> float:
        # `latest` moved in the registry only: a local `latest` moved by a build would untag the image
        # of ouroboros's running container, and ouroboros skips containers whose image has no tag.
        base = f"{self.registry.url}/v2/{self.name}/manifests"
        manifest = httpx.get(f"{base}/{version}", headers={"Accept": MANIFESTS}, timeout=10)
        manifest.raise_for_status()
        put = httpx.put(f"{base}/latest", content=manifest.content,
                        headers={"Content-Type": manifest.headers["content-type"]}, timeout=10)
        put.raise_for_status()
        return time.time()


@dataclass
class Side:
    """One agent keeping one app container up to date."""

    label: str
    releases: Releases
    container: str
    port: int
    agent: AgentProcess | Daemon
    deployed: Callable[[], int]
    """How many deploys the agent has finished (from its log)."""
    restart: Callable[[], Daemon] | None = None
    """ouroboros: starts it again (it checks at once when it starts, then every 30 s at most often)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.agent.stop()


def cd_environ(releases: Releases, container: str, port: int, root: Path, poll: float, **extra: str) -> dict[str, str]:
    return {
        "CD_IMAGE": releases.repository,
        "CD_CONTAINER_NAME": container,
        "CD_PORTS": f"127.0.0.1:{port}:8080",
        "CD_POLL_INTERVAL": f"{poll:g}",
        "CD_HEALTH_URL": f"http://127.0.0.1:{port}/",
        "CD_HEALTH_GRACE": "1",
        "CD_STOP_TIMEOUT": "10",
        "LOG_DIR": str(root / "logs"),
        "STATE_DIR": str(root / "state"),
        "CD_DASHBOARD_PORT": str(free_port()),  # two agents may run side by side
        **extra,
    }


def start_ours(label: str, client: Any, registry: RegistryServer, janitor: DockerJanitor, root: Path, app: App,
               poll: float, *, deploy_first: bool = False, **extra: str) -> Side:
    """``cd-agent watch`` over a new app repository with release 1.0.0, serving it before returning.

    ``deploy_first``: ``cd-agent deploy`` starts the app, so the watcher finds it current (an idle watcher
    that has not deployed since its start); otherwise the watcher deploys 1.0.0 itself.
    """
    root.mkdir(parents=True, exist_ok=True)
    releases = Releases(client, registry, app)
    container, port = unique("picicd-peers"), free_port()
    janitor.name_prefixes.add(container)
    janitor.networks.add(network_name(container))
    releases.push("1.0.0")
    environ = cd_environ(releases, container, port, root, poll, **extra)
    if deploy_first:
        deploy = AgentProcess("cd_agent", ["deploy"], environ, root).start()
        if deploy.wait_exit(120) != 0:
            raise RuntimeError(f"cd-agent deploy failed:\n{deploy.output[-3000:]}")
    agent = AgentProcess("cd_agent", ["watch"], environ, root).start()

    def deployed() -> int:
        return agent.output.count("finished: deployed")

    side = Side(label, releases, container, port, agent, deployed)
    agent.wait_until(lambda: _serves(side.url, "1.0.0"), timeout=120, what=f"{label} serving 1.0.0")
    return side


def start_ouroboros(client: Any, binary: Path, registry: RegistryServer, janitor: DockerJanitor, root: Path, app: App,
                    poll: float) -> Side:
    """The app started the way an ouroboros user starts it (``docker run`` of ``latest``), and ouroboros
    watching that one container."""
    root.mkdir(parents=True, exist_ok=True)
    releases = Releases(client, registry, app)
    container, port = unique("picicd-peers-ob"), free_port()
    janitor.name_prefixes.add(container)
    releases.push("1.0.0")
    client.images.pull(releases.repository, tag="latest")
    client.containers.run(f"{releases.repository}:latest", name=container, detach=True,
                          ports={"8080/tcp": ("127.0.0.1", port)}, restart_policy={"Name": "unless-stopped"})
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root)}
    log = root / "ouroboros.log"
    # --self-update only skips an inspect of every other running container's image: on a shared daemon
    # one removed meanwhile fails the whole poll (and ouroboros's error handler then raises AttributeError).
    command = [str(binary), "-m", container, "-i", f"{max(1, round(poll))}", "-c", "-u", "-l", OUROBOROS_LOG_LEVEL]

    def start() -> Daemon:
        return Daemon(command, log, env=env, cwd=root)

    def deployed() -> int:
        return log.read_text(errors="replace").count("will be updated") if log.exists() else 0

    agent = start()
    side = Side("ouroboros", releases, container, port, agent, deployed, restart=start)
    agent.wait_for(lambda: _serves(side.url, "1.0.0") and "Version" in agent.output(), timeout=60,
                   what="ouroboros started over a serving app")
    return side


def _output(side: Side) -> str:
    return side.agent.output if isinstance(side.agent, AgentProcess) else side.agent.output()


def _container_state(side: Side) -> str:
    listed = side.releases.client.api.containers(all=True, filters={"name": side.container})
    return "; ".join(f"{c['Names'][0]} {c['Image']} {c['Status']}" for c in listed) or "none"


def _answer(url: str) -> str:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"{response.status_code} {response.text[:300]!r}"


def _serving(url: str, bodies: set[str]) -> bool:
    try:
        response = httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text in bodies


def _serves(url: str, body: str, timeout: float = 1.0) -> bool:
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text == body


@dataclass
class Upgrade:
    gap: float
    """The longest time between two good answers of either probe client (the outage a user sees)."""
    served_after_pull: float
    """From the daemon's ``pull`` event of the release (the agent noticed it and fetched it) to the first
    answer of the new version: the upgrade itself, without the wait for the next poll."""


def upgrade(side: Side, version: str, versions: set[str], pulls: PullLog) -> Upgrade:
    before = side.deployed()
    try:
        wait_for(lambda: _serving(side.url, versions), timeout=60, what=f"{side.label} serving before {version}")
    except AssertionError as exc:
        raise RuntimeError(f"{exc}; it answers {_answer(side.url)}; containers: {_container_state(side)}\n"
                           f"its log:\n{_output(side)[-4000:]}") from exc
    with SwitchProbe(side.url, expected=versions, interval=0.02) as probe:
        pushing = time.time()
        if side.restart is not None:
            # Not to wait up to 30 s for ouroboros's next poll: it checks at once when it starts.
            side.agent.stop()
            moved = side.releases.push(version)
            side.agent = side.restart()
        else:
            moved = side.releases.push(version)
        try:
            probe.wait_for_body(version, timeout=120)
        except AssertionError as exc:
            raise RuntimeError(f"{side.label} did not serve {version}: {exc}; probe saw {probe.bodies('fresh')}, "
                               f"{probe.failures[-3:]}\nits log:\n{_output(side)[-4000:]}") from exc
        probe.wait_for_more(5)
        gap = max(probe.max_gap(client) for client in ("fresh", "keepalive"))
        # The probe's clock is monotonic, the daemon's events are wall-clock: one offset between them.
        offset = time.time() - time.monotonic()
        served = min(s.at for s in probe.samples if s.ok and s.detail == version) + offset
    pulled = pulls.first_pull(side.releases, pushing, moved)
    # The deploy's tail (health check, removing or stopping the old container) before the next round.
    wait_deploys(side, before + 1)
    return Upgrade(gap, served - pulled)


class PullLog:
    """The daemon's ``pull`` events, streamed as they happen (its buffer of past events is too short on a
    busy daemon to be asked afterwards)."""

    def __init__(self, client: Any) -> None:
        self.events: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stream = client.events(decode=True, filters={"type": "image", "event": "pull"})
        self._thread = threading.Thread(target=self._read, name="pull-events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                with self._lock:
                    self.events.append((event.get("timeNano", 0) / 1e9, str(event.get("id", ""))))
        except Exception:  # noqa: S110 - the stream ends with an error when it is closed
            pass

    def close(self) -> None:
        self._stream.close()
        self._thread.join(5)

    def first_pull(self, releases: Releases, pushing: float, moved: float) -> float:
        """When the daemon finished the first pull of the release pushed from ``pushing`` on (epoch seconds).

        pi-cicd pulls the new version (by tag or digest) once it is in the registry, which can be before
        ``latest`` moved at ``moved``; ouroboros pulls ``latest`` at every check, so only a pull of
        ``latest`` after ``moved`` fetched the release.
        """
        prefixes = (f"{releases.repository}:", f"{releases.repository}@")
        wait_for(lambda: any(at >= pushing and name.startswith(prefixes) for at, name in self.events), timeout=10,
                 what=f"the daemon's pull event of {releases.repository}")
        with self._lock:
            for at, name in self.events:
                if at >= pushing and name.startswith(prefixes):
                    if not (name == f"{releases.repository}:latest" and at < moved):
                        return at
        raise RuntimeError(f"no pull of {releases.repository} after the push in the daemon's events")


def wait_deploys(side: Side, count: int) -> None:
    condition = lambda: side.deployed() >= count  # noqa: E731
    if isinstance(side.agent, AgentProcess):
        side.agent.wait_until(condition, timeout=90, what=f"{side.label}: deploy {count} finished")
    else:
        side.agent.wait_for(condition, timeout=90, what=f"{side.label}: deploy {count} finished")


def measure_upgrades(rows: list[tuple[Row, Side]], peer: Side, peer_rows: list[Row], rounds: int,
                     pick: Callable[[Upgrade], float]) -> None:
    """``rounds`` upgrades of every side, alternating, each side's in its own row (the peer's in all)."""
    sides = [side for _, side in rows] + [peer]
    pulls = PullLog(peer.releases.client)
    versions = {f"1.0.{n}" for n in range(rounds + 1)}
    try:
        for index in range(1, rounds + 1):
            for side in sides if index % 2 else sides[::-1]:
                for row in [row for row, _ in rows] + peer_rows:
                    row.mark_load()
                result = pick(upgrade(side, f"1.0.{index}", versions, pulls))
                if side is peer:
                    for row in peer_rows:
                        row.theirs.append(result)
                else:
                    next(row for row, owner in rows if owner is side).ours.append(result)
    finally:
        pulls.close()
    for row in [row for row, _ in rows] + peer_rows:
        row.mark_load()


def cleanup(client: Any, janitor: DockerJanitor, sides: list[Side]) -> None:
    for side in sides:
        side.stop()
    janitor.cleanup()
    remove_repository_images(client, *(side.releases.repository for side in sides))
