"""A real ``docker-registry`` that notifies a CD agent of every push, and a watcher with its hook.

The registry's config gets a ``notifications.endpoints`` entry pointing at the agent's hook route, as a
user would write it; the registry then POSTs its own envelopes
(``application/vnd.docker.distribution.events.v1+json``) on every push, retrying while the agent is
away. ``HookedWorld`` is one app on such a registry, watched with a long poll interval, so a deploy
within seconds can only come from a hint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cd_apps import AppReleases, CdWorld, WatchProcess, state_json
from tests.support.docker_env import DockerJanitor
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.registry_server import RegistryServer, start_registry

HOOK_TOKEN = "hook-token-for-tests-0123456789"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "registry-hooks"


def notifications_yaml(url: str) -> str:
    """The ``notifications`` section of a registry config that POSTs every push to ``url``."""
    return (
        "notifications:\n"
        "  endpoints:\n"
        "    - name: cd-agent\n"
        f"      url: {url}\n"
        "      timeout: 2s\n"
        "      threshold: 3\n"
        "      backoff: 1s\n"
    )


def docker_hub_body(repository: str, callback_url: str, tag: str) -> bytes:
    """Docker Hub's documented webhook payload (tests/fixtures/registry-hooks) for ``repository``."""
    data: dict[str, Any] = json.loads((FIXTURES / "docker-hub-push.json").read_text())
    owner, _, name = repository.partition("/")
    data["callback_url"] = callback_url
    data["push_data"]["tag"] = tag
    data["repository"].update(repo_name=repository, namespace=owner, owner=owner, name=name)
    return json.dumps(data).encode()


@dataclass
class HookedWorld:
    """One app (``world``) on a registry that notifies the agent at ``listener_port``."""

    world: CdWorld
    registry: RegistryServer
    listener_port: int

    @property
    def hook_url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}/hooks/registry/{HOOK_TOKEN}"

    @property
    def repository(self) -> str:
        """The repository path, as a registry names it (``cdapp-x/app``)."""
        return self.world.releases.repository.split("/", 1)[1]

    def environ(self, **overrides: str) -> dict[str, str]:
        return self.world.environ(
            CD_POLL_INTERVAL="3600", CD_HOOK_TOKEN=HOOK_TOKEN, CD_DASHBOARD_PORT=str(self.listener_port),
            **overrides,
        )

    def start_watch(self, **overrides: str) -> WatchProcess:
        """``cd-agent watch``, once its listener answers and its first poll is over."""
        watch = WatchProcess(self.environ(**overrides), self.world.root)
        wait_for(self.listening, timeout=30, what="the CD listener")
        wait_for(lambda: state_json(self.world).get("last_poll_at"), timeout=60, what="the first poll")
        return watch

    def listening(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.listener_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture
def hooked_world(
    docker_client: Any, docker_janitor: DockerJanitor, tmp_path: Path
) -> Iterator[HookedWorld]:
    port = free_port()
    # appended to the registry's config as an auth section would be
    registry = start_registry(tmp_path / "registry", notifications_yaml(f"http://127.0.0.1:{port}/hooks/registry/{HOOK_TOKEN}"))
    world = CdWorld(docker_client, docker_janitor, AppReleases(docker_client, registry, docker_janitor), tmp_path)
    try:
        yield HookedWorld(world, registry, port)
    finally:
        world.close()
        registry.stop()
