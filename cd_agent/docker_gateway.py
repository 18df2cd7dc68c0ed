"""The CD agent's only door to the Docker Engine (the Docker SDK's low-level API).

The production ``cd_agent.engine.Engine``. Every call is wrapped so that Docker's exceptions leave
this module as the CD agent's own errors with a message naming the call and the object::

    engine unreachable (socket, stream cut) .. DockerUnavailable("docker stop app: cannot reach ...")
    the engine refused a call (HTTP 4xx/5xx) . EngineError("docker start container app: ... (HTTP 500)")
    pulling a tag the registry lacks ......... DeployError("pull 127.0.0.1:5000/o/app:1.2.3: ...")
    inspecting something that is gone ........ None (inspect methods), or EngineError (HTTP 404, actions)

A container is looked up by its exact name or full ID only (``cd_agent.docker_lookup``): a name that
matches no container is absent, never the container whose ID starts with it.

Answers are the engine's plain frozen dataclasses (``ImageInfo``, ``ContainerInfo``), so the deployer
and the health check never see SDK objects. The API version is negotiated with the engine, never pinned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import docker.types
import docker.utils
import requests
import urllib3

from cd_agent import docker_lookup
from cd_agent.engine import ContainerInfo, ImageInfo, MountInfo, NetworkAttachment, NetworkInfo, ProcessConfig
from cd_agent.errors import DeployError, DockerUnavailable, EngineError
from shared.platforms import Platform, engine_platform, parse_platform

if TYPE_CHECKING:
    from cd_agent.container_spec import ContainerSpec

# The SDK's own errors, requests' (connecting) and urllib3's (a stream cut short when dockerd stops
# in the middle of a pull): all mean the engine went away, none may leave this module raw.
_UNREACHABLE = (docker.errors.DockerException, requests.RequestException, urllib3.exceptions.HTTPError)

# The HostConfig entries a new container takes over verbatim from the one it replaces: what `docker run`
# or compose set and the settings do not cover. Not PortBindings, Mounts/Binds, RestartPolicy, Init and
# NetworkMode (the settings' and the spec's), nor PidMode/IpcMode/VolumesFrom (they name other
# containers by id). Only non-empty values are carried; the defaults the engine reports for every
# container (log driver, shm size, runtime) come back as they were.
CARRIED_HOST_CONFIG = (
    "CapAdd", "CapDrop", "Privileged", "SecurityOpt",
    "Devices", "DeviceCgroupRules", "DeviceRequests",
    "Memory", "MemoryReservation", "MemorySwap", "MemorySwappiness", "NanoCpus", "CpuShares", "CpuPeriod",
    "CpuQuota", "CpusetCpus", "CpusetMems", "PidsLimit", "Ulimits", "BlkioWeight", "OomKillDisable",
    "OomScoreAdj", "ShmSize",
    "ExtraHosts", "Dns", "DnsOptions", "DnsSearch",
    "LogConfig", "GroupAdd", "Sysctls", "Tmpfs", "ReadonlyRootfs", "Runtime",
)


class DockerGateway:
    """Thin typed wrapper over ``docker.DockerClient``; construct with ``DockerGateway.from_env()``."""

    def __init__(self, client: docker.DockerClient, *, platform: str | None = None) -> None:
        self._client = client
        self._api = client.api
        # CD_PLATFORM: pulled from image indexes and given to new containers; None: the engine's own.
        self._platform = platform

    @property
    def client(self) -> docker.DockerClient:
        """The SDK client, for the proxy's own operations (``cd_agent.proxy.DockerProxyEngine``)."""
        return self._client

    @classmethod
    def from_env(cls, *, timeout: float = 120, platform: str | None = None) -> DockerGateway:
        """Connect as the docker CLI would (``DOCKER_HOST`` or the local socket); negotiates the API version."""
        settings = docker.utils.kwargs_from_env()
        base_url = str(settings.get("base_url") or "unix:///var/run/docker.sock")
        # docker-py leaks the socket when a unix socket connect fails: look before connecting.
        if base_url.startswith(("unix://", "http+unix://")):
            socket_path = Path("/" + base_url.split("://", 1)[1].lstrip("/"))
            if not socket_path.exists():
                raise DockerUnavailable(
                    f"cannot reach the Docker Engine: no socket at {socket_path} (is dockerd running?)"
                )
        try:
            # A failed version negotiation inside from_env leaks its socket, so ask first with a
            # throwaway client that is always closed; the real client then negotiates.
            probe = docker.APIClient(version="1.24", timeout=int(timeout), **settings)
            try:
                probe.ping()
            finally:
                probe.close()
            client = docker.from_env(version="auto", timeout=int(timeout))
        except _UNREACHABLE as exc:
            raise DockerUnavailable(f"cannot reach the Docker Engine (is dockerd running?): {exc}") from exc
        return cls(client, platform=platform)

    def close(self) -> None:
        self._client.close()

    def ping(self) -> None:
        with docker_errors("ping"):
            self._api.ping()

    def describe(self) -> str:
        """``Docker 27.5.1, linux/amd64``: what ``doctor`` says of the engine it reached."""
        with docker_errors("version"):
            version = self._api.version()
        return f"Docker {version.get('Version', '?')}, {version.get('Os', '?')}/{version.get('Arch', '?')}"

    def data_root(self) -> str | None:
        """Where the engine keeps its data (``docker info`` ``DockerRootDir``), for ``DISK_MIN_FREE``."""
        with docker_errors("info"):
            root = self._api.info().get("DockerRootDir")
        return str(root) if root else None

    def swarm_role(self) -> str:
        """This engine's place in a swarm (``docker info``'s ``Swarm``), for ``doctor``: ``manager``,
        ``worker``, or the node's state outside one (``inactive``, ``pending``, ``error``, ``locked``)."""
        with docker_errors("info"):
            swarm = self._api.info().get("Swarm") or {}
        state = str(swarm.get("LocalNodeState") or "inactive")
        if state != "active":
            return state
        return "manager" if swarm.get("ControlAvailable") else "worker"

    def platform(self) -> Platform:
        """The platform this engine pulls images for (``linux/amd64``, ``linux/arm64``, ``linux/arm/v7``):
        ``Os``/``Arch`` from ``docker version``, the arm variant from ``docker info``'s ``Architecture``;
        ``CD_PLATFORM`` when it is set."""
        if self._platform is not None:
            return parse_platform(self._platform)
        with docker_errors("version"):
            version = self._api.version()
        os, arch = str(version.get("Os") or ""), str(version.get("Arch") or "")
        if not os or not arch:
            raise DockerUnavailable(f"docker version: the engine did not say its platform (Os={os!r}, Arch={arch!r})")
        machine = ""
        if arch == "arm":
            with docker_errors("info"):
                machine = str(self._api.info().get("Architecture") or "")
        return engine_platform(os, arch, machine)

    # images

    def pull(self, repository: str, tag: str, *, auth: Mapping[str, str] | None = None) -> ImageInfo:
        """Pull ``repository:tag`` and return the local image; registry errors in the stream become errors."""
        what = f"pull {repository}:{tag}"
        try:
            for line in self._api.pull(
                repository, tag=tag, stream=True, decode=True, auth_config=dict(auth) if auth else None,
                platform=self._platform,
            ):
                if isinstance(line, dict) and line.get("error"):
                    raise DeployError(f"{what}: {line['error']}")
        except docker.errors.NotFound as exc:
            raise DeployError(f"{what}: {_explain(exc)}") from exc
        except docker.errors.APIError as exc:
            raise DeployError(f"{what}: {_explain(exc)}") from exc
        except _UNREACHABLE as exc:
            raise DockerUnavailable(f"{what}: cannot reach the Docker Engine: {exc}") from exc
        image = self.image(f"{repository}:{tag}")
        if image is None:
            raise DeployError(f"{what}: the engine reported success but has no such image")
        return image

    def image(self, reference: str) -> ImageInfo | None:
        with docker_errors(f"inspect image {reference}"):
            try:
                data = self._api.inspect_image(reference)
            except docker.errors.NotFound:
                return None
        return _image_info(data)

    def images(self, repository: str) -> list[ImageInfo]:
        """Local images with a tag in ``repository``."""
        with docker_errors(f"list images of {repository}"):
            listed = self._api.images(name=repository)
        return [
            ImageInfo(
                id=item["Id"], tags=tuple(item.get("RepoTags") or ()), repo_digests=tuple(item.get("RepoDigests") or ())
            )
            for item in listed
        ]

    def remove_image(self, reference: str) -> None:
        """Untag ``reference`` (and delete the image, with the untagged parents only it had, when that was its
        last tag); never forced. On a Pi running both agents those parents are CI's build cache of that release:
        a build that was using one at that moment builds once more (``ci_agent.builder``)."""
        with docker_errors(f"remove image {reference}"):
            self._api.remove_image(reference)

    # containers

    def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container; its ports are bound, its static addresses taken, only when it starts.

        The API (before 1.44) creates a container on one network: it is created on the first of
        ``spec.networks`` and connected to the others before it starts; a connect that fails removes it."""
        primary = spec.networks[0] if spec.networks else None
        host_config = self._api.create_host_config(
            port_bindings={
                port.container_key: [{"HostIp": port.host_ip or "", "HostPort": str(port.host_port or "")}]
                for port in spec.ports
            },
            mounts=[
                docker.types.Mount(target=m.target, source=m.source, type=m.type, read_only=m.read_only)
                for m in spec.mounts
            ],
            restart_policy={"Name": "" if spec.restart_policy == "no" else spec.restart_policy},
            network_mode=spec.network_mode or (primary.network if primary else None),
            # None, not False: without CD_INIT the daemon's default applies, as for `docker run`.
            init=True if spec.init else None,
        )
        host_config.update(spec.host_options)
        networking = None
        if primary is not None:
            networking = self._api.create_networking_config({primary.network: self._endpoint(primary)})
        process = spec.process
        with docker_errors(f"create container {spec.name} from {spec.image}"):
            created = self._api.create_container(
                spec.image,
                name=spec.name,
                environment=list(spec.env),
                ports=[(port.container_port, port.protocol) for port in spec.ports],
                labels=dict(spec.labels),
                host_config=host_config,
                networking_config=networking,
                detach=True,
                command=list(process.cmd) if process.cmd is not None else None,
                entrypoint=list(process.entrypoint) if process.entrypoint is not None else None,
                user=process.user or None,
                working_dir=process.working_dir or None,
                healthcheck=dict(process.healthcheck) if process.healthcheck else None,
                platform=self._platform,
            )
        container = str(created["Id"])
        try:
            for attachment in spec.networks[1:]:
                with docker_errors(f"connect container {spec.name} to network {attachment.network}"):
                    self._api.connect_container_to_network(
                        container, attachment.network, aliases=list(attachment.aliases) or None,
                        links=list(attachment.links) or None, ipv4_address=attachment.ipv4_address,
                        ipv6_address=attachment.ipv6_address, driver_opt=dict(attachment.driver_opts) or None,
                    )
        except EngineError:
            self.remove(container)
            raise
        return container

    def reattach(self, container: str, attachment: NetworkAttachment) -> None:
        info = self.container(container)
        if info is not None and any(mine.network == attachment.network for mine in info.networks):
            # Not connected (a kill between the two calls): connecting is all that is left to do.
            with docker_errors(f"disconnect container {container[:12]} from network {attachment.network}"):
                self._api.disconnect_container_from_network(container, attachment.network)
        with docker_errors(f"connect container {container[:12]} to network {attachment.network}"):
            self._api.connect_container_to_network(
                container, attachment.network, aliases=list(attachment.aliases) or None,
                links=list(attachment.links) or None, ipv4_address=attachment.ipv4_address,
                ipv6_address=attachment.ipv6_address, driver_opt=dict(attachment.driver_opts) or None,
            )

    def _endpoint(self, attachment: NetworkAttachment) -> Any:
        return self._api.create_endpoint_config(
            aliases=list(attachment.aliases) or None, links=list(attachment.links) or None,
            ipv4_address=attachment.ipv4_address, ipv6_address=attachment.ipv6_address,
            driver_opt=dict(attachment.driver_opts) or None,
        )

    def network(self, name: str) -> NetworkInfo | None:
        """The network called exactly ``name`` (``cd_agent.docker_lookup``: never one whose id starts so)."""
        with docker_errors(f"inspect network {name}"):
            data = docker_lookup.network(self._api, name)
        if data is None:
            return None
        return NetworkInfo(id=data["Id"], name=data["Name"], driver=str(data.get("Driver") or ""))

    def container(self, name_or_id: str) -> ContainerInfo | None:
        """The container with exactly this name or full ID (never one whose ID merely starts with it)."""
        with docker_errors(f"inspect container {name_or_id}"):
            data = docker_lookup.container(self._api, name_or_id)
        return None if data is None else _container_info(data)

    def containers(self, *, label: str | None = None, name: str | None = None) -> list[ContainerInfo]:
        """All containers (running or not) with ``label`` (``key`` or ``key=value``) / whose name contains ``name``."""
        filters: dict[str, Any] = {}
        if label:
            filters["label"] = label
        if name:
            filters["name"] = name
        with docker_errors("list containers"):
            listed = self._api.containers(all=True, filters=filters)
        found = [self.container(item["Id"]) for item in listed]
        return [info for info in found if info is not None]

    def rename(self, container: str, new_name: str) -> None:
        with docker_errors(f"rename container {container} to {new_name}"):
            self._api.rename(container, new_name)

    def start(self, container: str) -> None:
        with docker_errors(f"start container {container}"):
            self._api.start(container)

    def stop(self, container: str, *, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds (whole seconds, rounded up, as the API takes them)."""
        with docker_errors(f"stop container {container}"):
            self._api.stop(container, timeout=math.ceil(timeout))

    def remove(self, container: str) -> None:
        """Remove a container, stopping it if needed. Its volumes are never removed."""
        with docker_errors(f"remove container {container}"):
            try:
                self._api.remove_container(container, force=True, v=False)
            except docker.errors.NotFound:
                return

    def logs_tail(self, container: str, lines: int = 50) -> str:
        with docker_errors(f"read the logs of container {container}"):
            data = self._api.logs(container, stdout=True, stderr=True, tail=lines, timestamps=False)
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.APIError as exc:
        # The engine answered: it is reachable, and trying again later will not change its mind.
        raise EngineError(f"docker {what}: {_explain(exc)}", status=exc.status_code) from exc
    except _UNREACHABLE as exc:
        raise DockerUnavailable(f"docker {what}: cannot reach the Docker Engine: {exc}") from exc


