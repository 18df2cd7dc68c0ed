"""Swarm service operations behind a small interface (``SwarmServices``), implemented with the docker SDK.

The swarm strategy (``cd_agent/swarm.py``) talks only to this interface: create or inspect a service,
point it at a new image, list its tasks, read a task container's log tail. ``DockerSwarm`` is the real
one; docker SDK errors become the CD agent's own (``EngineError``, ``DockerUnavailable``) here, once.
A service is found by its exact name or full ID only (``cd_agent.docker_lookup``), never by an ID prefix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import docker
import docker.errors
import docker.types
import requests

from cd_agent import docker_lookup
from cd_agent.errors import DockerUnavailable, EngineError
from shared.platforms import Platform

# Swarm's UpdateStatus.State values that end an update (docker/api/types/swarm/service.go).
UPDATE_DONE = "completed"
UPDATE_FAILED = ("rollback_completed", "paused", "rollback_paused")


@dataclass(frozen=True)
class ServicePort:
    target: int
    published: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class ServiceMount:
    source: str
    target: str
    read_only: bool
    is_named: bool


@dataclass(frozen=True)
class ServiceSpec:
    """What the agent creates when there is no service yet (from the CD settings)."""

    name: str
    image: str
    replicas: int
    env: list[str] = field(default_factory=list)
    ports: list[ServicePort] = field(default_factory=list)
    mounts: list[ServiceMount] = field(default_factory=list)
    restart_condition: str = "any"
    labels: dict[str, str] = field(default_factory=dict)
    update_parallelism: int = 1
    update_order: str = "start-first"
    update_monitor_s: float = 60.0
    update_failure_action: str = "rollback"


@dataclass(frozen=True)
class ServiceInfo:
    id: str
    name: str
    image: str
    replicas: int | None
    labels: dict[str, str]
    update_state: str | None
    update_message: str
    update_started_at: str | None


@dataclass(frozen=True)
class TaskInfo:
    id: str
    slot: int | None
    node_id: str
    node: str
    image: str
    state: str
    desired_state: str
    error: str
    message: str
    container_id: str | None
    timestamp: str


class SwarmServices(Protocol):
    """The Swarm operations the swarm strategy needs."""

    def service(self, name: str) -> ServiceInfo | None: ...

    def create(self, spec: ServiceSpec, *, auth: Mapping[str, str] | None = None) -> str: ...

    def update_image(self, name: str, image: str, *, auth: Mapping[str, str] | None = None) -> None: ...

    def tasks(self, name: str) -> list[TaskInfo]: ...

    def logs_tail(self, container_id: str, lines: int = 50) -> str: ...

    def health(self, container_id: str) -> str: ...

    def node_platforms(self) -> dict[str, Platform]: ...

    def close(self) -> None: ...


class DockerSwarm:
    """``SwarmServices`` over ``docker.DockerClient`` (the engine of a swarm manager node)."""

    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client
        self._nodes: dict[str, str] = {}

    @classmethod
    def from_env(cls, *, timeout: float = 120) -> DockerSwarm:
        try:
            return cls(docker.from_env(version="auto", timeout=int(timeout)))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerUnavailable(f"cannot reach the Docker Engine (is dockerd running?): {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def service(self, name: str) -> ServiceInfo | None:
        """The service with exactly this name or full ID (never one whose ID merely starts with it)."""
        with _errors(f"inspect service {name}"):
            attrs = docker_lookup.service(self._client.api, name)
        return None if attrs is None else _service_info(attrs)

    def create(self, spec: ServiceSpec, *, auth: Mapping[str, str] | None = None) -> str:
        self._login(spec.image, auth)
        ns = int(spec.update_monitor_s * 1e9)
        update = docker.types.UpdateConfig(
            parallelism=spec.update_parallelism, failure_action=spec.update_failure_action,
            monitor=ns, order=spec.update_order,
        )
        rollback = docker.types.RollbackConfig(parallelism=spec.update_parallelism, monitor=ns, order=spec.update_order)
        # Host mode: each node publishes on its own address, which works without the ingress mesh (IPVS).
        endpoint = docker.types.EndpointSpec(ports=[
            {"TargetPort": p.target, "PublishedPort": p.published, "Protocol": p.protocol, "PublishMode": "host"}
            for p in spec.ports
        ])
        mounts = [
            docker.types.Mount(m.target, m.source, type="volume" if m.is_named else "bind", read_only=m.read_only)
            for m in spec.mounts
        ]
        with _errors(f"create service {spec.name}"):
            service = self._client.services.create(
                spec.image, name=spec.name, env=spec.env, mounts=mounts, labels=spec.labels,
                mode=docker.types.ServiceMode("replicated", replicas=spec.replicas),
                endpoint_spec=endpoint, update_config=update, rollback_config=rollback,
                restart_policy=docker.types.RestartPolicy(condition=spec.restart_condition),
            )
        return str(service.id)

    def update_image(self, name: str, image: str, *, auth: Mapping[str, str] | None = None) -> None:
        self._login(image, auth)
        with _errors(f"update service {name}"):
            attrs = docker_lookup.service(self._client.api, name)
            if attrs is None:
                raise EngineError(f"docker update service {name}: no service named {name}", status=404)
            service = self._client.services.get(attrs["ID"])
            # fetch_current_spec: everything but the image stays as the service has it (adopted as it is).
            service.update(image=image, fetch_current_spec=True)

    def tasks(self, name: str) -> list[TaskInfo]:
        with _errors(f"list the tasks of service {name}"):
            # The engine resolves a "service" filter as it resolves a name, ID prefixes included.
            attrs = docker_lookup.service(self._client.api, name)
            if attrs is None:
                return []
            listed = self._client.api.tasks(filters={"service": attrs["ID"]})
        return [self._task_info(task) for task in listed]

    def logs_tail(self, container_id: str, lines: int = 50) -> str:
        with _errors(f"read the logs of container {container_id[:12]}"):
            data = self._client.api.logs(container_id, stdout=True, stderr=True, tail=lines)
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)

    def node_platforms(self) -> dict[str, Platform]:
        """Hostname -> platform of every node that can take tasks (not drained, not down)."""
        from cd_agent.fleet_platforms import node_platform

        with _errors("list the swarm's nodes"):
            nodes = self._client.api.nodes()
        platforms = {}
        for node in nodes:
            drained = (node.get("Spec") or {}).get("Availability") == "drain"
            if drained or (node.get("Status") or {}).get("State") == "down":
                continue
            description = node.get("Description") or {}
            info = description.get("Platform") or {}
            name = str(description.get("Hostname") or node.get("ID", "")[:12])
            platforms[name] = node_platform(str(info.get("OS") or "linux"), str(info.get("Architecture") or ""))
        return platforms

    def health(self, container_id: str) -> str:
        """The container's health status and its last check's output ("" without a HEALTHCHECK)."""
        with _errors(f"inspect container {container_id[:12]}"):
            state = self._client.api.inspect_container(container_id).get("State") or {}
        health = state.get("Health") or {}
        if not health:
            return ""
        checks = health.get("Log") or []
        last = str(checks[-1].get("Output") or "").strip() if checks else ""
        return f"{health.get('Status')}" + (f" ({last})" if last else "")

    def _login(self, image: str, auth: Mapping[str, str] | None) -> None:
        # The SDK sends X-Registry-Auth for the image's registry from its in-memory auth configs, which a
        # login fills: the `--with-registry-auth` of `docker service update`, so workers can pull too.
        if not auth:
            return
        registry = docker.auth.resolve_repository_name(image.split("@", 1)[0])[0]
        with _errors(f"log in to {registry}"):
            self._client.login(auth["username"], auth["password"], registry=registry)

    def _task_info(self, task: Mapping[str, Any]) -> TaskInfo:
        status = task.get("Status") or {}
        spec = (task.get("Spec") or {}).get("ContainerSpec") or {}
        node_id = str(task.get("NodeID") or "")
        container = (status.get("ContainerStatus") or {}).get("ContainerID")
        return TaskInfo(
            id=str(task.get("ID") or ""), slot=task.get("Slot"), node_id=node_id, node=self._node_name(node_id),
            image=str(spec.get("Image") or ""), state=str(status.get("State") or ""),
            desired_state=str(task.get("DesiredState") or ""), error=str(status.get("Err") or ""),
            message=str(status.get("Message") or ""), container_id=str(container) if container else None,
            timestamp=str(status.get("Timestamp") or ""),
        )

    def _node_name(self, node_id: str) -> str:
        if not node_id:
            return "(no node)"
        if node_id not in self._nodes:
            try:
                node = self._client.api.inspect_node(node_id)
                self._nodes[node_id] = str(((node.get("Description") or {}).get("Hostname")) or node_id[:12])
            except docker.errors.APIError:
                return node_id[:12]
        return self._nodes[node_id]


def _service_info(attrs: Mapping[str, Any]) -> ServiceInfo:
    spec = attrs.get("Spec") or {}
    container = ((spec.get("TaskTemplate") or {}).get("ContainerSpec")) or {}
    replicated = (spec.get("Mode") or {}).get("Replicated")
    status = attrs.get("UpdateStatus") or {}
    return ServiceInfo(
        id=str(attrs.get("ID") or ""), name=str(spec.get("Name") or ""), image=str(container.get("Image") or ""),
        replicas=int(replicated.get("Replicas", 1)) if isinstance(replicated, dict) else None,
        labels=dict(spec.get("Labels") or {}), update_state=status.get("State"),
        update_message=str(status.get("Message") or ""), update_started_at=status.get("StartedAt"),
    )


@contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.APIError as exc:
        explanation = exc.explanation
        if isinstance(explanation, bytes):
            explanation = explanation.decode("utf-8", errors="replace")
        raise EngineError(f"docker {what}: {explanation or exc} (HTTP {exc.status_code})",
                          status=exc.status_code) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailable(f"docker {what}: cannot reach the Docker Engine: {exc}") from exc
