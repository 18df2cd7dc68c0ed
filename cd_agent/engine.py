"""What the deploy policy and the health check need from a container engine, and nothing more.

``cd_agent.docker_gateway.DockerGateway`` is the production ``Engine`` (the Docker SDK);
``tests/support/fake_engine.py`` is an in-memory one, so the whole policy is tested without dockerd.
Answers are plain frozen dataclasses, never SDK objects. Errors, by the engine's contract::

    the engine cannot be reached ........ DockerUnavailable   (worth trying again later)
    the engine refused a call (4xx/5xx) . EngineError         (names the call, the object, the status)
    a pull the registry refused ......... DeployError
    inspecting something that is gone ... None (``image``, ``container``); ``remove`` of it is a no-op

A container's user-made setup (its networks, ``docker run`` options our settings do not cover) is
inspected into ``NetworkAttachment``/``ProcessConfig``/``host_options`` so that a new container can keep
it (``cd_agent.container_spec``); the blue-green proxy's own network operations live in ``cd_agent.proxy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cd_agent.container_spec import ContainerSpec


@dataclass(frozen=True)
class ProcessConfig:
    """What a container runs, as whom and where: an image's defaults, or a container's (the image's
    unless ``docker run`` overrode them). ``None``/``""`` when unset."""

    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    user: str = ""
    working_dir: str = ""
    healthcheck: Mapping[str, object] | None = None
    """In the engine's terms (``Test``, ``Interval``, ``Retries``...); a container's fields left unset
    are filled in from its image."""


@dataclass(frozen=True)
class NetworkAttachment:
    """A container on a network: the names it answers to there (besides its own) and its static
    addresses, if the user gave any (``docker run --ip``); the engine's own short-id alias is left out."""

    network: str
    aliases: tuple[str, ...] = ()
    ipv4_address: str | None = None
    ipv6_address: str | None = None
    links: tuple[str, ...] = ()
    driver_opts: Mapping[str, str] = field(default_factory=dict)

    @property
    def static_addresses(self) -> tuple[str, ...]:
        return tuple(address for address in (self.ipv4_address, self.ipv6_address) if address)


@dataclass(frozen=True)
class NetworkInfo:
    id: str
    name: str
    driver: str = ""


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    has_healthcheck: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    process: ProcessConfig = field(default_factory=ProcessConfig)

    def digest_for(self, repository: str) -> str | None:
        """The registry digest (``sha256:...``) this image has in ``repository``, if it was pulled from there."""
        wanted = normalise_repository(repository)
        for entry in self.repo_digests:
            name, _, digest = entry.partition("@")
            if normalise_repository(name) == wanted:
                return digest
        return None


@dataclass(frozen=True)
class MountInfo:
    type: str
    destination: str
    name: str | None = None
    source: str | None = None
    rw: bool = True


@dataclass(frozen=True)
class ContainerInfo:
    """A container as inspected. ``exit_code`` is the engine's ``State.ExitCode``: the code of the last
    exit while the container is stopped or restarting, but 0 again once a restart policy has started it."""

    id: str
    name: str
    image: str
    image_id: str
    status: str
    running: bool
    restarting: bool
    exit_code: int
    restart_count: int
    labels: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[MountInfo, ...] = ()
    health_status: str | None = None
    health_output: tuple[str, ...] = ()
    error: str = ""
    oom_killed: bool = False
    process: ProcessConfig = field(default_factory=ProcessConfig)
    network_mode: str = ""
    """``HostConfig.NetworkMode``: ``default``/``bridge``, a network's name, ``host``, ``none``, ``container:ID``."""
    networks: tuple[NetworkAttachment, ...] = ()
    host_options: Mapping[str, object] = field(default_factory=dict)
    """The ``docker run`` options the agent's settings do not cover (capabilities, devices, resource
    limits, extra hosts, log config...), set (not empty) on this container, in the engine's own terms:
    the engine that reported them takes them back verbatim (``ContainerSpec.host_options``)."""


class Engine(Protocol):
    """The container operations of a deploy (see the module docstring for the errors)."""

    def pull(self, repository: str, tag: str, *, auth: Mapping[str, str] | None = None) -> ImageInfo:
        """Pull ``repository:tag`` and return the local image."""

    def image(self, reference: str) -> ImageInfo | None: ...

    def images(self, repository: str) -> list[ImageInfo]:
        """Local images with a tag in ``repository``."""

    def remove_image(self, reference: str) -> None:
        """Untag ``reference`` (deleting the image when that was its last tag); never forced."""

    def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container, attached to all of ``spec.networks``; returns its id.
        Static addresses are taken only when it starts (the old container may hold them until then)."""

    def container(self, name_or_id: str) -> ContainerInfo | None:
        """The container with exactly this name or full ID; None for anything else, never a container
        whose ID merely starts with ``name_or_id`` (as Docker would answer)."""

    def network(self, name: str) -> NetworkInfo | None:
        """The network called exactly ``name``, if it exists."""

    def containers(self, *, label: str | None = None, name: str | None = None) -> list[ContainerInfo]:
        """All containers (running or not) with ``label`` (``key`` or ``key=value``) / whose name contains ``name``."""

    def rename(self, container: str, new_name: str) -> None: ...

    def reattach(self, container: str, attachment: NetworkAttachment) -> None:
        """Give ``container`` the aliases of ``attachment`` on its network: disconnect and connect again
        (Docker cannot change the aliases of an endpoint); its address there may change."""

    def start(self, container: str) -> None: ...

    def stop(self, container: str, *, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""

    def remove(self, container: str) -> None:
        """Remove a container, stopping it if needed; never its volumes; gone already is fine."""

    def logs_tail(self, container: str, lines: int = 50) -> str: ...

    def close(self) -> None: ...


def normalise_repository(repository: str) -> str:
    """``docker.io/library/x`` and ``x`` name the same repository, as the engine stores it."""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if repository.startswith(prefix):
            repository = repository[len(prefix):]
            break
    return repository.removeprefix("library/")
