"""The create-config of the app container, built from the settings, the NEW image and what the user
set up on the old container.

Watchtower-style clones copy the old container's ``Config`` (Env, Cmd, Entrypoint...) into the new
one, so a release that changes its ``ENV`` or ``CMD`` never takes effect. Here the config holds what
the user configured (``CD_*``, the env file) plus our labels, and of the old container only what the
user set up there and our settings cannot express (``carried``)::

    networks ........... every network it was on (NetworkMode's first), its aliases and static
                         addresses there; CD_NETWORKS adds networks, and its aliases win for the
                         networks it names; host/none/container:ID network modes. A network it
                         was on only because CD_NETWORKS named it (its io.pi-cicd.networks label)
                         and that CD_NETWORKS no longer names is left behind; one attached by hand
                         is carried
    labels ............. its labels less ours (io.pi-cicd.*) and less its image's (compose's
                         com.docker.compose.* stay, so `docker compose ps` still lists the app)
    cmd, entrypoint,
    user, working dir,
    health check ....... only where they differ from the OLD image's: an override given at
                         `docker run`; the image's own defaults come from the new image
    host options ....... capabilities, devices, resource limits, extra hosts, log config... as the
                         engine reported them (``ContainerInfo.host_options``)
    anonymous volumes .. the image's VOLUME directories that no CD_VOLUMES entry covers: like
                         docker compose, the same volume at the same path, so data survives

Environment variables are not carried: they come from ``CD_ENV_FILE`` and the new image, as before.
What cannot be carried fails the deploy in ``check_spec``, before the old container is touched.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dotenv import dotenv_values

from cd_agent.engine import ContainerInfo, Engine, ImageInfo, NetworkAttachment, ProcessConfig
from cd_agent.errors import DeployError
from cd_agent.settings import NetworkJoin, PortMapping, read_env_text

if TYPE_CHECKING:
    from cd_agent.apps import AppTarget

LABEL_MANAGED = "io.pi-cicd.managed"
LABEL_VERSION = "io.pi-cicd.version"
LABEL_DIGEST = "io.pi-cicd.digest"
LABEL_RUN = "io.pi-cicd.run"
LABEL_NETWORKS = "io.pi-cicd.networks"
"""The networks the container is on only because ``CD_NETWORKS`` named them (comma-separated): the next
release leaves those CD_NETWORKS no longer names, and carries the ones the user attached by hand."""
OUR_LABELS = "io.pi-cicd."
"""The prefix of every label the agent sets; an old container's labels under it are never carried."""

# The network modes that are not a network's name (a name puts the container on that network).
_DEFAULT_MODES = ("", "default", "bridge")

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
    networks: tuple[NetworkAttachment, ...] = ()
    """The networks it joins, the first when it is created, the others before it starts; none: the
    engine's default bridge."""
    network_mode: str | None = None
    """``host``, ``none`` or ``container:ID`` (then ``networks`` is empty); None: ``networks``."""
    init: bool = False
    process: ProcessConfig = field(default_factory=ProcessConfig)
    """Overrides of the image's CMD/ENTRYPOINT/USER/WORKDIR (``None``/``""``: the image's)."""
    host_options: Mapping[str, object] = field(default_factory=dict)
    """Carried verbatim from the old container (``ContainerInfo.host_options``)."""

    @property
    def network(self) -> str | None:
        """The network it is created on (None: the engine's default)."""
        return self.networks[0].network if self.networks else None