def _explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", errors="replace")
    return f"{explanation or exc} (HTTP {exc.status_code})"


def _image_info(data: Mapping[str, Any]) -> ImageInfo:
    config = data.get("Config") or {}
    healthcheck = config.get("Healthcheck") or {}
    test = healthcheck.get("Test") or []
    return ImageInfo(
        id=data["Id"],
        tags=tuple(data.get("RepoTags") or ()),
        repo_digests=tuple(data.get("RepoDigests") or ()),
        volumes=tuple(sorted(config.get("Volumes") or {})),
        has_healthcheck=bool(test) and test[0] != "NONE",
        labels=dict(config.get("Labels") or {}),
        process=_process(config),
    )


def _process(config: Mapping[str, Any]) -> ProcessConfig:
    def words(value: Any) -> tuple[str, ...] | None:
        return tuple(str(word) for word in value) if value else None

    return ProcessConfig(
        cmd=words(config.get("Cmd")), entrypoint=words(config.get("Entrypoint")),
        user=str(config.get("User") or ""), working_dir=str(config.get("WorkingDir") or ""),
        healthcheck={key: value for key, value in (config.get("Healthcheck") or {}).items() if value} or None,
    )


def _attachments(container_id: str, networks: Mapping[str, Any]) -> tuple[NetworkAttachment, ...]:
    attachments = []
    for name, endpoint in networks.items():
        endpoint = endpoint or {}
        ipam = endpoint.get("IPAMConfig") or {}
        # The engine (API < 1.44) adds the container's short id as an alias itself: a new container gets its own.
        aliases = tuple(alias for alias in endpoint.get("Aliases") or () if alias != container_id[:12])
        attachments.append(NetworkAttachment(
            network=name, aliases=aliases,
            ipv4_address=ipam.get("IPv4Address") or None, ipv6_address=ipam.get("IPv6Address") or None,
            links=tuple(endpoint.get("Links") or ()), driver_opts=dict(endpoint.get("DriverOpts") or {}),
        ))
    return tuple(attachments)


