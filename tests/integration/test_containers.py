"""The agents' image and compose files, on the real Docker Engine.

The image is built once per session on the base image ``scripts/base-image`` prints (Docker Hub's
``python:3.11-slim-bookworm`` when it is there, else a local one built from Debian's packages; the first
build takes minutes, later ones hit Docker's layer cache). Each compose file's service is then started
with whichever compose the machine has, under a project name of its own, and taken down with its
volumes and network; the base and agent images stay cached for the next run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.docker_env import unique
from tests.support.parallel import run_lock
from tests.support.polling import wait_for
from tests.support.ports import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
AGENT_IMAGE = "picicd/agent:test"
AGENT_UID = 10001
# Locally added CAs (a TLS-inspecting proxy's) are trusted by the host's pip; the build's pip needs them too.
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


@dataclass(frozen=True)
class Compose:
    """``docker compose`` (v2 plugin) or Debian's ``docker-compose`` 1.29: same arguments for both."""

    command: tuple[str, ...]
    base_env: Mapping[str, str]

    def run(
        self, file: str, project: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            [*self.command, "-p", project, "-f", str(REPO / file), *args],
            cwd=REPO,
            env={**os.environ, **self.base_env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            raise AssertionError(
                f"{' '.join(self.command)} -f {file} {' '.join(args)} exited {completed.returncode}:\n"
                f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
            )
        return completed


def find_compose() -> tuple[str, ...]:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed: apt-get install docker-compose "
        "(Debian/Ubuntu/Raspberry Pi OS) or install the Docker Compose v2 plugin"
    )


def local_ca_certs() -> str:
    return "".join(path.read_text() for path in sorted(LOCAL_CAS.glob("**/*.crt")))


@pytest.fixture(scope="session")
def base_image(pytestconfig: pytest.Config) -> str:
    with run_lock(pytestconfig, "base-image"):  # built once, found in the cache by the other workers
        completed = subprocess.run(
            [str(REPO / "scripts" / "base-image")], capture_output=True, text=True, timeout=1500, check=False
        )
    assert completed.returncode == 0, f"scripts/base-image failed:\n{completed.stderr[-3000:]}"
    reference = completed.stdout.strip().splitlines()[-1]
    assert reference, "scripts/base-image printed no image reference"
    return reference


@pytest.fixture(scope="session")
def compose(base_image: str, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Compose:
    """Compose with the agents' image built (``compose build``, so the files' build section is used)."""
    env_file = tmp_path_factory.mktemp("compose-build") / "build.env"
    env_file.write_text("")
    built = Compose(
        find_compose(),
        {
            "BASE_IMAGE": base_image,
            "EXTRA_CA_CERTS": local_ca_certs(),
            "PICICD_IMAGE": AGENT_IMAGE,
            "PICICD_ENV_FILE": str(env_file),
            "PICICD_HEALTH_INTERVAL": "2s",
        },
    )
    # Every xdist worker running a test of this file builds the same tag: one at a time, so all but the first
    # build from the engine's cache (seconds, not a minute of both cores).
    with run_lock(pytestconfig, "agent-image"):
        built.run("compose.ci.yml", unique("picicd-build"), "build", timeout=1500)
    return built


@dataclass
class Service:
    """One compose file's service, started under a unique project name."""

    compose: Compose
    file: str
    name: str
    project: str
    client: Any

    def container(self) -> Any:
        container_id = self.compose.run(self.file, self.project, "ps", "-q", self.name).stdout.strip()
        assert container_id, f"{self.name} has no container"
        return self.client.containers.get(container_id)

    def health(self) -> str:
        return str(self.container().attrs["State"].get("Health", {}).get("Status", "none"))

    def logs(self) -> str:
        return str(self.container().logs().decode(errors="replace"))

    def exec(self, *argv: str) -> str:
        code, output = self.container().exec_run(list(argv))
        text = output.decode(errors="replace")
        assert code == 0, f"{' '.join(argv)} exited {code}: {text}"
        return str(text)

    def remove_leftovers(self) -> list[str]:
        """Remove whatever of the project is still there; returns what that was (empty after a good ``down``)."""
        label = {"label": f"com.docker.compose.project={self.project}"}
        found = []
        for container in self.client.containers.list(all=True, filters=label):
            found.append(f"container {container.name}")
            container.remove(force=True, v=True)
        for volume in self.client.volumes.list(filters=label):
            found.append(f"volume {volume.name}")
            volume.remove(force=True)
        for network in self.client.networks.list(filters=label):
            found.append(f"network {network.name}")
            network.remove()
        return found


@pytest.fixture
def start_service(compose: Compose, docker_client: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[Service, dict[str, str]]] = []

    def start(file: str, name: str, settings: Mapping[str, str], env: Mapping[str, str] | None = None) -> Service:
        env_file = tmp_path / f"{name}.env"
        env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        run_env = {"PICICD_ENV_FILE": str(env_file), **(env or {})}
        service = Service(compose, file, name, unique("picicd-compose"), docker_client)
        started.append((service, run_env))
        compose.run(file, service.project, "up", "-d", "--no-build", env=run_env)
        return service

    yield start
    problems = []
    for service, run_env in started:
        try:
            service.compose.run(service.file, service.project, "down", "-v", "--remove-orphans", env=run_env)
        except AssertionError as exc:
            problems.append(str(exc))
        leftovers = service.remove_leftovers()
        if leftovers:
            problems.append(f"`down -v` left {leftovers}")
    assert not problems, problems


def agent_identity(service: Service) -> tuple[int, set[int]]:
    """The agent's (PID 1's) uid and supplementary groups."""
    status = dict(
        line.split(":", 1) for line in service.exec("cat", "/proc/1/status").splitlines() if ":" in line
    )
    return int(status["Uid"].split()[0]), {int(group) for group in status["Groups"].split()}


def socket_gid() -> int:
    return os.stat("/var/run/docker.sock").st_gid


def test_ci_agent_compose_serves_healthz_on_loopback_and_becomes_healthy(start_service: Any) -> None:
    port = free_port()
    dashboard_port = free_port()
    service = start_service(
        "compose.ci.yml",
        "ci-agent",
        {
            "CI_ALLOW_UNSIGNED": "true",
            "CI_REPO_URL": "https://git.invalid/owner/app.git",
            "CI_IMAGE": f"127.0.0.1:{free_port()}/owner/app",
            # The container listens on 8000 whatever .env says; the host side comes from PICICD_CI_PUBLISH.
            "CI_PORT": "9",
        },
        env={"PICICD_CI_PUBLISH": f"127.0.0.1:{port}", "PICICD_CI_DASHBOARD_PUBLISH": f"127.0.0.1:{dashboard_port}"},
    )

    answer = wait_for(
        lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2),
        timeout=60,
        what=f"ci-agent /healthz on 127.0.0.1:{port}",
    )
    assert answer.status_code == 200
    wait_for(lambda: service.health() == "healthy", timeout=90, what="ci-agent container healthy")

    container = service.container()
    bindings = container.attrs["NetworkSettings"]["Ports"]["8000/tcp"]
    assert [(b["HostIp"], b["HostPort"]) for b in bindings] == [("127.0.0.1", str(port))]
    # The run API is on the dashboard port only.
    assert httpx.get(f"http://127.0.0.1:{dashboard_port}/runs", timeout=5).json() == []
    assert httpx.get(f"http://127.0.0.1:{port}/runs", timeout=5).status_code == 404
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    uid, groups = agent_identity(service)
    assert uid == AGENT_UID
    assert socket_gid() in groups
    # The run store lives in the state volume, owned by the agent's user.
    state = service.exec("stat", "-c", "%u %n", "/var/lib/pi-cicd/state/runs.sqlite3").split()
    assert state[0] == str(AGENT_UID)
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/var/lib/pi-cicd/state"]["Type"] == "volume"
    assert mounts["/var/lib/pi-cicd/logs"]["Type"] == "volume"
    assert mounts["/var/run/docker.sock"]["Type"] == "bind"


def test_cd_agent_compose_polls_as_unprivileged_user_and_becomes_healthy(start_service: Any) -> None:
    image = f"127.0.0.1:{free_port()}/owner/app"  # no registry there: the agent must keep polling anyway
    service = start_service(
        "compose.cd.yml",
        "cd-agent",
        {"CD_IMAGE": image, "CD_CONTAINER_NAME": unique("picicd-cdapp"), "CD_POLL_INTERVAL": "2"},
    )

    wait_for(lambda: f"watching {image}" in service.logs(), timeout=60, what="cd-agent watching the image")
    wait_for(lambda: "backing off" in service.logs(), timeout=60, what="cd-agent polling the registry")
    wait_for(lambda: service.health() == "healthy", timeout=90, what="cd-agent container healthy")

    container = service.container()
    assert container.attrs["State"]["Running"]
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert not any((container.attrs["NetworkSettings"]["Ports"] or {}).values()), "cd-agent publishes no port"
    uid, groups = agent_identity(service)
    assert uid == AGENT_UID
    assert socket_gid() in groups
    assert "reconcile at start-up failed" not in service.logs()
    status = service.exec("cd-agent", "status", "--json")
    assert '"next_poll_at": "' in status


def test_agent_image_runs_either_agent_and_has_git(compose: Compose, docker_client: Any) -> None:
    version = docker_client.containers.run(AGENT_IMAGE, ["git", "--version"], remove=True)
    assert version.decode().startswith("git version")
    # The ssh extra: CI_BUILD_DOCKER_HOST=ssh://... works from the image (the setting's check finds paramiko).
    paramiko = docker_client.containers.run(
        AGENT_IMAGE, ["python3", "-c", "import paramiko; print(paramiko.__version__)"], remove=True
    )
    assert paramiko.decode().strip()[:1].isdigit()
    for agent in ("ci", "cd"):
        usage = docker_client.containers.run(AGENT_IMAGE, [agent, "--help"], remove=True).decode()
        assert f"usage: {agent}-agent" in usage
