"""Several apps under one ``cd-agent``: each a ``CdWorld`` (its releases, container, port), one apps file.

``AppsFile`` turns each world's ``CD_*`` settings into an ``[apps.NAME]`` table by the mechanical rule
(``CD_X`` is key ``x``), so a test states only what differs per app; the agent-wide ``LOG_DIR`` and
``STATE_DIR`` are one folder for all of them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cd_agent.apps import AppPaths
from cd_agent.settings import AGENT_WIDE_CD_FIELDS
from cd_agent.state import DeployState
from tests.support.cd_apps import AppReleases, CdWorld, cd_agent
from tests.support.docker_env import DockerJanitor
from tests.support.registry_server import RegistryServer

AGENT_WIDE = ("LOG_DIR", "STATE_DIR")


def table(world: CdWorld, **overrides: str) -> dict[str, str]:
    """The world's per-app settings as the keys of its ``[apps.NAME]`` table (agent-wide ones stay out: an
    apps file refuses them)."""
    return {
        key.removeprefix("CD_").lower(): value
        for key, value in world.environ(**overrides).items()
        if key.startswith("CD_") and value != "" and key.lower() not in AGENT_WIDE_CD_FIELDS
    }


def toml_text(tables: dict[str, dict[str, str]]) -> str:
    lines = []
    for name, values in tables.items():
        lines.append(f"[apps.{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


@dataclass
class AppsFile:
    """The apps of one agent: ``worlds`` by app name (the name is the world's container name)."""

    root: Path
    worlds: dict[str, CdWorld] = field(default_factory=dict)
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / "apps.toml"

    def add(self, world: CdWorld, **overrides: str) -> str:
        self.worlds[world.name] = world
        self.overrides[world.name] = overrides
        return world.name

    def write(self, text: str | None = None) -> Path:
        """The apps file as the worlds say (or ``text``), 0600 as a file holding secrets must be."""
        tables = {name: table(world, **self.overrides[name]) for name, world in self.worlds.items()}
        self.path.write_text(toml_text(tables) if text is None else text)
        self.path.chmod(0o600)
        return self.path

    def environ(self, **extra: str) -> dict[str, str]:
        return {
            "CD_APPS_FILE": str(self.path), "LOG_DIR": str(self.root / "logs"), "STATE_DIR": str(self.root / "state"),
            # every poll in the state files at once, as CdWorld's (tests follow the polls through them)
            "CD_STATE_FLUSH_INTERVAL": "0",
            **extra,
        }

    def paths(self, name: str) -> AppPaths:
        return AppPaths(self.root / "state" / "apps" / name, self.root / "logs" / name)

    def state(self, name: str) -> dict[str, Any]:
        """What ``cd-agent status --json --app NAME`` shows, read in-process."""
        path = self.paths(name).state
        if not path.exists():
            return {"current": None, "previous": None, "quarantined": [], "deploy_in_progress": None}
        with DeployState(path) as state:
            return state.to_json()

    def cd_agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``cd-agent ARGS`` as a real process with this agent's settings."""
        return cd_agent(*args, environ=self.environ(), cwd=self.root)


@pytest.fixture
def apps_file(tmp_path: Path) -> AppsFile:
    return AppsFile(tmp_path)


@pytest.fixture
def new_world(
    docker_client: Any, docker_janitor: DockerJanitor, registry: RegistryServer, tmp_path: Path
) -> Iterator[Callable[[], CdWorld]]:
    """More apps beside ``cd_world``: each call one with its own repository, container, port and volume."""
    made: list[CdWorld] = []

    def make() -> CdWorld:
        world = CdWorld(docker_client, docker_janitor, AppReleases(docker_client, registry, docker_janitor), tmp_path)
        made.append(world)
        return world

    yield make
    for world in made:
        world.close()
