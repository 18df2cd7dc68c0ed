"""The create-config of the app container, built from the settings and the NEW image.

Watchtower-style clones copy the old container's ``Config`` (Env, Cmd, Entrypoint...) into the new
one, so a release that changes its ``ENV`` or ``CMD`` never takes effect. Here the config holds only
what the user configured (``CD_*``, the env file) plus our labels; Docker fills in the rest from the
image, exactly as ``docker run`` would.

The one thing taken from the old container is its anonymous volumes (the image's ``VOLUME``
directories that no ``CD_VOLUMES`` entry covers): like docker compose, the new container mounts the
same volume at the same path, so data written there survives every swap and rollback.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values

from cd_agent.engine import ContainerInfo
from cd_agent.errors import DeployError
from cd_agent.settings import CdSettings, PortMapping, read_env_text

LABEL_MANAGED = "io.pi-cicd.managed"
LABEL_VERSION = "io.pi-cicd.version"
LABEL_DIGEST = "io.pi-cicd.digest"
LABEL_RUN = "io.pi-cicd.run"

# Docker names an anonymous volume with 64 hex digits; a named volume the user removed from
# CD_VOLUMES is therefore not carried over by accident.
_ANONYMOUS_VOLUME = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class MountSpec:
    type: Literal["volume", "bind"]
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """Everything ``DockerGateway.create`` passes to the Docker API; nothing else is set."""

    name: str
    image: str
    env: tuple[str, ...] = ()
    ports: tuple[PortMapping, ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    restart_policy: str = "unless-stopped"
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str | None = None
    """Blue-green: the private network the container joins (instead of the default bridge)..."""
    aliases: tuple[str, ...] = ()
    """...and the names the proxy reaches it by there."""
    init: bool = False


def build_spec(
    settings: CdSettings,
    *,
    image: str,
    version: str,
    digest: str | None,
    env: Mapping[str, str],
    old: ContainerInfo | None = None,
    run: int | None = None,
) -> ContainerSpec:
    """The spec of the container that runs ``image`` (``repository:version``) under the configured name."""
    mounts = [
        MountSpec("volume" if volume.is_named else "bind", volume.source, volume.target, volume.read_only)
        for volume in settings.volumes
    ]
    configured = {mount.target for mount in mounts}
    if old is not None:
        for mount in old.mounts:
            if mount.type == "volume" and mount.name and _ANONYMOUS_VOLUME.match(mount.name):
                if mount.destination not in configured:
                    mounts.append(MountSpec("volume", mount.name, mount.destination, not mount.rw))
                    configured.add(mount.destination)
    labels = {LABEL_MANAGED: "true", LABEL_VERSION: version, LABEL_DIGEST: digest or ""}
    if run is not None:
        labels[LABEL_RUN] = str(run)
    return ContainerSpec(
        name=settings.cd_container_name,
        image=image,
        env=tuple(f"{key}={value}" for key, value in env.items()),
        ports=tuple(settings.ports),
        mounts=tuple(mounts),
        restart_policy=settings.cd_restart_policy,
        labels=labels,
        init=settings.cd_init,
    )


def read_env_file(path: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``CD_ENV_FILE`` as docker's ``--env-file`` reads it: ``KEY=VALUE`` lines, ``#`` comments, and
    a bare ``KEY`` taking its value from the agent's environment (left out when unset there)."""
    if path is None:
        return {}
    environ = os.environ if environ is None else environ
    try:
        # Checked at start-up too, but the file may have changed since.
        text = read_env_text(path)
    except ValueError as exc:
        raise DeployError(f"CD_ENV_FILE: {exc}") from exc
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    env: dict[str, str] = {}
    for key, value in values.items():
        if value is not None:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
    return env