def _container_info(data: Mapping[str, Any]) -> ContainerInfo:
    state = data.get("State") or {}
    config = data.get("Config") or {}
    health = state.get("Health") or {}
    host = data.get("HostConfig") or {}
    return ContainerInfo(
        id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        image=config.get("Image", ""),
        image_id=data.get("Image", ""),
        status=state.get("Status", ""),
        running=bool(state.get("Running")),
        restarting=bool(state.get("Restarting")),
        exit_code=int(state.get("ExitCode") or 0),
        restart_count=int(data.get("RestartCount") or 0),
        labels=dict(config.get("Labels") or {}),
        mounts=tuple(
            MountInfo(
                type=m.get("Type", ""),
                destination=m.get("Destination", ""),
                name=m.get("Name"),
                source=m.get("Source"),
                rw=bool(m.get("RW", True)),
            )
            for m in data.get("Mounts") or ()
        ),
        health_status=health.get("Status") if health else None,
        health_output=tuple(str(entry.get("Output", "")).strip() for entry in health.get("Log") or ()),
        error=state.get("Error", "") or "",
        oom_killed=bool(state.get("OOMKilled")),
        process=_process(config),
        network_mode=str(host.get("NetworkMode") or ""),
        networks=_attachments(data["Id"], (data.get("NetworkSettings") or {}).get("Networks") or {}),
        host_options={key: host[key] for key in CARRIED_HOST_CONFIG if host.get(key)},
    )
