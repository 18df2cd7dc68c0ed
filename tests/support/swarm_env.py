"""A real single-node Docker Swarm for the swarm strategy's tests.

``swarm_mode`` (session) runs ``docker swarm init --advertise-addr 127.0.0.1`` when the shared engine is
not in a swarm, and ``docker swarm leave --force`` at the end only when it made the swarm. Joining changes
nothing for plain containers, but leaving does (Docker 20.10): every container is disconnected from every
attachable network (docker-compose 1.29 makes its networks attachable) and the embedded DNS forgets the
names on every network. In one serial session the leave comes after every other test; another session's
leave on a shared dockerd breaks the stacks of this one's running tests (see docs/cd/database.md).
``SwarmWorld`` wraps ``cd_world`` with CD_STRATEGY=swarm and removes its services and stacks afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import pytest

from cd_agent.deployer import Deployer
from tests.support.cd_apps import CdWorld
from tests.support.docker_env import unique
from tests.support.polling import wait_for


def _swarm_state(client: Any) -> str:
    return str(client.info().get("Swarm", {}).get("LocalNodeState", ""))


@pytest.fixture(scope="session")
def swarm_mode(docker_client: Any) -> Iterator[None]:
    made = False
    if _swarm_state(docker_client) != "active":
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True,
                       capture_output=True, timeout=60)
        made = True
    yield
    if made:
        subprocess.run(["docker", "swarm", "leave", "--force"], check=True, capture_output=True, timeout=60)


# CD_HEALTH_TIMEOUT, which the agent gives Swarm as each update's (and rollback's) monitor period: Swarm
# waits that long after every replica it replaces, whether the release is good or not. A release that
# crashes or never turns healthy fails before its task is running, so a short period misses nothing here.
MONITOR_S = 3


@dataclass
class SwarmWorld:
    """``cd_world`` deploying to a Swarm service named like its container."""

    world: CdWorld
    services: set[str] = field(default_factory=set)
    stacks: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.world.overrides.update(
            CD_STRATEGY="swarm", CD_PORTS="", CD_HEALTH_TIMEOUT=str(MONITOR_S), CD_HEALTH_GRACE="0",
        )
        self.services.add(self.world.name)

    @property
    def name(self) -> str:
        return self.world.name

    def deployer(self, **overrides: str) -> Deployer:
        deployer = self.world.deployer(**overrides)
        self.services.add(deployer.target.service)
        return deployer

    def service(self, name: str | None = None) -> Any:
        return self.world.docker_client.services.get(name or self.name)

    def task_containers(self, name: str | None = None) -> list[Any]:
        return list(self.world.docker_client.containers.list(
            filters={"label": f"com.docker.swarm.service.name={name or self.name}"}
        ))

    def served_by_tasks(self, name: str | None = None) -> list[str]:
        """What each running task container serves (read inside it: no routing mesh here)."""
        answers = []
        for container in self.task_containers(name):
            code, output = container.exec_run(["cat", "/www/index.html"])
            answers.append(output.decode() if code == 0 else f"(exit {code})")
        return sorted(answers)

    def stack_deploy(self, compose: str) -> str:
        stack = unique("picicdstack").replace("-", "")
        self.stacks.add(stack)
        path = self.world.root / f"{stack}.yml"
        path.write_text(compose)
        subprocess.run(["docker", "stack", "deploy", "-c", str(path), stack], check=True,
                       capture_output=True, timeout=120)
        return stack

    def close(self) -> None:
        client = self.world.docker_client
        for deployer in self.world._closers:
            swarm = getattr(deployer, "swarm", None)
            if swarm is not None:
                swarm.close()
        for stack in self.stacks:
            subprocess.run(["docker", "stack", "rm", stack], capture_output=True, timeout=60, check=False)
        for name in self.services:
            try:
                client.services.get(name).remove()
            except docker.errors.NotFound:
                pass
        labels = [f"com.docker.swarm.service.name={name}" for name in self.services]
        labels += [f"com.docker.stack.namespace={stack}" for stack in self.stacks]

        def gone() -> bool:
            return not any(client.containers.list(all=True, filters={"label": label}) for label in labels)

        # Swarm removes the task containers after the service: the janitor's volumes need them gone.
        wait_for(gone, timeout=60, what="the swarm tasks to be removed")
        def networks_gone() -> bool:
            return not any(client.networks.list(names=[f"{stack}_default"]) for stack in self.stacks)

        wait_for(networks_gone, timeout=30, what="the networks of the stacks to be removed")


@pytest.fixture
def swarm_world(swarm_mode: None, cd_world: CdWorld) -> Iterator[SwarmWorld]:
    world = SwarmWorld(cd_world)
    yield world
    world.close()
