"""A compose stack made by the real ``docker-compose`` (or ``docker compose``) for the compose strategy's tests.

``db`` is a busybox httpd built locally (``FROM scratch``) answering ``db ok`` on port 8080; ``web`` is the
CD image (``CdWorld.releases``), published on a loopback port, whose releases' HEALTHCHECK asks
``http://db:8080/``: healthy only when it reaches the database over the project's network. Each stack has a
unique project name and is taken down with ``down -v`` afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from cd_agent.compose_project import LABEL_PROJECT, LABEL_SERVICE, SubprocessCompose
from tests.support.cd_apps import CdWorld
from tests.support.docker_env import build_context_tar, busybox_dockerfile, unique

DB_HEALTH_URL = "http://db:8080/"


@dataclass
class Stack:
    """One compose project: its folder and file, and the world whose app is its ``web`` service."""

    world: CdWorld
    folder: Path
    project: str = field(default_factory=lambda: unique("picicd-stack"))
    db_image: str = ""

    @property
    def file(self) -> Path:
        return self.folder / "compose.yml"

    def write(self, web_version: str, *, web_extra: str = "") -> None:
        """The user's compose file: ``web`` at ``web_version`` (by tag, as a user writes it) beside ``db``."""
        self.file.write_text(
            self._with_db()
            + "  web:\n"
            f"    image: {self.world.releases.repository}:{web_version}\n"
            "    restart: unless-stopped\n"
            "    stop_grace_period: 2s\n"
            f'    ports: ["127.0.0.1:{self.world.port}:8080"]\n'
            "    depends_on: [db]\n"
            + web_extra
        )

    def write_beside(self) -> None:
        """A stack whose ``web`` the agent runs (blue-green, ``CD_NETWORKS``): ``db`` and a ``worker`` that
        asks ``http://web:8080/`` every 50 ms and prints each answer (``-``: none), as a stack's other
        services reach the app by its alias."""
        self.file.write_text(self._with_db() + self.worker_service())

    def _with_db(self) -> str:
        return f'version: "3.8"\nservices:\n  db:\n    image: {self.db_image}\n    stop_grace_period: 1s\n'

    def worker_service(self) -> str:
        """The ``worker`` service's YAML (to add to a file with ``write``'s ``web_extra``)."""
        return (
            "  worker:\n"
            f"    image: {self.db_image}\n"
            "    stop_grace_period: 1s\n"
            "    depends_on: [db]\n"
            '    command: ["sh", "-c", "while true; do wget -q -O - http://web:8080/ 2>/dev/null || printf -; echo;'
            ' sleep 0.05; done"]\n'
        )

    def blue_green_beside(self, proxy_image: str) -> None:
        """``write_beside`` and ``up``; the world's settings: blue-green into the project's network."""
        for key in self.settings():
            self.world.overrides.pop(key, None)
        self.world.overrides.update(
            CD_STRATEGY="blue-green", CD_PROXY_IMAGE=proxy_image, CD_PROXY_GRACE="1", CD_HEALTH_TIMEOUT="30",
            CD_NETWORKS=f"{self.network}:web", CD_VOLUMES="",
        )
        self.world.janitor.networks.add(self.network)
        self.write_beside()
        self.up()

    def identities(self, *services: str) -> dict[str, tuple[str, str]]:
        """Each service's containers' id and start time: a deploy of another service changes neither."""
        return {
            container["Id"]: (service, container["State"]["StartedAt"])
            for service in services for container in self.containers(service)
        }

    @property
    def network(self) -> str:
        """The project's default network (compose 1.29 and v2 alike)."""
        return f"{self.project}_default"

    def answering_to(self, alias: str) -> list[str]:
        """The containers that answer to ``alias`` on the project's network (Docker's DNS names them)."""
        client = self.world.docker_client
        names = []
        for listed in client.api.inspect_network(self.network)["Containers"]:
            endpoint = client.api.inspect_container(listed)["NetworkSettings"]["Networks"].get(self.network) or {}
            if alias in (endpoint.get("Aliases") or ()):
                names.append(client.api.inspect_container(listed)["Name"].lstrip("/"))
        return names

    def proxy_said(self, tail: int = 40) -> str:
        """The last lines of the blue-green proxy's log (Caddy's errors name what it could not dial, and why):
        for a failed assertion's message."""
        client = self.world.docker_client
        try:
            text: str = client.api.logs(f"{self.world.name}-proxy", tail=tail, timestamps=True).decode(errors="replace")
        except Exception as exc:  # only a message for a failure already found
            return f"(no proxy log: {exc})"
        return "proxy log:\n" + text

    def worker_saw(self) -> list[str]:
        """Every answer the worker got from ``web``, in order (``-``: none)."""
        (worker,) = self.containers("worker")
        text: str = self.world.docker_client.api.logs(worker["Id"], stderr=False).decode(errors="replace")
        return [line.strip() for line in text.splitlines() if line.strip()]

    def settings(self) -> dict[str, str]:
        """The CD settings of the compose strategy for this stack's ``web``."""
        return {
            "CD_STRATEGY": "compose",
            "CD_COMPOSE_FILE": str(self.file),
            "CD_COMPOSE_SERVICE": "web",
            "CD_COMPOSE_PROJECT": self.project,
        }

    def compose(self, *args: str, files: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
        """The user running compose by hand in the project's folder."""
        argv = [*SubprocessCompose.detect().command, "-p", self.project, "-f", str(self.file)]
        for extra in files:
            argv += ["-f", str(extra)]
        return subprocess.run(
            [*argv, *args], cwd=self.folder, capture_output=True, text=True, timeout=300, check=False,
        )

    def up(self, *services: str) -> None:
        done = self.compose("up", "-d", *services)
        assert done.returncode == 0, done.stderr

    def containers(self, service: str) -> list[dict[str, Any]]:
        """The service's containers as ``docker inspect`` shows them, found by compose's labels."""
        client = self.world.docker_client
        listed = client.api.containers(
            all=True, filters={"label": [f"{LABEL_PROJECT}={self.project}", f"{LABEL_SERVICE}={service}"]}
        )
        return [client.api.inspect_container(item["Id"]) for item in listed]

    def db_identity(self) -> tuple[str, str]:
        """The db container's id and start time: a deploy must change neither."""
        (db,) = self.containers("db")
        return db["Id"], db["State"]["StartedAt"]


def build_db_image(docker_client: Any, tag: str) -> None:
    """The stack's database stand-in: busybox httpd answering ``db ok``."""
    dockerfile = busybox_dockerfile(cmd=["httpd", "-f", "-p", "8080", "-h", "/www"])
    docker_client.images.build(
        fileobj=build_context_tar(dockerfile, {"www/index.html": "db ok"}), custom_context=True, tag=tag, rm=True,
        nocache=True,  # no cache parents shared with other builds, which other tests remove
    )


@pytest.fixture(scope="session")
def compose_db_image(docker_client: Any) -> Iterator[str]:
    """One ``db`` image for every stack of the session: each test's stack runs its own container of it (a
    build per test cost seconds; nothing a deploy does touches the db's image)."""
    tag = f"{unique('picicd-db')}:1"
    build_db_image(docker_client, tag)
    yield tag
    try:
        docker_client.images.remove(tag, force=True)
    except docker.errors.APIError:
        pass


@pytest.fixture
def compose_stack(cd_world: CdWorld, compose_db_image: str, compose_cli: str) -> Iterator[Stack]:
    """(Not ``stack``: that is the ``docker run`` stack of ``tests/support/stacks.py``.) Made and taken down by
    ``compose_cli``'s compose (``both_compose_versions``: each test once with compose 1.29, once with v2)."""
    folder = cd_world.root / "stack"
    folder.mkdir()
    made = Stack(cd_world, folder, db_image=compose_db_image)
    cd_world.overrides.update(made.settings())
    yield made
    if made.file.exists():
        made.compose("down", "-v", "-t", "1")