def build_spec(
    target: AppTarget,
    *,
    image: str,
    version: str,
    digest: str | None,
    env: Mapping[str, str],
    old: ContainerInfo | None = None,
    old_image: ImageInfo | None = None,
    run: int | None = None,
) -> ContainerSpec:
    """The spec of the container that runs ``image`` (``repository:version``) under the configured name;
    ``old_image`` is the image ``old`` was created from (its defaults are not the user's)."""
    mounts = [
        MountSpec("volume" if volume.is_named else "bind", volume.source, volume.target, volume.read_only)
        for volume in target.volumes
    ]
    configured = {mount.target for mount in mounts}
    if old is not None:
        for mount in old.mounts:
            if mount.type == "volume" and mount.name and _ANONYMOUS_VOLUME.match(mount.name):
                if mount.destination not in configured:
                    mounts.append(MountSpec("volume", mount.name, mount.destination, not mount.rw))
                    configured.add(mount.destination)
    carried = _carried(old, old_image) if old is not None else _Carried()
    labels = {**carried.labels, LABEL_MANAGED: "true", LABEL_VERSION: version, LABEL_DIGEST: digest or ""}
    if run is not None:
        labels[LABEL_RUN] = str(run)
    ports = target.ports
    networks, joined = _join(carried.networks, target.networks, _joined_by_setting(old))
    if joined:
        labels[LABEL_NETWORKS] = ",".join(joined)
    if carried.network_mode is not None:
        mode = _mode_text(carried.network_mode)
        if ports:
            raise DeployError(
                f"the container {target.container_name} runs with network mode {mode!r},"
                f" where ports cannot be published: empty CD_PORTS ({','.join(map(str, target.ports))}),"
                " or recreate the"
                " container by hand on a network of its own"
            )
        if target.networks:
            raise DeployError(
                f"the container {target.container_name} runs with network mode {mode!r},"
                f" where it cannot join other networks: empty CD_NETWORKS ({','.join(map(str, target.networks))})"
            )
    return ContainerSpec(
        name=target.container_name,
        image=image,
        env=tuple(f"{key}={value}" for key, value in env.items()),
        ports=ports,
        mounts=tuple(mounts),
        restart_policy=target.restart_policy,
        labels=labels,
        networks=networks,
        network_mode=carried.network_mode,
        init=target.init,
        process=carried.process,
        host_options=carried.host_options,
    )


@dataclass(frozen=True)
class _Carried:
    """What the user set up on the old container beyond its image and our settings."""

    labels: Mapping[str, str] = field(default_factory=dict)
    networks: tuple[NetworkAttachment, ...] = ()
    network_mode: str | None = None
    process: ProcessConfig = field(default_factory=ProcessConfig)
    host_options: Mapping[str, object] = field(default_factory=dict)


def _carried(old: ContainerInfo, image: ImageInfo | None) -> _Carried:
    if image is None:
        raise DeployError(
            f"the image of container {old.name} ({old.image_id[:19]}) cannot be inspected, so the options given"
            " at `docker run` cannot be told from the image's own: nothing was changed"
        )
    labels = {
        key: value for key, value in old.labels.items()
        if not key.startswith(OUR_LABELS) and image.labels.get(key) != value
    }
    mine, theirs = old.process, image.process
    image_check = theirs.healthcheck or {}
    entrypoint = mine.entrypoint if mine.entrypoint != theirs.entrypoint else None
    # An entrypoint given at `docker run` drops the image's CMD (docker's rule): its cmd goes with it.
    cmd = mine.cmd if entrypoint is not None or mine.cmd != theirs.cmd else None
    process = ProcessConfig(
        cmd=cmd,
        entrypoint=entrypoint,
        user=mine.user if mine.user != theirs.user else "",
        working_dir=mine.working_dir if mine.working_dir != theirs.working_dir else "",
        # Field by field: `--health-retries 5` keeps the new image's test and interval.
        healthcheck={key: value for key, value in (mine.healthcheck or {}).items() if image_check.get(key) != value}
        or None,
    )
    mode = old.network_mode
    if mode in ("host", "none") or mode.startswith("container:"):
        return _Carried(labels, (), mode, process, old.host_options)
    primary = "bridge" if mode in _DEFAULT_MODES else mode
    networks = sorted(old.networks, key=lambda attachment: attachment.network != primary)
    if [attachment.network for attachment in networks] == ["bridge"]:
        networks = []  # the engine's default: nothing to say
    return _Carried(labels, tuple(networks), None, process, old.host_options)


def _joined_by_setting(old: ContainerInfo | None) -> frozenset[str]:
    """The networks the old container joined because CD_NETWORKS named them (its ``LABEL_NETWORKS``)."""
    text = old.labels.get(LABEL_NETWORKS, "") if old is not None else ""
    return frozenset(name for name in text.split(",") if name)


