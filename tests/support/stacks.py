"""A stack made by hand with ``docker run``: a user network, a ``db`` container answering on it, and the
app container beside it with the options a user gives at ``docker run`` (an alias, a static address, a
label, capabilities added and dropped, memory/cpu/pids limits, a device, an extra host, a log option, a
user, a working directory, a health check option and a command override).

The database is a busybox httpd answering ``db-ok`` on port 8080; the app releases of the ``stack``
variant (``tests.support.cd_apps``) have a HEALTHCHECK that asks it at ``http://db:8080/``, so a release
that lost the stack's network is unhealthy.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker.errors
import pytest

from tests.support.cd_apps import AppReleases, CdWorld
from tests.support.docker_env import DockerJanitor, build_context_tar, busybox_dockerfile, unique
from tests.support.polling import wait_for

DB_ANSWER = "db-ok"
# What the app is started with by hand: it leaves a mark, then runs the release's own start script.
COMMAND = ("sh", "-c", "echo by-hand > /tmp/started-by; exec /app/start.sh")
OPTIONS: dict[str, str] = {
    "label": "com.example.team=shop",
    "cap_add": "NET_ADMIN",
    "memory": str(64 * 2**20),
    "extra_host": "printer:127.0.0.2",  # a hosts-file entry only: nothing is ever sent there
    "workdir": "/tmp",
    "health_retries": "5",
    "cap_drop": "MKNOD",
    "cpus": "0.5",
    "pids_limit": "200",
    "device": "/dev/zero:/dev/stack-zero",
    "log_opt": "max-size=1m",
    "user": "0",
}


@pytest.fixture(scope="session")
def db_image(docker_client: Any) -> Iterator[str]:
    tag = f"{unique('picicd-stack-db')}:1"
    dockerfile = busybox_dockerfile(cmd=["httpd", "-f", "-p", "8080", "-h", "/www"])
    docker_client.images.build(
        fileobj=build_context_tar(dockerfile, {"www/index.html": DB_ANSWER}), custom_context=True, tag=tag, rm=True
    )
    yield tag
    try:
        docker_client.images.remove(tag, force=True)
    except docker.errors.APIError:
        pass


@dataclass
class Stack:
    """One user network (with a subnet of its own, so a static address can be given) and its ``db``."""

    client: Any
    janitor: DockerJanitor
    network: str
    subnet_prefix: str  # "10.201.7": the network is subnet_prefix.0/24
    db: str

    @property
    def app_address(self) -> str:
        return f"{self.subnet_prefix}.10"

    def run_app(self, world: CdWorld, version: str, *extra: str) -> str:
        """``docker run`` the release ``version`` as ``world``'s app container, the way a user sets it up by
        hand (publishing what CD_PORTS says); returns its id once its HEALTHCHECK passed."""
        reference = f"{world.releases.repository}:{version}"
        self.client.images.pull(world.releases.repository, tag=version)
        command = [
            "docker", "run", "-d", "--name", world.name, "--network", self.network, "--network-alias", "web",
            "--ip", self.app_address, "--label", OPTIONS["label"], "--cap-add", OPTIONS["cap_add"],
            "--memory", OPTIONS["memory"], "--add-host", OPTIONS["extra_host"], "--workdir", OPTIONS["workdir"],
            "--health-retries", OPTIONS["health_retries"],
            "--cap-drop", OPTIONS["cap_drop"], "--cpus", OPTIONS["cpus"], "--pids-limit", OPTIONS["pids_limit"],
            "--device", OPTIONS["device"], "--log-opt", OPTIONS["log_opt"], "--user", OPTIONS["user"],
            "-p", f"127.0.0.1:{world.port}:8080", "-v", f"{world.volume}:/data", "--restart", "unless-stopped",
            *extra, reference, *COMMAND,
        ]
        return self.docker_run(world, command)

    def docker_run(self, world: CdWorld, command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        container = done.stdout.strip()
        wait_for(lambda: self.health(world.name) == "healthy", timeout=30, what=f"{world.name} healthy")
        return container

    def health(self, container: str) -> str | None:
        return self.health_of(self.client, container)

    @staticmethod
    def health_of(client: Any, container: str) -> str | None:
        state = client.api.inspect_container(container)["State"]
        status: str | None = (state.get("Health") or {}).get("Status")
        return status

    def fetch_in(self, container: str, url: str) -> str:
        """What ``url`` answers from inside ``container`` (its own DNS and networks)."""
        code, output = self.client.containers.get(container).exec_run(["wget", "-q", "-O", "-", url])
        assert code == 0, f"{container}: wget {url}: {output.decode(errors='replace')}"
        return str(output.decode())

    def db_identity(self) -> tuple[str, str, int, bool]:
        """The db's id, start time, restart count and running: the same while nobody touches it."""
        data = self.client.api.inspect_container(self.db)
        return data["Id"], data["State"]["StartedAt"], data["RestartCount"], data["State"]["Running"]


def _create_network(client: Any, name: str) -> str:
    """A bridge network on a free 10.x.y.0/24 (retrying when one is taken); returns the 10.x.y prefix."""
    for _ in range(20):
        prefix = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=f"{prefix}.0/24")])
        try:
            client.api.create_network(name, driver="bridge", ipam=ipam)
        except docker.errors.APIError as exc:
            if "overlap" in str(exc).lower():
                continue
            raise
        return prefix
    raise AssertionError("no free 10.x.y.0/24 subnet for the test network")


@pytest.fixture
def stack(docker_client: Any, docker_janitor: DockerJanitor, cd_world: CdWorld, db_image: str) -> Stack:
    network = unique("picicd-stack-net")
    prefix = _create_network(docker_client, network)
    docker_janitor.networks.add(network)
    db = f"{cd_world.name}-db"  # under the world's prefix: the janitor removes it with the app's containers
    docker_client.api.start(docker_client.api.create_container(
        db_image, name=db, detach=True,
        host_config=docker_client.api.create_host_config(network_mode=network),
        networking_config=docker_client.api.create_networking_config(
            {network: docker_client.api.create_endpoint_config(aliases=["db"])}
        ),
    ))
    return Stack(docker_client, docker_janitor, network, prefix, db)


@pytest.fixture
def stack_releases(cd_world: CdWorld) -> AppReleases:
    """1.0.0 and 1.1.0 of the ``stack`` variant (healthy only beside their database), 1.2.0 ``broken``."""
    cd_world.releases.push("1.0.0", "stack")
    cd_world.releases.push("1.1.0", "stack")
    cd_world.releases.push("1.2.0", "broken")
    return cd_world.releases