def _join(
    carried: tuple[NetworkAttachment, ...], configured: tuple[NetworkJoin, ...], by_setting: frozenset[str]
) -> tuple[tuple[NetworkAttachment, ...], tuple[str, ...]]:
    """The old container's networks plus CD_NETWORKS'; for a network in both, CD_NETWORKS' aliases win
    (the static address stays: CD_NETWORKS cannot give one). A network the old container was on only
    because CD_NETWORKS named it (``by_setting``) goes when CD_NETWORKS no longer names it: otherwise a
    network dropped from the setting would stay attached forever, like one the user attached by hand.
    Also returns the networks the new container is on only because of CD_NETWORKS (its label)."""
    wanted = {join.name for join in configured}
    by_hand = {attachment.network for attachment in carried if attachment.network not in by_setting}
    networks = {
        attachment.network: attachment for attachment in carried
        if attachment.network in by_hand or attachment.network in wanted
    }
    for join in configured:
        known = networks.get(join.name)
        networks[join.name] = (
            replace(known, aliases=join.aliases) if known else NetworkAttachment(join.name, join.aliases)
        )
    joined = tuple(join.name for join in configured if join.name not in by_hand)
    return tuple(networks.values()), joined


def beside(spec: ContainerSpec, *, name: str, network: str, alias: str) -> ContainerSpec:
    """Blue-green: ``spec`` as a container that runs beside the old one, reached by ``alias`` on the
    proxy's private ``network``, and on the app's other networks with the same aliases as the old one.
    What two containers cannot share while both run is refused here, before anything is touched."""
    if spec.network_mode is not None:
        raise DeployError(
            f"the app runs with network mode {_mode_text(spec.network_mode)!r}: the blue-green strategy needs the"
            " proxy's network; use the swap strategy (CD_STRATEGY=swap) or recreate the container on a network"
        )
    others = tuple(attachment for attachment in spec.networks if attachment.network != network)
    fixed = [f"{a.network} ({', '.join(a.static_addresses)})" for a in others if a.static_addresses]
    if fixed:
        raise DeployError(
            f"static addresses cannot be held by two containers at once, and blue-green runs the new release"
            f" beside the old one: {'; '.join(fixed)}; use the swap strategy or drop the static address"
        )
    return replace(spec, name=name, ports=(), networks=(NetworkAttachment(network, (alias,)), *others))


def networks_text(spec: ContainerSpec) -> str:
    """Where ``spec`` is on the network, for the deploy log: ``shop as web at 10.1.0.5, monitoring``."""
    if spec.network_mode is not None:
        return f"network mode {_mode_text(spec.network_mode)}"
    if not spec.networks:
        return "the default bridge"
    parts = []
    for attachment in spec.networks:
        text = attachment.network
        if attachment.aliases:
            text += " as " + "/".join(attachment.aliases)
        if attachment.static_addresses:
            text += " at " + "/".join(attachment.static_addresses)
        parts.append(text)
    return ", ".join(parts)


def _mode_text(mode: str) -> str:
    """``container:<64 hex digits>`` as docker ps shows an id (12 digits)."""
    kind, _, target = mode.partition(":")
    return f"{kind}:{target[:12]}" if kind == "container" else mode


def check_spec(engine: Engine, spec: ContainerSpec) -> None:
    """What ``spec`` refers to exists now: every network it joins, the container whose network it shares.
    Raises ``DeployError`` naming what and why, before the deploy touches anything."""
    missing = [attachment.network for attachment in spec.networks if engine.network(attachment.network) is None]
    if missing:
        raise DeployError(
            f"network {', '.join(missing)} does not exist (CD_NETWORKS, or a network the old container was on"
            " and that was removed since): create it (docker network create) or remove it from CD_NETWORKS"
        )
    if spec.network_mode is not None and spec.network_mode.startswith("container:"):
        target = spec.network_mode.partition(":")[2]
        shared = engine.container(target)
        if shared is None:
            raise DeployError(
                f"the app shares the network of container {target[:12]} (network mode {_mode_text(spec.network_mode)}),"
                " which is gone (recreated under a new id?): the new release cannot join it; recreate the app"
                " container by hand with --network container:NAME, then deploy again"
            )
        if not shared.running:
            raise DeployError(
                f"the app shares the network of container {shared.name}, which is not running: start it first"
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
